"""`fmrec train`'s training flags: --average (a decay in [0, 1)), --min-improvement (a
share in [0, 1)), --refit-epochs (a positive count), --no-neighbours; anything else one
clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import build_parser, main


@pytest.mark.parametrize(("flag", "what"), [("--average", "a decay"),
                                            ("--min-improvement", "a share")])
@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "x", "nan"])
def test_share_outside_zero_one_is_refused(flag: str, what: str, text: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", flag, text])
    assert exc.value.code == 2
    assert f"'{text}' is not {what} in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("0.995", 0.995)])
def test_average_in_range_is_kept(text: str, value: float) -> None:
    assert build_parser().parse_args(["train", "--average", text]).average == value
    assert build_parser().parse_args(["train"]).average is None  # TrainConfig's default


@pytest.mark.parametrize("text", ["0", "-2", "x"])
def test_refit_epochs_must_be_positive(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--refit-epochs", text])
    assert exc.value.code == 2
    assert "--refit-epochs" in capsys.readouterr().err


def test_early_stop_flags_reach_the_training(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A share of 0.9 lets no epoch after the first count as better; the refit then runs
    the epochs asked for."""
    assert main(["train", "--synthetic", "600", "--epochs", "6", "--patience", "2",
                 "--min-improvement", "0.9", "--refit-epochs", "3", "--k", "2",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_epoch"] == 1
    assert out["refit_epochs"] == 3


def test_no_neighbours_trains_a_bundle_that_predicts_with_the_fm_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.bundle import Bundle

    for name, flags in (("with", []), ("without", ["--no-neighbours"])):
        assert main(["train", "--synthetic", "600", "--epochs", "2", "--k", "2", "--quiet",
                     "--out", str(tmp_path / name), *flags]) == 0
        capsys.readouterr()
    assert Bundle(tmp_path / "with").neighbours is not None
    plain = Bundle(tmp_path / "without")
    assert plain.neighbours is None and "neighbours" not in plain.metrics
    assert plain.metrics["test_rmse"] == plain.metrics["test_rmse_fm"]
