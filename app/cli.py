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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings
    from model.bundle import Bundle
    from model.data import Dataset
    from model.features import FeatureSpec

DEFAULT_DATA_ENV = "FMREC_DATA"


class CliError(Exception):
    """An error to report on one line and exit 2."""


def _load_data(args: argparse.Namespace) -> tuple[Dataset, FeatureSpec]:
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
        path = args.data or os.environ.get(DEFAULT_DATA_ENV)
        if not path:
            raise CliError("give --data DIR (a MovieLens folder), --train FILE --test FILE "
                           "or --synthetic N")
        return read_movielens(path, args.split, args.seed, args.holdout,
                              args.cutoff), movielens_spec(args.hash_bits, args.features)
    except DataError as exc:
        raise CliError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> None:
    from model.pipeline import fit_and_save
    from model.train import TrainConfig

    data, spec = _load_data(args)
    given = dict(
        k=args.k, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.lr, l2_w=args.l2_w, l2_v=args.l2_v, l2_context=args.l2_context,
        patience=args.patience, seed=args.seed, members=args.members)
    # flags not given keep TrainConfig's defaults (the parser leaves them None so that
    # building it does not import TensorFlow)
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    model_id, metrics = fit_and_save(data, spec, config, args.out, progress=not args.quiet,
                                     refit=not args.no_refit)
    keep = ("data", "test_rmse", "test_mae", "test_ranking", "best_epoch", "refit_epochs",
            "seconds_per_epoch", "train_seconds", "nnz_per_rating", "collisions")
    print(json.dumps({"model_id": model_id, "bundle": str(args.out),
                      **{k: metrics[k] for k in keep if k in metrics}}, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.bundle import Bundle
    from model.evaluate import evaluate_bundle, rank_bundle, ranking_summary

    data, _ = _load_data(args)
    bundle = Bundle(args.bundle)
    ranking = {head: ranking_summary(rank_bundle(bundle, data, head), data)
               for head in bundle.heads}
    print(json.dumps({"model_id": bundle.model_id, "data": data.name,
                      **evaluate_bundle(bundle, data), "top10": ranking}, indent=2))



# --- the service: serve, load-users, demo ----------------------------------------------------

DEMO_RATINGS = 50_000


def _settings() -> Settings:
    """Settings from the environment; a bad FMREC_* value is a one-line error."""
    from pydantic import ValidationError

    from app.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"FMREC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        raise CliError(f"bad setting: {problems}") from None


def _bundle(path: Path) -> Bundle:
    from model.bundle import Bundle, BundleError

    try:
        return Bundle(path)
    except BundleError as exc:
        raise CliError(f"{exc}; or run `fmrec demo` to train and serve a demo model") from None


def _load_users(settings: Settings, data: Dataset) -> int:
    """Write the data's user profiles and training histories into the configured store."""
    import asyncio

    from app.store import StoreUnavailable, load_dataset_users, load_progress

    try:
        with load_progress(data) as advance:
            return asyncio.run(load_dataset_users(settings, data, advance))
    except StoreUnavailable as exc:
        raise CliError(f"cannot write to the store {settings.store_description()}: "
                       f"{exc}") from None


def _serve(settings: Settings) -> None:
    import uvicorn

    _bundle(settings.bundle)  # refuse here, on one line, rather than in every worker
    print(f"fmrec: serving {settings.bundle} at http://{settings.host}:{settings.port} "
          f"({settings.workers} worker(s))", file=sys.stderr)
    # workers re-read the environment: FMREC_* set by `serve` flags reach them too
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level)


def cmd_serve(args: argparse.Namespace) -> None:
    flags = {"FMREC_BUNDLE": args.bundle, "FMREC_HOST": args.host, "FMREC_PORT": args.port,
             "FMREC_WORKERS": args.workers}
    os.environ.update({k: str(v) for k, v in flags.items() if v is not None})
    _serve(_settings())


def cmd_load_users(args: argparse.Namespace) -> None:
    if args.redis_url is not None:
        os.environ["FMREC_REDIS_URL"] = args.redis_url
    if args.redis_cluster:
        os.environ["FMREC_REDIS_CLUSTER"] = "true"
    settings = _settings()
    data, _ = _load_data(args)
    bundle = _bundle(args.bundle)
    trained_on = (bundle.metrics.get("data"), bundle.metrics.get("train_ratings"),
                  bundle.metrics.get("data_info"))
    given = (data.name, len(data.train), json.loads(json.dumps(data.info, default=float)))
    if trained_on != given:
        raise CliError(
            f"bundle {args.bundle} was trained on {trained_on[0]} data with {trained_on[1]} "
            f"training ratings ({trained_on[2]}), not on this {given[0]} data with {given[1]} "
            f"({given[2]}): give the --data/--synthetic/--split/--seed used to train it")
    users = _load_users(settings, data)
    print(json.dumps({"model_id": bundle.model_id, "users": users,
                      "ratings": len(data.train), "store": settings.store_description()},
                     indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from model.pipeline import fit_and_save
    from model.train import TrainConfig

    settings = _settings()
    if (settings.bundle / "model_id").is_file():
        print(f"fmrec demo: a model is already at {settings.bundle}; serving it",
              file=sys.stderr)
    else:
        if not (args.data or args.synthetic or os.environ.get(DEFAULT_DATA_ENV)):
            args.synthetic = DEMO_RATINGS
        data, spec = _load_data(args)
        print(f"fmrec demo: no model at {settings.bundle}; training one on {data.name} data "
              f"({len(data.train)} ratings)", file=sys.stderr)
        fit_and_save(data, spec, TrainConfig(seed=args.seed), settings.bundle,
                     progress=not args.quiet)
        users = _load_users(settings, data)
        print(f"fmrec demo: loaded {users} users into {settings.store_description()}",
              file=sys.stderr)
    from app.security import demo_opens_writes

    if demo_opens_writes(settings):  # uvicorn's app reads this from the environment
        os.environ["FMREC_ALLOW_UNAUTHENTICATED_WRITES"] = "true"
        print("fmrec demo: no FMREC_API_KEYS: /ratings and /admin/* accept writes without a "
              f"key from this host only ({settings.host}); set FMREC_API_KEYS to require one",
              file=sys.stderr)
    elif not settings.keys and not settings.allow_unauthenticated_writes:
        print("fmrec demo: no FMREC_API_KEYS: /ratings and /admin/* are refused (403) until "
              "you set some", file=sys.stderr)
    _serve(settings)


def cmd_replay(args: argparse.Namespace) -> None:
    import httpx

    from app.replay import ReplayError, read_ratings, replay

    ratings = read_ratings(args.file)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
            report = replay(client, ratings, args.file.name[:48], args.batch_size,
                            args.retry_for)
    except (ReplayError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"file": str(args.file), "url": args.url, **report.as_dict()}, indent=2))


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help=f"MovieLens folder (or ${DEFAULT_DATA_ENV}); with --train, "
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
                   help="full, ids, or ids plus a comma list of implicit,time,last,"
                        "user_attrs,item_attrs")
    p.add_argument("--hash-bits", type=int, default=18, choices=range(10, 31),
                   metavar="{10..30}")
    p.add_argument("--seed", type=int, default=0)


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


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """Imports nothing heavy: `fmrec --help` must not wait for TensorFlow."""
    parser = argparse.ArgumentParser(prog="fmrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a bundle")
    _data_args(p)
    p.add_argument("--out", type=Path, default=Path("bundles/current"))
    p.add_argument("--k", type=_positive(int))
    p.add_argument("--epochs", type=_positive(int))
    p.add_argument("--batch-size", type=_positive(int))
    p.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"))
    p.add_argument("--lr", type=_positive(float))
    p.add_argument("--l2-w", type=float)
    p.add_argument("--l2-v", type=float)
    p.add_argument("--patience", type=_positive(int))
    p.add_argument("--l2-context", type=float)
    p.add_argument("--members", type=_positive(int),
                   help="models trained from seeds seed.. and averaged into one FM "
                        "(its k is members x --k)")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the early-stopped model instead of retraining on all ratings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="RMSE/MAE and top-10 ranking metrics (P, recall, "
                       "NDCG, MAP, coverage, popularity) of a bundle on a test split")
    _data_args(p)
    p.add_argument("--bundle", type=Path, default=Path("bundles/current"))
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="serve a bundle over HTTP (FMREC_* settings apply)")
    p.add_argument("--bundle", type=Path, help="bundle directory (default: $FMREC_BUNDLE)")
    p.add_argument("--host", help="listen address (default: $FMREC_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $FMREC_PORT or 8000)")
    p.add_argument("--workers", type=_positive(int), help="uvicorn worker processes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("load-users", help="write a data set's users and training histories "
                       "to the store (FMREC_REDIS_URL, or the embedded one)")
    _data_args(p)
    p.add_argument("--bundle", type=Path, default=Path("bundles/current"),
                   help="the bundle trained on this data (checked to match)")
    p.add_argument("--redis-url", help="default: $FMREC_REDIS_URL (empty: embedded)")
    p.add_argument("--redis-cluster", action="store_true",
                   help="the URL names Redis Cluster nodes (default: $FMREC_REDIS_CLUSTER)")
    p.set_defaults(func=cmd_load_users)

    p = sub.add_parser("demo", help="train a model if $FMREC_BUNDLE has none, load its "
                       f"users, serve it (synthetic data, {DEMO_RATINGS} ratings, by default)")
    _data_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("replay", help="send a ratings file (MovieLens u.data format: user, "
                       "movie, rating, time, tab-separated) to a server's POST /ratings, "
                       "in time order")
    p.add_argument("file", type=Path, help="e.g. ml-100k/ua.test")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: "
                   "%(default)s)")
    p.add_argument("--batch-size", type=_positive(int), default=500,
                   help="events per request (at most the server's FMREC_MAX_EVENTS)")
    p.add_argument("--api-key", default=os.environ.get("FMREC_REPLAY_API_KEY"),
                   help="X-API-Key for /ratings (default: $FMREC_REPLAY_API_KEY)")
    p.add_argument("--retry-for", type=_positive(float), default=60.0, metavar="SECONDS",
                   help="retry a batch refused with 503 or cut off this long before giving up")
    p.add_argument("--timeout", type=_positive(float), default=30.0, metavar="SECONDS",
                   help="HTTP timeout of one request")
    p.set_defaults(func=cmd_replay)
    return parser


def _expected_errors() -> tuple[type[Exception], ...]:
    """The errors reported on one line, of the modules imported so far: an exception can
    only come from a module already imported, and importing model.bundle just to name
    BundleError would load TensorFlow into every command."""
    named = (("model.data", "DataError"), ("model.bundle", "BundleError"),
             ("model.features", "SpecError"), ("model.features", "FeatureError"))
    return (CliError, OSError, *(getattr(sys.modules[module], name) for module, name in named
                                 if module in sys.modules))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except _expected_errors() as exc:
        print(f"fmrec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
