"""How far issue 13's ua target is: fmrec's relevance head blended with EASE, weights
chosen on the test split itself.

    .venv/bin/python -m bench.ranking_blend [--data DIR] [--fold ua] [--no-readme]

Trains the relevance head with its defaults (as `bench.ranking` does), scores every
unrated movie of every test user with it and with EASE (lambda 500), standardises each
user's scores over their unrated movies, and ranks by a * fmrec + (1 - a) * EASE for a
in 0, 0.1, ..., 1. Choosing a on the test split is an oracle no model has: the best row
bounds what these two models reach together on this protocol, however they are
combined by a weight. Writes bench/results/ranking-blend.json and the table in
docs/ranking.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.common import Table, update_docs, write_json
from bench.ranking import Interactions, ease_scores, relevance_head
from bench.train import default_data_dir
from model.data import DataError, Dataset
from model.data.movielens import read_movielens
from model.evaluate import ranking_summary
from model.relevance import catalog_scores

WEIGHTS = tuple(round(a, 1) for a in np.linspace(0.0, 1.0, 11))


def standardised(scores: np.ndarray, rated: np.ndarray) -> np.ndarray:
    """Each row's scores as z-scores over its unrated columns (rated ones: 0; the
    ranking leaves them out)."""
    masked = np.where(rated, np.nan, scores.astype(np.float64))
    z = (masked - np.nanmean(masked, axis=1, keepdims=True)) / np.nanstd(
        masked, axis=1, keepdims=True)
    return np.where(rated, 0.0, z)


def fmrec_scores(data: Dataset, x: Interactions) -> np.ndarray:
    """The default relevance head's scores, rows and columns as `x`'s."""
    users, ids, scores = catalog_scores(*relevance_head(data), data)
    out = np.zeros_like(x.X, dtype=np.float64)
    col = {m: n for n, m in enumerate(x.items)}
    out[np.ix_([x.row[u] for u in users], [col[m] for m in ids])] = scores
    return out


def blend_rows(data: Dataset) -> list[dict[str, Any]]:
    x = Interactions(data)
    t0 = time.perf_counter()
    rated = x.X > 0
    fm, ease = standardised(fmrec_scores(data, x), rated), standardised(ease_scores(x), rated)
    rows = []
    for a in WEIGHTS:
        summary = ranking_summary(x.top(a * fm + (1 - a) * ease, data), data)
        rows.append({"fmrec_weight": a, **{f"{part}_{k}": v for part, m in summary.items()
                                           for k, v in m.items()}})
        print(f"a={a:.1f}: NDCG@10 {summary['all']['ndcg']:.4f} "
              f"P@10 {summary['all']['precision']:.4f}", file=sys.stderr, flush=True)
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]], fold: str) -> Table:
    best = max(rows, key=lambda r: r["all_ndcg"])
    return Table(
        f"ML-100k {fold}: a x fmrec relevance + (1 - a) x EASE, per-user z-scores, "
        "a chosen on the test split (an oracle)",
        ["fmrec weight a", "NDCG@10", "P@10", "NDCG@10 good", "P@10 good"],
        [[f"{r['fmrec_weight']:.1f}" + (" (best)" if r is best else ""),
          f"{r['all_ndcg']:.4f}", f"{r['all_precision']:.4f}", f"{r['good_ndcg']:.4f}",
          f"{r['good_precision']:.4f}"] for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ranking_blend",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--fold", default="ua")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite docs")
    args = parser.parse_args(argv)
    try:
        data = read_movielens(args.data, args.fold)
    except DataError as exc:
        print(f"bench.ranking_blend: error: {exc}", file=sys.stderr)
        return 2
    rows = blend_rows(data)
    result = table(rows, args.fold)
    print(result.text())
    write_json("ranking-blend", {"fold": args.fold, "rows": rows})
    if not args.no_readme:
        update_docs({"ranking-blend": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
