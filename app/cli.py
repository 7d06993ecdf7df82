"""`fmrec`: train, evaluate and serve Factorization Machine bundles.

The model commands (train, evaluate) and the data flags are `model.cli`'s; this module
adds the service's (serve, load-users, migrate-keys, demo, replay). Every expected failure (missing
files, malformed data, a bad bundle, bad arguments) ends with one line
`fmrec: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import CliError, add_data_args, add_model_commands, load_data, positive

if TYPE_CHECKING:
    from app.settings import Settings, ToolSettings
    from model.bundle import Bundle
    from model.data import Dataset

# --- the service: serve, load-users, demo ----------------------------------------------------

DEMO_RATINGS = 50_000


def _settings(**flags: Any) -> Settings:
    """Settings from the environment, `flags` (not None) over it; a bad FMREC_* value is a
    one-line error."""
    from pydantic import ValidationError

    from app.settings import Settings

    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(  # a rule over several settings names them itself
            f"FMREC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" if e["loc"]
            else e["msg"].removeprefix("Value error, ") for e in exc.errors())
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


def _serve(settings: Settings, flags: Iterable[str] = ()) -> None:
    """Serve `settings`; `flags`: the fields the command line set over the environment."""
    import uvicorn

    from model.manifest import BundleError, check_bundle

    try:  # refuse here, on one line, rather than in every worker; no TensorFlow needed
        check_bundle(settings.bundle)
    except BundleError as exc:
        raise CliError(f"{exc}; or run `fmrec demo` to train and serve a demo model") from None
    print(f"fmrec: serving {settings.bundle} at http://{settings.host}:{settings.port} "
          f"({settings.workers} worker(s))", file=sys.stderr)
    if settings.workers == 1:  # the settings object itself: nothing through the environment
        from app.main import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=settings.log_level)
        return
    # uvicorn's worker processes import the app by name and build their Settings() from
    # the environment: the command line's settings go there
    os.environ.update(settings.environ(flags))
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level)


def cmd_serve(args: argparse.Namespace) -> None:
    flags = {"bundle": args.bundle, "host": args.host, "port": args.port,
             "workers": args.workers}
    _serve(_settings(**flags), [k for k, v in flags.items() if v is not None])


def cmd_load_users(args: argparse.Namespace) -> None:
    settings = _settings(redis_url=args.redis_url, redis_cluster=args.redis_cluster or None)
    data, _ = load_data(args)
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


def cmd_migrate_keys(args: argparse.Namespace) -> None:
    """The pre-cluster key layout to the hash-tagged one, in place (app/migrate_keys.py)."""
    import asyncio

    from redis.exceptions import RedisError

    from app.migrate_keys import migrate
    from app.store import Store, StoreUnavailable

    settings = _settings(redis_url=args.redis_url, redis_cluster=args.redis_cluster or None)

    async def run() -> dict[str, int]:
        store = Store.open(settings)
        try:
            return (await migrate(store)).as_dict()
        finally:
            await store.close()

    try:
        done = asyncio.run(run())
    except (StoreUnavailable, RedisError) as exc:
        raise CliError(f"cannot migrate the store {settings.store_description()}: "
                       f"{exc}") from None
    print(json.dumps({"store": settings.store_description(), **done}, indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from model.pipeline import fit_and_save
    from model.train import TrainConfig

    settings = _settings()
    if (settings.bundle / "model_id").is_file():
        print(f"fmrec demo: a model is already at {settings.bundle}; serving it",
              file=sys.stderr)
    else:
        if not (args.data or args.synthetic or args.default_data):
            args.synthetic = DEMO_RATINGS
        data, spec = load_data(args)
        print(f"fmrec demo: no model at {settings.bundle}; training one on {data.name} data "
              f"({len(data.train)} ratings)", file=sys.stderr)
        fit_and_save(data, spec, TrainConfig(seed=args.seed), settings.bundle,
                     progress=not args.quiet)
        users = _load_users(settings, data)
        print(f"fmrec demo: loaded {users} users into {settings.store_description()}",
              file=sys.stderr)
    from app.security import demo_opens_writes

    flags = []
    if demo_opens_writes(settings):
        settings = settings.model_copy(update={"allow_unauthenticated_writes": True})
        flags.append("allow_unauthenticated_writes")
        print("fmrec demo: no FMREC_API_KEYS: /ratings and /admin/* accept writes without a "
              f"key from this host only ({settings.host}); set FMREC_API_KEYS to require one",
              file=sys.stderr)
    elif not settings.keys and not settings.allow_unauthenticated_writes:
        print("fmrec demo: no FMREC_API_KEYS: /ratings and /admin/* are refused (403) until "
              "you set some", file=sys.stderr)
    _serve(settings, flags)


def cmd_replay(args: argparse.Namespace) -> None:
    import httpx

    from app.replay import ReplayError, read_ratings, replay

    ratings = read_ratings(args.file)
    key = args.api_key if args.api_key is not None else _tool_settings().replay_api_key
    headers = {"X-API-Key": key} if key else {}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
            report = replay(client, ratings, args.file.name[:48], args.batch_size,
                            args.retry_for)
    except (ReplayError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"file": str(args.file), "url": args.url, **report.as_dict()}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """Imports nothing heavy: `fmrec --help` must not wait for TensorFlow."""
    parser = argparse.ArgumentParser(prog="fmrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    add_model_commands(sub)

    p = sub.add_parser("serve", help="serve a bundle over HTTP (FMREC_* settings apply)")
    p.add_argument("--bundle", type=Path, help="bundle directory (default: $FMREC_BUNDLE)")
    p.add_argument("--host", help="listen address (default: $FMREC_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $FMREC_PORT or 8000)")
    p.add_argument("--workers", type=positive(int), help="uvicorn worker processes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("load-users", help="write a data set's users and training histories "
                       "to the store (FMREC_REDIS_URL, or the embedded one)")
    add_data_args(p)
    p.add_argument("--bundle", type=Path, default=Path("bundles/current"),
                   help="the bundle trained on this data (checked to match)")
    p.add_argument("--redis-url", help="default: $FMREC_REDIS_URL (empty: embedded)")
    p.add_argument("--redis-cluster", action="store_true",
                   help="the URL names Redis Cluster nodes (default: $FMREC_REDIS_CLUSTER)")
    p.set_defaults(func=cmd_load_users)

    p = sub.add_parser("migrate-keys", help="carry users written under the pre-cluster key "
                       "layout (fmrec:user:<id>...) over to the hash-tagged one "
                       "(fmrec:{u:<id>}:...), in place, merging with what is there")
    p.add_argument("--redis-url", help="default: $FMREC_REDIS_URL (empty: embedded)")
    p.add_argument("--redis-cluster", action="store_true",
                   help="the URL names Redis Cluster nodes (default: $FMREC_REDIS_CLUSTER)")
    p.set_defaults(func=cmd_migrate_keys)

    p = sub.add_parser("demo", help="train a model if $FMREC_BUNDLE has none, load its "
                       f"users, serve it (synthetic data, {DEMO_RATINGS} ratings, by default)")
    add_data_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("replay", help="send a ratings file (MovieLens u.data format: user, "
                       "movie, rating, time, tab-separated) to a server's POST /ratings, "
                       "in time order")
    p.add_argument("file", type=Path, help="e.g. ml-100k/ua.test")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: "
                   "%(default)s)")
    p.add_argument("--batch-size", type=positive(int), default=500,
                   help="events per request (at most the server's FMREC_MAX_EVENTS)")
    p.add_argument("--api-key", help="X-API-Key for /ratings (default: "
                   "$FMREC_REPLAY_API_KEY)")
    p.add_argument("--retry-for", type=positive(float), default=60.0, metavar="SECONDS",
                   help="retry a batch refused with 503 or cut off this long before giving up")
    p.add_argument("--timeout", type=positive(float), default=30.0, metavar="SECONDS",
                   help="HTTP timeout of one request")
    p.set_defaults(func=cmd_replay)
    return parser


def _expected_errors() -> tuple[type[Exception], ...]:
    """The errors reported on one line, of the modules imported so far: an exception can
    only come from a module already imported, and importing model.manifest just to name
    BundleError would load TensorFlow into every command."""
    named = (("model.data", "DataError"), ("model.manifest", "BundleError"),
             ("model.features", "SpecError"), ("model.features", "FeatureError"))
    return (CliError, OSError, *(getattr(sys.modules[module], name) for module, name in named
                                 if module in sys.modules))


def _tool_settings() -> ToolSettings:
    from app.settings import ToolSettings

    return ToolSettings()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "default_data"):  # a command with the data flags
        args.default_data = _tool_settings().data
    try:
        args.func(args)
    except _expected_errors() as exc:
        print(f"fmrec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
