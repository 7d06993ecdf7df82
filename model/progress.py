"""Progress of a loop: a tqdm bar on a terminal, one plain line per step elsewhere.

In CI or `docker compose logs` a bar's carriage-return updates pile up into one line
thousands of updates long, so off a terminal each step prints its own line instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class LineProgress(Generic[T]):
    """tqdm's interface as training uses it (iterate, `set_postfix`), one line per step."""

    def __init__(self, items: Sequence[T], desc: str, unit: str, stream: TextIO) -> None:
        self.items, self.desc, self.unit, self.stream = items, desc, unit, stream
        self.n = 0

    def __iter__(self) -> Iterator[T]:
        for n, item in enumerate(self.items, 1):
            self.n = n
            yield item

    def set_postfix(self, values: Mapping[str, Any]) -> None:
        """Print the step's line: `train: epoch 3/100 train_rmse=0.91 ...`."""
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        print(f"{self.desc}: {self.unit} {self.n}/{len(self.items)} {shown}".rstrip(),
              file=self.stream, flush=True)


def progress(items: Sequence[T], desc: str, unit: str, enabled: bool = True,
             stream: TextIO | None = None) -> tqdm[T] | LineProgress[T]:
    """A bar when `stream` (default stderr) is a terminal, else one line per step."""
    out = stream or sys.stderr
    if enabled and not out.isatty():
        return LineProgress(items, desc, unit, out)
    return tqdm(items, desc=desc, unit=unit, disable=not enabled, file=out)
