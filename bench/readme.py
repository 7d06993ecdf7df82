"""Rewrite README.md's result tables from bench/results/train.json, serve.json,
compose.json and accuracy-peers.json.

A full run of bench.train or bench.serve does this itself at its end; this redoes it
from the stored results (after editing the prose around the tables, say) without
measuring again.

    .venv/bin/python -m bench.readme
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bench import accuracy_peers, compose_check, serve, train
from bench.common import RESULTS, update_docs


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m bench.readme",
                            description=__doc__.split("\n\n")[0]).parse_args(argv)
    for name, tables in (("train", train.tables), ("serve", serve.tables),
                         ("compose", compose_check.tables),
                         ("accuracy-peers", lambda d: accuracy_peers.tables(d["runs"]))):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            done = update_docs(tables(json.loads(path.read_text())))
            print(f"{path.name}: rewrote {', '.join(done) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
