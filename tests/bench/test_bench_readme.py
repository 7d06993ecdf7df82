"""Documentation tables come from benchmark output: only the marked sections change."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import readme
from bench.common import Table, update_docs

README = """# Title
Prose before.

<!-- bench:speed -->
| old | table |
<!-- /bench:speed -->

Prose between, with a `<!-- bench:other -->` that has no end marker.

<!-- bench:unused -->
kept as it is
<!-- /bench:unused -->
"""


def test_marked_sections_are_rewritten_and_nothing_else(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    speed = Table("Speed <fast|slow>", ["run", "req/s"], [["fmrec <a|b>", 1234.5], ["bare", None]])
    done = update_docs({"speed": speed, "other": speed, "missing": speed}, [readme])
    assert done == ["speed"]
    text = readme.read_text()
    assert "| old | table |" not in text
    assert ("<!-- bench:speed -->\n*Speed &lt;fast|slow&gt;*\n\n| run | req/s |\n"
            "| --- | ---: |\n| fmrec &lt;a\\|b&gt; | 1,234 |\n| bare | - |\n"
            "<!-- /bench:speed -->") in text
    before, after = README.split("<!-- bench:speed -->")[0], README.split(
        "<!-- /bench:speed -->")[1]
    assert text.startswith(before) and text.endswith(after)
    assert update_docs({"speed": speed}, [readme]) == ["speed"]
    assert readme.read_text() == text  # rewriting the same figures changes nothing


def test_a_table_is_rewritten_in_every_file_that_marks_it(tmp_path: Path) -> None:
    """README.md keeps headline figures and docs/benchmarks.md the full tables: a table
    marked in both is rewritten in both, and a file without it is not touched."""
    files = [tmp_path / name for name in ("README.md", "benchmarks.md", "other.md")]
    files[0].write_text(README)
    files[1].write_text("# Benchmarks\n<!-- bench:speed -->\nold\n<!-- /bench:speed -->\n")
    files[2].write_text("no markers\n")
    speed = Table("Speed", ["run", "req/s"], [["fmrec", 1.0]])
    assert update_docs({"speed": speed}, files) == ["speed", "speed"]
    assert all("| fmrec | 1 |" in f.read_text() for f in files[:2])
    assert files[2].read_text() == "no markers\n"


def test_help_prints_usage_and_rewrites_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:  # it used to ignore its arguments and rewrite
        readme.main(["--help"])
    assert stop.value.code == 0 and "usage: python -m bench.readme" in capsys.readouterr().out
