"""`fmrec train --average`: a decay in [0, 1), anything else one clear error."""

from __future__ import annotations

import pytest

from app.cli import build_parser


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "x", "nan"])
def test_average_outside_zero_one_is_refused(text: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--average", text])
    assert exc.value.code == 2
    assert f"'{text}' is not a decay in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("0.995", 0.995)])
def test_average_in_range_is_kept(text: str, value: float) -> None:
    assert build_parser().parse_args(["train", "--average", text]).average == value
    assert build_parser().parse_args(["train"]).average is None  # TrainConfig's default
