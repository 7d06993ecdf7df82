"""Seconds per training epoch on ML-100k ua.base, per feature set, against ids only.

The issue's speed target (<= 0.5 s per epoch with the full feature set on 2 cores) is
measured here with `TrainConfig()` defaults; the peer in the same run is the ids-only
model (2 non-zeros per rating), so the ratio shows what the wider rows cost.

    .venv/bin/python -m bench.epoch [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bench.common import Table, ratio, update_docs, write_json
from bench.train import default_data_dir
from model.batch_sums import wide_sides
from model.blocks import encode_ratings
from model.data.movielens import read_movielens
from model.features import FeatureMap, movielens_spec
from model.pipeline import feature_keys, l2_scale_of
from model.train import TrainConfig, Trainer

FEATURE_SETS = {
    "ids": "ids",
    "article (ids,implicit,time,last)": "ids,implicit,time,last",
    "full without raters": "ids,implicit,time,last,user_attrs,item_attrs",
    "full": "full",
}
# The defaults' Polyak average updates a copy of every weight each step: its cost is the
# last row, the full feature set without it, in the same run.
NO_AVERAGE = "full, no Polyak average"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    data = read_movielens(args.data, "ua")
    config = TrainConfig()
    rows = []
    runs = [(name, groups, config) for name, groups in FEATURE_SETS.items()]
    runs.append((NO_AVERAGE, "full", replace(config, average=0.0)))
    for name, groups, run_config in runs:
        spec = movielens_spec(18, groups).fit_numeric(
            "context", {"time": data.train.timestamp.tolist()})
        fmap = FeatureMap(spec.rating_fields())
        encoded = encode_ratings(fmap, data, data.train, data.train)
        # the per-field L2 multipliers `fmrec train` uses (their columns cost a little)
        l2_scale = l2_scale_of(fmap, feature_keys(fmap, data), run_config.l2_fields)
        trainer = Trainer.for_data(encoded, spec.n_features, run_config, l2_scale)
        encoded = trainer.compact(encoded)
        sides = wide_sides(encoded, config.batch_size)
        rng = np.random.default_rng(0)
        seconds = []
        for _ in range(args.epochs + 1):  # the first epoch traces the step: not counted
            order = rng.permutation(len(encoded))
            start = time.perf_counter()
            for i in range(0, len(encoded), config.batch_size):
                trainer.step(*encoded.batch(order[i : i + config.batch_size], sides))
            seconds.append(time.perf_counter() - start)
        rows.append({"features": name, "nnz_per_rating": round(encoded.nnz_per_rating, 1),
                     "seconds_per_epoch": float(np.median(seconds[1:]))})
    base = rows[0]["seconds_per_epoch"]
    for row in rows:
        row["vs_ids"] = ratio(row["seconds_per_epoch"], base)
    result = Table(f"Seconds per epoch, {data.name}, batch {config.batch_size} "
                   f"(peer: ids only; load average {os.getloadavg()[0]:.1f} at the end)",
                   ["features", "nnz/rating", "s/epoch", "x ids"],
                   [[r["features"], r["nnz_per_rating"], round(r["seconds_per_epoch"], 3),
                     round(r["vs_ids"], 2)] for r in rows])
    print(result.text())
    update_docs({"epoch": result})
    print(f"wrote {write_json('epoch', {'config': config.to_dict(), 'runs': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
