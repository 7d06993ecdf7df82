"""settings.py, the only reader of FMREC_*: what `fmrec serve` hands to uvicorn's worker
processes reads back as the same settings, and the command-line tools' own variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.settings import Settings, ToolSettings


def test_environ_reads_back_as_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    given = Settings(bundle=Path("/models/b"), port=1234, workers=3, api_keys="a,b",
                     allow_unauthenticated_writes=True, log_level="debug")
    fields = ["bundle", "port", "workers", "api_keys", "allow_unauthenticated_writes",
              "log_level"]
    for name, value in given.environ(fields).items():
        monkeypatch.setenv(name, value)
    back = Settings()
    assert [getattr(back, f) for f in fields if f != "api_keys"] == [
        getattr(given, f) for f in fields if f != "api_keys"]
    assert back.keys == given.keys == {"a", "b"}


def test_tool_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ToolSettings().data is None and ToolSettings().replay_api_key is None
    monkeypatch.setenv("FMREC_DATA", "/data/ml-100k")
    monkeypatch.setenv("FMREC_REPLAY_API_KEY", "k1")
    assert ToolSettings().data == "/data/ml-100k" and ToolSettings().replay_api_key == "k1"


def test_fmrec_data_is_where_train_looks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-movielens-here"
    monkeypatch.setenv("FMREC_DATA", str(missing))
    assert main(["evaluate", "--bundle", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmrec: error: ") and str(missing) in err, err
