"""TensorFlow without its start-up chatter, unless asked for.

TensorFlow >= 2.19 prints its oneDNN and CPU-feature INFO lines while `import tensorflow`
runs, before absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not reach them
(tensorflow/tensorflow#100442): every `fmrec` command, even `--help`, began with them.
`quiet_tensorflow` makes the variable hold for that import too: it defaults it to 1
(warnings and errors only) and, during the first `import tensorflow`, holds the process's
stderr and passes on every line except the records below that level. Setting
TF_CPP_MIN_LOG_LEVEL=0 brings all of TensorFlow's lines back.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = "1"
_RECORD = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\] ")
_RANK = {"I": 0, "W": 1, "E": 2, "F": 3}
# absl's preamble to the early records, and the second line of the CPU-feature record
_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
_CONTINUATION = "To enable the following instructions:"


def filter_startup(text: str, level: int) -> str:
    """`text` without TensorFlow's log records of a severity below `level` (and their
    continuation lines); any other line is kept."""
    kept: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        if record:
            dropping = _RANK[record.group(1)] < level
        elif line.startswith(_PREAMBLE):
            dropping = level >= 1
        elif not (dropping and line.startswith(_CONTINUATION)):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextmanager
def stderr_filtered(level: int) -> Iterator[None]:
    """Hold file descriptor 2 (what C++ writes to) in a file, then pass it on filtered."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = filter_startup(held.read().decode(errors="replace"), level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _FilteredLoader(importlib.abc.Loader):
    """Runs the real loader of the `tensorflow` package with stderr filtered."""

    def __init__(self, loader: importlib.abc.Loader, level: int) -> None:
        self.loader, self.level = loader, level

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with stderr_filtered(self.level):
            self.loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, through the other finders, and wraps its loader."""

    def __init__(self, level: int) -> None:
        self.level = level

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self.level)
        return spec


def quiet_tensorflow() -> None:
    """Default TF_CPP_MIN_LOG_LEVEL to 1 and make it hold for the import too. Call it before
    TensorFlow is imported (model/__init__.py does); later calls change nothing."""
    level = os.environ.setdefault(LEVEL_ENV, DEFAULT_LEVEL)
    if ("tensorflow" in sys.modules or not level.isdigit() or int(level) < 1
            or any(isinstance(f, _QuietImport) for f in sys.meta_path)):
        return
    sys.meta_path.insert(0, _QuietImport(int(level)))
