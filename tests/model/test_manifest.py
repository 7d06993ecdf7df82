"""`Bundle.check`: a bundle's manifest and content hash, checked without TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model.bundle import Bundle
from model.manifest import BundleError, check_bundle

REPO = Path(__file__).resolve().parents[2]


def test_check_reads_the_manifest_of_a_good_bundle(small_bundle_path: Path) -> None:
    manifest = Bundle.check(small_bundle_path)
    loaded = Bundle(small_bundle_path)
    assert manifest.model_id == loaded.model_id
    assert manifest.metrics == loaded.metrics
    assert manifest.spec == loaded.spec


def test_check_refuses_an_edited_bundle(small_bundle_path: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(small_bundle_path, edited)
    (edited / "saved_model" / "fingerprint.pb").write_bytes(b"changed")
    with pytest.raises(BundleError, match="does not match its model_id"):
        check_bundle(edited)


def test_check_imports_no_tensorflow(small_bundle_path: Path) -> None:
    """What `fmrec serve` runs before starting workers: no TensorFlow in the parent."""
    code = ("import sys, json\nfrom model.manifest import check_bundle\n"
            f"m = check_bundle({str(small_bundle_path)!r})\n"
            "print(json.dumps([m.model_id, 'tensorflow' in sys.modules]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=REPO, check=True).stdout
    model_id, tensorflow = json.loads(out)
    assert model_id == (small_bundle_path / "model_id").read_text().strip()
    assert tensorflow is False
