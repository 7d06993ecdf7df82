"""Shared fixtures: where MovieLens lives, and small bundles trained once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.bundle import Bundle
from model.data import Dataset
from model.data.synthetic import PLANTED_FEATURES, synthetic
from model.features import FeatureSpec, movielens_spec
from model.pipeline import fit_and_save
from model.train import TrainConfig
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("FMREC_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _no_fmrec_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from fmrec's defaults, whatever FMREC_* the caller exported
    (FMREC_DATA, FMREC_REDIS_URL...): a test that needs a setting sets it itself."""
    for name in [n for n in os.environ if n.startswith("FMREC_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real ML-100k files (never committed); FMREC_DATA_DIR overrides the location."""
    path = DATA_DIR / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"MovieLens 100k not found under {DATA_DIR} (set FMREC_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def small_data() -> tuple[Dataset, FeatureSpec]:
    """A planted-FM data set small enough to train in seconds."""
    return synthetic(n_ratings=6000, n_users=120, n_items=200, k=4, noise=0.2, seed=7,
                     hash_bits=14)


@pytest.fixture(scope="session")
def small_bundle_path(tmp_path_factory: pytest.TempPathFactory,
                      small_data: tuple[Dataset, FeatureSpec]) -> Path:
    """A real SavedModel bundle trained on `small_data` (a few seconds, once per session):
    the planted features and the user's stars (fmrec's defaults read them)."""
    data, _ = small_data
    spec = movielens_spec(14, f"{PLANTED_FEATURES},stars")
    out = tmp_path_factory.mktemp("bundle") / "small"
    fit_and_save(data, spec, TrainConfig(k=4, epochs=8, batch_size=512, learning_rate=0.02,
                                         members=1),
                 out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_bundle(small_bundle_path: Path) -> Bundle:
    return Bundle(small_bundle_path)


# --- service tests: a real redis-server per test, anyio for async tests ---------------------

@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server process on a free port, killed after the test."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()
