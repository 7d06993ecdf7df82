"""`fmrec train --l2-field FIELD=SCALE`: parsed, merged over the default, checked against
the feature spec; anything else one clear error."""

from __future__ import annotations

import pytest

from app.cli import build_parser, main


@pytest.mark.parametrize("text", ["item.id", "item.id=x", "item.id=-1", "id=2", "item.id=inf"])
def test_malformed_l2_field_is_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--l2-field", text])
    assert exc.value.code == 2
    assert f"'{text}' is not FIELD=SCALE" in capsys.readouterr().err


def test_l2_fields_are_repeatable() -> None:
    args = build_parser().parse_args(["train", "--l2-field", "item.id=3",
                                      "--l2-field", "user.rated=0.5"])
    assert args.l2_field == [("item.id", 3.0), ("user.rated", 0.5)]
    assert build_parser().parse_args(["train"]).l2_field is None  # TrainConfig's default


@pytest.mark.parametrize("field", ["item.title", "user.history_size"])
def test_unknown_field_is_one_line_before_training(field: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """user.history_size is in the spec but only the relevance head reads it."""
    assert main(["train", "--synthetic", "300", "--l2-field", f"{field}=2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fmrec: error: --l2-field: {field} not among the features")
    assert "Traceback" not in err
