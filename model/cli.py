"""`fmrec train` and `fmrec evaluate`: the model commands, and the data flags they share.

TensorFlow is imported by the commands that need it, when they run: building the parser
(`fmrec --help`) imports nothing heavy. `app.cli` adds the service commands.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.data import Dataset
    from model.features import FeatureSpec


class CliError(Exception):
    """An error to report on one line and exit 2."""


def load_data(args: argparse.Namespace) -> tuple[Dataset, FeatureSpec]:
    from model.data import DataError
    from model.data.movielens import read_files, read_movielens
    from model.data.synthetic import synthetic
    from model.features import movielens_spec

    if (args.train is None) != (args.test is None):
        raise CliError("give --train FILE and --test FILE together")
    if args.cutoff is not None and args.split != "temporal":
        raise CliError("--cutoff needs --split temporal")
    if args.synthetic:
        if args.train or args.split or args.cutoff is not None:
            raise CliError("--synthetic makes its own split: drop --train/--test/--split")
        data, spec = synthetic(args.synthetic, seed=args.seed, hash_bits=args.hash_bits,
                               test_fraction=args.holdout)
        if args.features != "full":
            spec = movielens_spec(args.hash_bits, args.features)
        return data, spec
    try:
        if args.train is not None:
            if args.split:
                raise CliError("--train/--test are the split: drop --split")
            return read_files(args.train, args.test, args.data), movielens_spec(
                args.hash_bits, args.features)
        path = args.data or args.default_data
        if not path:
            raise CliError("give --data DIR (a MovieLens folder), --train FILE --test FILE "
                           "or --synthetic N")
        return read_movielens(path, args.split, args.seed, args.holdout,
                              args.cutoff), movielens_spec(args.hash_bits, args.features)
    except DataError as exc:
        raise CliError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from model.pipeline import fit_and_save, unknown_fields
    from model.train import DEFAULT_L2_FIELDS, TrainConfig

    data, spec = load_data(args)
    l2_fields = None
    if args.l2_field:
        l2_fields = {**DEFAULT_L2_FIELDS, **dict(args.l2_field)}
        rating = spec.rating_fields()  # the fields the rating head reads and regularises
        unknown = unknown_fields(rating, dict(args.l2_field))
        if unknown:
            raise CliError(f"--l2-field: {', '.join(unknown)} not among the features "
                           f"({', '.join(f.key for f in rating.fields)})")
    given = dict(
        k=args.k, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.lr, l2_w=args.l2_w, l2_v=args.l2_v, l2_context=args.l2_context,
        l2_fields=l2_fields, patience=args.patience, seed=args.seed, members=args.members,
        average=args.average, min_improvement=args.min_improvement,
        refit_epochs=args.refit_epochs)
    # flags not given keep TrainConfig's defaults (the parser leaves them None so that
    # building it does not import TensorFlow)
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    if args.no_neighbours:
        config = replace(config, neighbours=None)
    model_id, metrics = fit_and_save(data, spec, config, args.out, progress=not args.quiet,
                                     refit=not args.no_refit, **(
                                         {} if args.ann_threshold is None
                                         else {"ann_threshold": args.ann_threshold}))
    keep = ("data", "test_rmse", "test_rmse_fm", "test_mae", "test_ranking", "best_epoch",
            "refit_epochs", "seconds_per_epoch", "train_seconds", "nnz_per_rating",
            "collisions")
    print(json.dumps({"model_id": model_id, "bundle": str(args.out),
                      **{k: metrics[k] for k in keep if k in metrics}}, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.bundle import Bundle
    from model.evaluate import evaluate_bundle, rank_bundle, ranking_summary

    data, _ = load_data(args)
    bundle = Bundle(args.bundle)
    ranking = {head: ranking_summary(rank_bundle(bundle, data, head), data)
               for head in bundle.heads}
    print(json.dumps({"model_id": bundle.model_id, "data": data.name,
                      **evaluate_bundle(bundle, data), "top10": ranking}, indent=2))


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="MovieLens folder (or $FMREC_DATA); with --train, "
                   "where the user and movie attributes are (default: the train file's folder)")
    p.add_argument("--synthetic", type=int, metavar="N", help="planted-FM data with N ratings")
    p.add_argument("--train", type=Path, metavar="FILE",
                   help="training ratings in a MovieLens format (u.data, ratings.dat or "
                        "ratings.csv style); needs --test")
    p.add_argument("--test", type=Path, metavar="FILE", help="test ratings, as --train")
    p.add_argument("--split", help="ua, ub, u1..u5 (100k only), random or temporal (train "
                   "before a time, test after it); default: ua for 100k, else random")
    p.add_argument("--holdout", type=_fraction, default=0.1, metavar="FRACTION",
                   help="share of the ratings held out by the random and temporal splits "
                        "(default: %(default)s)")
    p.add_argument("--cutoff", type=_date, metavar="DATE",
                   help="temporal split: test on the ratings from this date on (YYYY-MM-DD "
                        "or an ISO date-time, UTC unless it says) instead of --holdout")
    p.add_argument("--features", default="full",
                   help="full, ids, or ids plus a comma list of implicit,stars,time,last,"
                        "user_attrs,item_attrs,raters,session,history_size,day (day is not "
                        "in full; stars needs implicit)")
    p.add_argument("--hash-bits", type=int, default=18, choices=range(10, 31),
                   metavar="{10..30}")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(default_data=None)  # $FMREC_DATA, filled in by `app.cli` from settings


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _date(text: str) -> int:
    """Unix seconds of a date or ISO date-time (UTC unless it gives an offset)."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp())


