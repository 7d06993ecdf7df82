"""bench/ranking.py's options (--relevance overrides, the --quick peer set), its EASE
and the blend's standardisation against slow references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.ranking import Interactions, ease_scores, peers, relevance_config
from bench.ranking import main as ranking_main
from bench.ranking_blend import main as blend_main
from bench.ranking_blend import standardised
from model.relevance import RelevanceConfig


def test_relevance_overrides_parse_each_field_type() -> None:
    got = relevance_config(["k=128", "history_dropout=0.25", "new_user_share=0",
                            "refit=false", "fields=user.rated,item.id"])
    assert got == RelevanceConfig(k=128, history_dropout=0.25, new_user_share=0.0,
                                  refit=False, fields=("user.rated", "item.id"))
    assert relevance_config([]) == RelevanceConfig()


def test_overrides_that_contradict_each_other_are_one_clear_error() -> None:
    with pytest.raises(SystemExit, match="history_dropout and new_user_share"):
        relevance_config(["history_dropout=0.25"])  # the default new_user_share is 0.1


@pytest.mark.parametrize("bad, message", [("colour=red", "KEY one of"), ("k", "KEY=VALUE"),
                                          ("k=big", "not a int"), ("refit=maybe", "bool")])
def test_bad_relevance_override_is_one_line(bad: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        relevance_config([bad])


def test_quick_leaves_out_the_slow_rows() -> None:
    names = [name for name, _ in peers(quick=True)]
    assert "fmrec rating head" not in names and "implicit BPR (128 factors)" not in names
    assert names[0] == "most rated" and names[-1] == "fmrec relevance head"
    assert {"fmrec rating head", "EASE (lambda 500)"} <= {name for name, _ in peers()}


def test_ease_scores_solve_each_column_s_ridge_regression() -> None:
    """EASE's closed form against its definition: column j of B regresses movie j on
    every other movie with L2 weight lambda (diag(B) = 0), one solve per column."""
    rng = np.random.default_rng(0)
    X = (rng.random((30, 8)) < 0.4).astype(np.float32)
    x = Interactions.__new__(Interactions)
    x.X = X
    lam = 3.0
    B = np.zeros((8, 8))
    for j in range(8):
        others = [i for i in range(8) if i != j]
        A = X[:, others].astype(np.float64)
        B[others, j] = np.linalg.solve(A.T @ A + lam * np.eye(7), A.T @ X[:, j])
    np.testing.assert_allclose(ease_scores(x, lam), X @ B, rtol=1e-6, atol=1e-9)


def test_standardised_is_a_z_score_over_each_user_s_unrated_movies() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 6)) * 3 + 1
    rated = rng.random((4, 6)) < 0.3
    rated[:, 0] = False  # at least two unrated movies per user
    rated[:, 1] = False
    got = standardised(scores, rated)
    for u in range(4):
        free = scores[u][~rated[u]]
        np.testing.assert_allclose(got[u][~rated[u]], (free - free.mean()) / free.std())
        assert np.all(got[u][rated[u]] == 0.0)


@pytest.mark.parametrize("command", [ranking_main, blend_main])
def test_missing_movielens_is_one_line_and_exit_2(command: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert command(["--data", str(tmp_path / "nowhere"), "--no-readme"]) == 2
    err = capsys.readouterr().err
    assert "no MovieLens folder at" in err and "Traceback" not in err
