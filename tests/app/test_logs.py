"""What fmrec prints: no TensorFlow start-up lines unless asked, no tqdm bars off a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from model.blocks import encode_ratings
from model.data import Dataset
from model.features import FeatureMap, FeatureSpec
from model.progress import LineProgress, progress
from model.quiet_tf import filter_startup
from model.train import TrainConfig, train

# what TensorFlow 2.21 printed on `import tensorflow` (one CPU-feature record has two lines)
STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795695927.604739   28474 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1795695927.736998   28474 cpu_feature_guard.cc:227] This TensorFlow binary is \
optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild.
W0000 00:00:1795695927.8   28474 cuda.cc:1] a warning
/x/y.py:3: DeprecationWarning: from Python
E0000 00:00:1795695927.9   28474 cuda.cc:2] an error
"""
TF_LINE = re.compile(r"oneDNN|cpu_feature_guard|absl::InitializeLog|^[IWEF]\d{4} ", re.M)


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**clean, **env}, check=True)


def test_filter_drops_records_below_the_level_and_keeps_everything_else() -> None:
    assert filter_startup(STARTUP, 0) == STARTUP
    lines = filter_startup(STARTUP, 1).splitlines()
    assert lines == [STARTUP.splitlines()[i] for i in (4, 5, 6)]
    assert filter_startup(STARTUP, 2).splitlines() == [STARTUP.splitlines()[i] for i in (5, 6)]


def test_help_imports_no_tensorflow_and_prints_none_of_its_lines() -> None:
    proc = subprocess.run([sys.executable, "-m", "app.cli", "--help"], capture_output=True,
                          text=True, check=True)
    assert "usage: fmrec" in proc.stdout
    assert not TF_LINE.search(proc.stdout + proc.stderr), proc.stderr
    loaded = run("import sys, app.cli\n"
                 "try:\n    app.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
                 "print('tensorflow' in sys.modules)").stdout.split()[-1]
    assert loaded == "False"


def test_importing_the_model_quiets_tensorflow_unless_the_user_set_the_level() -> None:
    quiet = run("import model.fm, os; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    assert quiet.stdout.split() == ["1"]
    assert not TF_LINE.search(quiet.stderr), quiet.stderr
    hooked = "import sys, model; print(any(type(f).__name__ == '_QuietImport' " \
             "for f in sys.meta_path))"
    assert run(hooked).stdout.split() == ["True"]
    assert run(hooked, TF_CPP_MIN_LOG_LEVEL="0").stdout.split() == ["False"]  # logs back on


def test_training_off_a_terminal_prints_one_line_per_epoch(
        small_data: tuple[Dataset, FeatureSpec], capsys: pytest.CaptureFixture[str]) -> None:
    data, spec = small_data
    fmap = FeatureMap(spec)
    enc = encode_ratings(fmap, data, data.train, data.train)
    held = encode_ratings(fmap, data, data.test, data.train)
    result = train(enc, TrainConfig(k=4, epochs=3, batch_size=2048, members=1, patience=9),
                   spec.n_features, data.rating_range, held, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split()[:3] for line in lines] == [["train:", "epoch", f"{n}/3"]
                                                     for n in (1, 2, 3)]
    for line, row in zip(lines, result.history, strict=True):
        assert f"val_rmse={round(row['val_rmse'], 4)}" in line.split()


def test_progress_is_a_bar_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = io.StringIO()
    lines = progress(range(2), "x", "step", stream=plain)
    assert isinstance(lines, LineProgress)
    for n in lines:
        lines.set_postfix({"n": n})
    assert plain.getvalue() == "x: step 1/2 n=0\nx: step 2/2 n=1\n"
    assert not isinstance(progress(range(2), "x", "step", stream=Terminal()), LineProgress)
    silent = io.StringIO()
    for _ in progress(range(2), "x", "step", enabled=False, stream=silent):
        pass
    assert silent.getvalue() == ""
