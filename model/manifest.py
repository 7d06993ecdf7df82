"""A bundle's files checked without loading it (no TensorFlow): what `fmrec serve` runs
before starting workers, and the first half of every `model.bundle.Bundle` load.

Checked: the files are there and regular, the content hash matches `model_id`, the spec
parses and reproduces its golden hashes, metrics.json has this code's format and
declares what serving relies on. Not checked here: the SavedModel's signatures and the
catalog arrays (that needs the load).
"""

from __future__ import annotations

import hashlib
import json
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.features import FeatureSpec, SpecError

FORMAT_VERSION = 2
FILES = ("spec.json", "catalog.npz", "metrics.json")
HEADS = ("rating", "relevance")


class BundleError(RuntimeError):
    """A bundle that is missing, corrupt or incompatible with this code."""


@dataclass(frozen=True)
class Manifest:
    """What a checked bundle declares about itself."""

    model_id: str
    metrics: dict[str, Any]
    spec: FeatureSpec


def check_bundle(path: str | Path) -> Manifest:
    """The bundle's manifest, checked (BundleError naming the problem otherwise)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"no model bundle at {root} (train one with `fmrec train`)")
    missing = [f for f in (*FILES, "model_id", "saved_model") if not (root / f).exists()]
    if missing:
        raise BundleError(f"bundle {root} is incomplete: missing {', '.join(missing)}")
    check_regular_files(root)
    model_id = (root / "model_id").read_text().strip()
    if content_hash(root) != model_id:
        raise BundleError(f"bundle {root} does not match its model_id (corrupt or edited)")
    try:
        metrics: dict[str, Any] = json.loads((root / "metrics.json").read_text())
        spec = FeatureSpec.from_json((root / "spec.json").read_text())
        spec.check_golden()
    except (ValueError, SpecError) as exc:
        raise BundleError(f"bundle {root}: {exc}") from exc
    if metrics.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle {root} has format {metrics.get('format_version')}, "
                          f"this code reads format {FORMAT_VERSION} (train it again)")
    check_metrics(root, metrics)
    return Manifest(model_id, metrics, spec)


def content_hash(root: Path) -> str:
    """sha256 over every file of the bundle but model_id itself, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "model_id"):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def check_regular_files(root: Path) -> None:
    """Only directories and regular files: reading a FIFO or a device would block the load
    (and the reload lock) forever, or read without end."""
    try:
        odd = [p for p in root.rglob("*") if not (p.is_dir() or stat.S_ISREG(p.stat().st_mode))]
    except OSError as exc:  # a dangling or looping symlink
        raise BundleError(f"bundle {root}: cannot read ({exc})") from exc
    if odd:
        raise BundleError(f"bundle {root}: {odd[0].relative_to(root)} is not a regular file")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def check_metrics(root: Path, metrics: Any) -> None:
    """What metrics.json declares and serving relies on, checked at load: a bundle that
    loads must not answer 500 (or clip every rating to one value) on every call later."""
    if not isinstance(metrics, dict):
        raise BundleError(f"bundle {root}: metrics.json is not a JSON object")
    heads = metrics.get("heads")
    for name in HEADS:
        head = heads.get(name) if isinstance(heads, dict) else None
        if not isinstance(head, dict):
            raise BundleError(f"bundle {root}: metrics.json does not describe head {name!r}")
        k = head.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise BundleError(f"bundle {root}: metrics.json k of head {name} must be a "
                              f"positive integer, not {k!r}")
        fields = head.get("fields")
        if not (isinstance(fields, list) and fields and all(isinstance(f, str) for f in fields)):
            raise BundleError(f"bundle {root}: metrics.json fields of head {name} must be a "
                              f"list of field keys, not {fields!r}")
    if "rating_range" in metrics:
        rating_range = metrics["rating_range"]
        if not (isinstance(rating_range, list) and len(rating_range) == 2
                and all(_number(v) for v in rating_range)
                and rating_range[0] < rating_range[1]):
            raise BundleError(f"bundle {root}: metrics.json rating_range must be two finite "
                              f"numbers [low, high] with low < high, not {rating_range!r}")