def unit_share(what: str) -> Callable[[str], float]:
    """A parser of a number in [0, 1): `what` names it in the error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} in [0, 1)")
        return value
    return parse


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def l2_field(text: str) -> tuple[str, float]:
    """FIELD=SCALE of `--l2-field`: a feature key (side.name) and a multiplier >= 0."""
    key, _, value = text.partition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if "." not in key or not (math.isfinite(scale) and scale >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=SCALE, e.g. item.id=10")
    return key, scale


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_model_commands(sub: Any) -> None:
    """`train` and `evaluate` as subcommands of `sub` (argparse's subparsers)."""
    p = sub.add_parser("train", help="train a model and write a bundle")
    add_data_args(p)
    p.add_argument("--out", type=Path, default=Path("bundles/current"))
    p.add_argument("--k", type=positive(int))
    p.add_argument("--epochs", type=positive(int))
    p.add_argument("--batch-size", type=positive(int))
    p.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"))
    p.add_argument("--lr", type=positive(float))
    p.add_argument("--l2-w", type=float)
    p.add_argument("--l2-v", type=float)
    p.add_argument("--patience", type=positive(int))
    p.add_argument("--l2-context", type=float)
    p.add_argument("--l2-field", type=l2_field, action="append", metavar="FIELD=SCALE",
                   help="multiply one field's L2 weights (w and V): the defaults are "
                        "item.id=10 and user.rated_stars=3 (FIELD=1 turns one off); "
                        "repeatable")
    p.add_argument("--members", type=positive(int),
                   help="models trained from seeds seed.. and averaged into one FM "
                        "(its k is members x --k)")
    p.add_argument("--average", type=unit_share("a decay"),
                   help="Polyak averaging: the per-step decay of the weights' moving average "
                        "that is validated and saved (0 = off)")
    p.add_argument("--min-improvement", type=unit_share("a share"), metavar="SHARE",
                   help="early stop: an epoch is better only if it cuts the best validation "
                        "RMSE by this share (default 0.0006)")
    p.add_argument("--refit-epochs", type=positive(int), metavar="N",
                   help="after the early stop, train the model on all ratings for N more "
                        "epochs (default 12)")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the early-stopped model instead of training it on all ratings")
    p.add_argument("--no-neighbours", action="store_true",
                   help="no item-item correction on the rating head's residuals: /predict "
                        "answers with the FM alone (model/neighbours.py)")
    p.add_argument("--ann-threshold", type=nonnegative_int, metavar="MOVIES",
                   help="catalogs of this many movies or more get an approximate top-N "
                        "index (0: never; default 200,000; docs/ann.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="RMSE/MAE and top-10 ranking metrics (P, recall, "
                       "NDCG, MAP, coverage, popularity) of a bundle on a test split")
    add_data_args(p)
    p.add_argument("--bundle", type=Path, default=Path("bundles/current"))
    p.set_defaults(func=cmd_evaluate)
