"""The rating head's neighbourhood (`model.neighbours`), measured: a grid of its settings
against the FM alone, on ML-100k ua and the u1..u5 folds.

    .venv/bin/python -m bench.residual_neighbours [--data DIR] [--folds ua,u1,...] [--no-docs]

Per fold the rating head is trained once with its defaults, then every neighbourhood of
the grid is fitted on its residuals (`model.pipeline.residual_neighbours`, what `fmrec
train` runs) and the test split scored with it. Every row is scored on the test splits:
the defaults are the row best on ua, and the folds say whether it generalises (issue
18's protocol). Writes bench/results/residual-neighbours.json and the tables in
docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.common import Table, update_docs, write_json
from bench.train import default_data_dir
from model.blocks import encode_ratings
from model.data import DataError, Dataset
from model.data.movielens import read_movielens
from model.evaluate import rmse_mae
from model.features import FeatureMap, movielens_spec
from model.neighbours import NeighbourConfig
from model.pipeline import fit, residual_neighbours
from model.train import TrainConfig

DEFAULT = NeighbourConfig()
GRID = (DEFAULT, *(dataclasses.replace(DEFAULT, **change) for change in (
    {"k": 20}, {"k": 50}, {"alpha": 0.75}, {"lam": 1.0}, {"lam": 10.0}, {"shrink": 50.0},
    {"shrink": 200.0}, {"per_movie": 100}, {"per_movie": 1_000_000})))


def label(config: NeighbourConfig) -> str:
    """What a row changes from the defaults."""
    changed = [f"{f.name} {getattr(config, f.name):g}" for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(DEFAULT, f.name)]
    return "+ neighbours, " + (", ".join(changed) if changed else "the defaults")


def fold_run(data: Dataset, grid: Sequence[NeighbourConfig]) -> dict[str, Any]:
    """The FM alone and with each neighbourhood of `grid`, on one fold."""
    t0 = time.perf_counter()
    config = TrainConfig(neighbours=None)
    report = fit(data, movielens_spec(18, "full"), config, progress=False)
    fm_seconds = time.perf_counter() - t0
    fmap = FeatureMap(report.metrics["spec"].rating_fields())
    trainers = [r.trainer for r in report.results]
    encoded = encode_ratings(fmap, data, data.train, data.train)
    fm = np.mean([t.predict_all(encode_ratings(fmap, data, data.test, data.train))
                  for t in trainers], axis=0)
    rows = []
    for settings in grid:
        t0 = time.perf_counter()
        _, term = residual_neighbours(data, encoded, trainers,
                                      dataclasses.replace(config, neighbours=settings))
        rmse = rmse_mae(np.clip(fm + term, *data.rating_range), data.test.rating)[0]
        rows.append({**dataclasses.asdict(settings), "test_rmse": rmse,
                     "seconds": time.perf_counter() - t0})
    return {"fold": data.name, "fm_rmse": report.metrics["test_rmse_fm"],
            "fm_seconds": fm_seconds, "grid": rows}


def tables(runs: list[dict[str, Any]], grid: Sequence[NeighbourConfig]) -> dict[str, Table]:
    """The grid on ua and over the folds; the defaults on every fold."""
    ua = next(r for r in runs if r["fold"].endswith("/ua"))
    folds = [r for r in runs if r is not ua]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    def cells(rmse: float, fold_rmse: float, seconds: float) -> list[str]:
        return [f"{rmse:.4f}", f"{fold_rmse:.4f}", f"{rmse / ua['fm_rmse']:.4f}",
                f"{seconds:.1f}"]

    grid_rows = [["the FM alone (no neighbours)", *cells(
        ua["fm_rmse"], mean([f["fm_rmse"] for f in folds]), ua["fm_seconds"])]]
    grid_rows += [[label(c), *cells(ua["grid"][n]["test_rmse"],
                                    mean([f["grid"][n]["test_rmse"] for f in folds]),
                                    ua["grid"][n]["seconds"])] for n, c in enumerate(grid)]
    default = grid.index(DEFAULT)
    per_fold = [[r["fold"].rsplit("/", 1)[-1], f"{r['fm_rmse']:.4f}",
                 f"{r['grid'][default]['test_rmse']:.4f}",
                 f"{r['grid'][default]['test_rmse'] - r['fm_rmse']:+.4f}"] for r in runs]
    return {
        "residual-neighbours": Table(
            "ML-100k: the rating head's FM alone and with neighbourhoods on its residuals "
            "(same run; seconds: fitting the neighbourhood, or training the FM)",
            ["rating head", "ua RMSE", "u1..u5 mean RMSE", "ua / FM alone", "s"], grid_rows),
        "residual-neighbours-folds": Table(
            "The default neighbourhood on every fold (same run)",
            ["fold", "FM alone", "with neighbours", "change"], per_fold),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--folds", default="ua,u1,u2,u3,u4,u5")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs tables")
    args = parser.parse_args(argv)
    folds = args.folds.split(",")
    if "ua" not in folds:
        parser.error("--folds must include ua (the defaults are chosen there)")
    try:
        datasets = [read_movielens(args.data, fold) for fold in folds]
    except DataError as exc:
        print(f"bench.residual_neighbours: {exc}", file=sys.stderr)
        return 2
    runs = []
    for data in datasets:
        runs.append(fold_run(data, GRID))
        print(f"{data.name}: FM {runs[-1]['fm_rmse']:.4f}, with the default neighbours "
              f"{runs[-1]['grid'][0]['test_rmse']:.4f}", file=sys.stderr, flush=True)
    out = tables(runs, GRID)
    for tab in out.values():
        print(tab.text())
    write_json("residual-neighbours", {"runs": runs})
    if not args.no_docs:
        update_docs(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
