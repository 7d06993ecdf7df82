"""What each feature group adds: `fmrec train`'s pipeline on ML-100k ua.base -> ua.test.

Every run uses the same split, seed and TrainConfig defaults; only the feature groups
differ. The peer of every row is the ids-only model of the same run (user id + movie id:
a biased matrix factorisation), so the table reads as "RMSE change from adding X". The
group rows train one model (members=1); the last rows are `fmrec train`'s default of
`TrainConfig.members` models averaged into one FM, with and without the session feature
(which live traffic on a new day does not have).

    .venv/bin/python -m bench.accuracy [--data DIR]

`--peers` runs instead fmrec's defaults against myFM, the Bayesian FM, on ua and the
u1..u5 folds (bench/accuracy_peers.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import accuracy_peers, myfm_peer
from bench.common import ratio, table, write_json
from bench.train import default_data_dir
from model.data.movielens import read_movielens
from model.features import FEATURE_GROUPS, movielens_spec
from model.pipeline import fit
from model.train import TrainConfig

# "history_size" is read by the relevance head only (`FeatureSpec.rating_fields`); the
# user's stars grade the rated movies, so they come with them
VARIANTS = ["ids", *(f"ids,{g}" if g != "stars" else "ids,implicit,stars"
                     for g in FEATURE_GROUPS if g != "history_size")]
WITHOUT_SESSION = ",".join(["ids", *(g for g in FEATURE_GROUPS if g != "session")])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--split", default="ua")
    parser.add_argument("--peers", action="store_true",
                        help="fmrec defaults against myFM (needs the bench extra)")
    parser.add_argument("--folds", default="ua,u1,u2,u3,u4,u5", help="with --peers")
    parser.add_argument("--myfm", default=",".join(myfm_peer.VARIANTS),
                        help=f"with --peers: myFM variants on ua, of "
                             f"{', '.join(myfm_peer.VARIANTS)}")
    parser.add_argument("--fold-myfm", default="extended",
                        help="with --peers: myFM variants on the other folds")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README tables")
    args = parser.parse_args(argv)
    if args.peers:
        chosen = [[v for v in text.split(",") if v] for text in (args.myfm, args.fold_myfm)]
        for variants in chosen:
            if (set(variants) - set(myfm_peer.VARIANTS)
                    or accuracy_peers.PEER.removeprefix("myFM ") not in variants):
                parser.error(f"--myfm/--fold-myfm: choose from {', '.join(myfm_peer.VARIANTS)}"
                             ", including extended (the ratios' peer)")
        return accuracy_peers.main(args.data, args.folds.split(","), chosen[0], chosen[1],
                                   not args.no_readme)
    data = read_movielens(args.data, args.split)
    config = TrainConfig()
    runs = [(v, v) for v in VARIANTS] + [("full (the defaults)", "full"),
                                          ("full without session", WITHOUT_SESSION)]
    rows = []
    for name, variant in runs:
        m = fit(data, movielens_spec(18, variant), config, progress=False).metrics
        rows.append({"features": name, "members": config.members,
                     "test_rmse": m["test_rmse"], "test_mae": m["test_mae"],
                     "best_epoch": m["best_epoch"], "seconds_per_epoch": m["seconds_per_epoch"],
                     "train_seconds": m["train_seconds"], "nnz_per_rating": m["nnz_per_rating"]})
        print(f"{name}: RMSE {m['test_rmse']:.4f}", file=sys.stderr, flush=True)
    base = rows[0]["test_rmse"]
    for row in rows:
        row["rmse_vs_ids"] = ratio(row["test_rmse"], base)
        row["rmse_change"] = row["test_rmse"] - base
    print(table(f"Feature groups on {data.name} (peer: ids only, same run)",
                ["features", "RMSE", "MAE", "ΔRMSE vs ids", "ratio", "epochs", "s/epoch",
                 "train s", "nnz"],
                [[r["features"], round(r["test_rmse"], 4), round(r["test_mae"], 4),
                  round(r["rmse_change"], 4), round(r["rmse_vs_ids"], 4), r["best_epoch"],
                  round(r["seconds_per_epoch"], 3), round(r["train_seconds"], 1),
                  r["nnz_per_rating"]] for r in rows]))
    path = write_json("accuracy", {"data": data.name, "config": config.to_dict(), "runs": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
