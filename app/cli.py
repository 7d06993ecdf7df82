"""`fmrec`: train, evaluate and serve Factorization Machine bundles.

Every expected failure (missing files, malformed data, a bad bundle, bad arguments) ends
with one line `fmrec: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_DATA_ENV = "FMREC_DATA"


class CliError(Exception):
    """An error to report on one line and exit 2."""


def _load_data(args: argparse.Namespace):  # noqa: ANN202 - returns (Dataset, spec)
    from model.data import DataError
    from model.data.movielens import read_movielens
    from model.data.synthetic import synthetic
    from model.features import movielens_spec

    if args.synthetic:
        data, spec = synthetic(args.synthetic, seed=args.seed, hash_bits=args.hash_bits)
        if args.features != "full":
            spec = movielens_spec(args.hash_bits, args.features)
        return data, spec
    path = args.data or os.environ.get(DEFAULT_DATA_ENV)
    if not path:
        raise CliError("give --data DIR (a MovieLens folder) or --synthetic N")
    try:
        return read_movielens(path, args.split, args.seed), movielens_spec(
            args.hash_bits, args.features)
    except DataError as exc:
        raise CliError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> None:
    from model.pipeline import fit_and_save
    from model.train import TrainConfig

    data, spec = _load_data(args)
    config = TrainConfig(
        k=args.k, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.lr, l2_w=args.l2_w, l2_v=args.l2_v, patience=args.patience,
        seed=args.seed)
    model_id, metrics = fit_and_save(data, spec, config, args.out, progress=not args.quiet)
    keep = ("data", "test_rmse", "test_mae", "best_epoch", "seconds_per_epoch", "train_seconds",
            "nnz_per_rating", "collisions")
    print(json.dumps({"model_id": model_id, "bundle": str(args.out),
                      **{k: metrics[k] for k in keep}}, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.bundle import Bundle
    from model.evaluate import evaluate_bundle

    data, _ = _load_data(args)
    bundle = Bundle(args.bundle)
    print(json.dumps({"model_id": bundle.model_id, "data": data.name,
                      **evaluate_bundle(bundle, data)}, indent=2))


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help=f"MovieLens folder (or ${DEFAULT_DATA_ENV})")
    p.add_argument("--synthetic", type=int, metavar="N", help="planted-FM data with N ratings")
    p.add_argument("--split", help="ua, ub, u1..u5 or random (default: ua for 100k)")
    p.add_argument("--features", default="full",
                   help="full, ids, or ids plus a comma list of implicit,time,last,"
                        "user_attrs,item_attrs")
    p.add_argument("--hash-bits", type=int, default=18, choices=range(10, 31),
                   metavar="{10..30}")
    p.add_argument("--seed", type=int, default=0)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from model.train import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="fmrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a bundle")
    _data_args(p)
    p.add_argument("--out", type=Path, default=Path("bundles/current"))
    p.add_argument("--k", type=_positive(int), default=d.k)
    p.add_argument("--epochs", type=_positive(int), default=d.epochs)
    p.add_argument("--batch-size", type=_positive(int), default=d.batch_size)
    p.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default=d.optimizer)
    p.add_argument("--lr", type=_positive(float), default=d.learning_rate)
    p.add_argument("--l2-w", type=float, default=d.l2_w)
    p.add_argument("--l2-v", type=float, default=d.l2_v)
    p.add_argument("--patience", type=_positive(int), default=d.patience)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="RMSE/MAE of a bundle on a test split")
    _data_args(p)
    p.add_argument("--bundle", type=Path, default=Path("bundles/current"))
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from model.bundle import BundleError
    from model.data import DataError
    from model.features import FeatureError, SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, DataError, BundleError, SpecError, FeatureError, OSError) as exc:
        print(f"fmrec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
