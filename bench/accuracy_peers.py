"""fmrec's rating head against myFM (a Bayesian FM by Gibbs sampling), side by side.

Each fold of one run trains fmrec (`fit` with `TrainConfig` defaults and the default
features: what `fmrec train` runs for the rating head) and the chosen myFM variants
(bench/myfm_peer.py) on the same ratings, one after the other, and tests both on the
same test file. Wall times include each model's own feature encoding and test scoring;
on a shared machine they are noisy, so only ratios within one run mean anything.

    .venv/bin/python -m bench.accuracy --peers [--folds ua,u1,u2,u3,u4,u5]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench import myfm_peer
from bench.common import Table, ratio, update_docs, write_json
from model.data.movielens import read_movielens
from model.features import movielens_spec
from model.pipeline import fit
from model.train import TrainConfig

FMREC = "fmrec (defaults)"
PEER = "myFM extended"  # the ratios' denominator


def fmrec_run(data: Any, config: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    metrics = fit(data, movielens_spec(), config, progress=False).metrics
    return {"model": FMREC, "test_rmse": metrics["test_rmse"], "test_mae": metrics["test_mae"],
            "wall_seconds": time.perf_counter() - t0, "members": config.members}


def run_fold(data_dir: str, fold: str, variants: Sequence[str]) -> list[dict[str, Any]]:
    """fmrec's defaults, then each myFM variant, on one fold."""
    data = read_movielens(data_dir, fold)
    rows = []
    for row in [fmrec_run(data, TrainConfig()), *(myfm_peer.run(data, v) for v in variants)]:
        rows.append({"fold": fold, **row})
        print(f"{fold} {row['model']}: RMSE {row['test_rmse']:.4f} in "
              f"{row['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's RMSE and wall time over myFM extended's on the same fold."""
    for row in rows:
        peer = next((r for r in rows if r["fold"] == row["fold"] and r["model"] == PEER), None)
        if peer is not None:
            row["rmse_vs_myfm"] = ratio(row["test_rmse"], peer["test_rmse"])
            row["wall_vs_myfm"] = ratio(row["wall_seconds"], peer["wall_seconds"])


def _f(value: float, digits: int = 4) -> str:
    """Fixed decimals: RMSE differences live in the fourth one (`fmt` keeps 3 digits)."""
    return f"{value:.{digits}f}"


def tables(rows: list[dict[str, Any]]) -> dict[str, Table]:
    out = {}
    ua = [r for r in rows if r["fold"] == "ua"]
    if ua:
        out["accuracy-peers-ua"] = Table(
            "ML-100k ua: rating RMSE, fmrec against myFM (same run)",
            ["model", "RMSE", "MAE", "wall s", "RMSE / myFM ext.", "wall / myFM ext."],
            [[r["model"], _f(r["test_rmse"]), _f(r["test_mae"]), _f(r["wall_seconds"], 0),
              _f(r.get("rmse_vs_myfm", float("nan"))),
              _f(r.get("wall_vs_myfm", float("nan")), 2)] for r in ua])
    folds = sorted({r["fold"] for r in rows} - {"ua"})
    if folds:
        body = []
        for model in dict.fromkeys(r["model"] for r in rows if r["fold"] in folds):
            mine = [r for r in rows if r["model"] == model and r["fold"] in folds]
            rmse = np.array([r["test_rmse"] for r in mine])
            body.append([model, _f(float(rmse.mean())), _f(float(rmse.std())),
                         _f(float(rmse.min())), _f(float(rmse.max())),
                         _f(float(np.mean([r["wall_seconds"] for r in mine])), 0)])
        out["accuracy-peers-folds"] = Table(
            f"ML-100k {', '.join(folds)}: RMSE over the folds (same run)",
            ["model", "mean RMSE", "sd", "min", "max", "mean wall s"], body)
    return out


def main(data_dir: str, folds: Sequence[str], variants: Sequence[str],
         fold_variants: Sequence[str], readme: bool) -> int:
    """`variants` of myFM on ua, `fold_variants` on the other folds. Results are written
    after every fold (a fold takes minutes on a busy machine; a cut run keeps its folds)."""
    rows: list[dict[str, Any]] = []
    for fold in folds:
        rows += run_fold(data_dir, fold, variants if fold == "ua" else fold_variants)
        with_ratios(rows)
        out = tables(rows)
        path = write_json("accuracy-peers", {
            "folds": list(folds), "done": sorted({r["fold"] for r in rows}),
            "myfm_variants": list(variants), "myfm_fold_variants": list(fold_variants),
            "config": TrainConfig().to_dict(), "runs": rows})
        if readme:
            update_docs(out)
    for t in tables(rows).values():
        print(t.text())
    print(f"wrote {path}" + (" and the README tables" if readme else ""))
    return 0
