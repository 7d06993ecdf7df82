"""What every benchmark shares: the machine it ran on, tables, ratios, results files.

These machines are noisy, so a benchmark reports each figure next to a peer measured in
the same run (a ratio) as well as the absolute number; `machine()` goes into every
results file so figures from different hosts are never compared by accident.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Host, CPU, library versions and the commit measured."""
    import numpy as np
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(), "numpy": np.__version__,
        "tensorflow": tf.__version__, "commit": commit,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is zero or missing."""
    return numerator / denominator if denominator else float("nan")


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant figures, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        # under 10**(digits-1) by significant figures; above, whole (999.7 -> "1,000")
        return f"{value:.{digits}g}" if abs(value) < 10 ** (digits - 1) else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass(frozen=True)
class Table:
    """One result table: printed fixed-width at the end of a run, and as Markdown into
    README.md and docs/ (`update_docs`)."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def text(self) -> str:
        """Fixed width, first column left-aligned, the rest right-aligned."""
        cells = [[fmt(c) for c in row] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(self.headers)]

        def line(row: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True)))

        rule = "-" * len(line(self.headers))
        return "\n".join([self.title, rule, line(self.headers), rule,
                          *(line(r) for r in cells), rule])

    def markdown(self) -> str:
        """A GitHub table under its title in italics (`|`, `<`, `>` in cells escaped)."""
        def escape(cell: str) -> str:
            return cell.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

        def row(cells: Sequence[str]) -> str:
            return "| " + " | ".join(map(escape, cells)) + " |"

        align = ["---"] + ["---:"] * (len(self.headers) - 1)
        title = self.title.replace("<", "&lt;").replace(">", "&gt;")
        return "\n".join([f"*{title}*", "", row(list(self.headers)), row(align),
                          *(row([fmt(c) for c in r]) for r in self.rows)])


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """`Table(...).text()`, for benchmarks that only print."""
    return Table(title, headers, rows).text()


def update_docs(sections: dict[str, Table], files: Sequence[Path] | None = None) -> list[str]:
    """Replace what lies between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` with
    each table's Markdown, in README.md and docs/*.md; returns the names replaced (a file
    without a marker is left as it is for that table: the prose around the tables is
    written by hand)."""
    done = []
    for path in files if files is not None else [REPO / "README.md",
                                                  *sorted((REPO / "docs").glob("*.md"))]:
        text = original = path.read_text()
        for name, tab in sections.items():
            start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
            if start in text and end in text:
                head, rest = text.split(start, 1)
                text = f"{head}{start}\n{tab.markdown()}\n{end}{rest.split(end, 1)[1]}"
                done.append(name)
        if text != original:
            path.write_text(text)
    return done


def write_json(name: str, payload: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """results/<name>.json with the machine description added; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
