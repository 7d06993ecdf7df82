"""bench/ranking.py's options: --relevance overrides and the --quick peer set."""

from __future__ import annotations

import pytest

from bench.ranking import peers, relevance_config
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
