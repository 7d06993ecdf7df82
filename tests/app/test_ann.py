"""Approximate top-N (model/ann.py, app/approximate.py): the index's inner product is the
FM score up to a per-query constant; a small catalog forced through the approximate path
answers exactly what the exact path answers when the candidates cover the catalog, with
the filters honoured; a missing, corrupt or foreign index refuses the bundle (also on
reload, where the old model keeps serving); the answer says which path served it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.settings import Settings
from model import ann
from model.bundle import HEADS, Bundle, BundleError, content_hash, save_bundle
from model.data import Dataset
from model.features import FeatureSpec, with_session
from model.pipeline import fit_and_save
from model.train import TrainConfig
from tests.support.api_client import CONTEXT, brute_force, service_settings, serving
from tests.support.redis_server import RedisServer

USER = {"id": "u-ann", "age": 30, "gender": "F", "rated": ["1", "5", "9", "12"]}
COVER = {"ann_candidates": 1000, "ann_max_share": 1.0, "ann_probe_share": 1.0}


@pytest.fixture(scope="module")
def ann_bundle_path(tmp_path_factory: pytest.TempPathFactory,
                    small_data: tuple[Dataset, FeatureSpec]) -> Path:
    """A small bundle with an index on both heads (threshold 1: every catalog gets one)."""
    data, spec = small_data
    out = tmp_path_factory.mktemp("bundle") / "ann"
    fit_and_save(data, spec, TrainConfig(k=4, epochs=3, batch_size=512, learning_rate=0.02,
                                         members=1), out, progress=False, ann_threshold=1)
    return out


@pytest.fixture(scope="module")
def ann_bundle(ann_bundle_path: Path) -> Bundle:
    return Bundle(ann_bundle_path)


def test_inner_product_is_the_score_up_to_a_query_constant(ann_bundle: Bundle) -> None:
    """<[a, 1], [s_i, b_i]> - score(i) is the same for every movie i (so both rank alike),
    checked against the score_pairs reference for each head."""
    for name in HEADS:
        head = ann_bundle.heads[name]
        context = with_session(CONTEXT, USER["id"])
        query, contexts = head.query(USER, context)
        a = query.s + head.side_sums(contexts).s
        inner = ann.query_vectors(a) @ ann.item_vectors(head.items).T
        scores = ann_bundle.scores(USER, [{"id": str(i)} for i in ann_bundle.catalog.ids],
                                   CONTEXT, name)
        gap = inner[0] - scores
        assert np.ptp(gap) < 1e-4 * max(1.0, np.abs(scores).max()), name


def test_index_is_declared_and_covers_the_catalog(ann_bundle: Bundle,
                                                  small_bundle: Bundle) -> None:
    for name in HEADS:
        index = ann_bundle.heads[name].ann
        assert index is not None
        every = index.members(np.arange(index.points))
        assert sorted(every.tolist()) == list(range(len(ann_bundle.catalog)))
        assert ann_bundle.metrics["heads"][name]["ann"]["file"] == ann.index_file(name)
        assert small_bundle.heads[name].ann is None  # 200 movies < the default threshold
        assert "ann" not in small_bundle.metrics["heads"][name]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


async def _recommend(settings: Settings, bodies: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
    async with serving(settings) as (_, client):
        out = []
        for body in bodies:
            response = await client.post("/recommend", json=body)
            assert response.status_code == 200, response.text
            out.append(response.json())
        return out


def _same(answer: dict[str, Any], expected: list[tuple[str, float]]) -> None:
    assert [i["movie_id"] for i in answer["items"]] == [m for m, _ in expected]
    np.testing.assert_allclose([i["score"] for i in answer["items"]],
                               [s for _, s in expected], rtol=1e-4, atol=1e-5)


@pytest.mark.anyio
async def test_covering_candidates_give_the_exact_answer_for_both_heads(
        ann_bundle_path: Path, ann_bundle: Bundle, redis_url: str) -> None:
    settings = service_settings(bundle=ann_bundle_path, redis_url=redis_url, **COVER)
    bodies = [{"user": USER, "context": CONTEXT, "n": 15, "rank_by": head,
               "exclude_rated": False} for head in HEADS]
    for head, answer in zip(HEADS, await _recommend(settings, bodies), strict=True):
        assert answer["path"] == "approximate"
        assert answer["rank_by"] == head
        _same(answer, brute_force(ann_bundle, USER, CONTEXT, 15, head=head))


@pytest.fixture(scope="module")
def twins_bundle_path(tmp_path_factory: pytest.TempPathFactory, ann_bundle: Bundle) -> Path:
    """The ann bundle's heads over a catalog of 600 movies: the 200 trained ones and 400
    known only by one of 6 (genre, year) combinations, so most vectors have twins."""
    from bench.ann import heads_of

    items = {str(i): {"title": f"Movie {i}", "genres": [("Comedy", "Drama")[i % 2]],
                      "year": 1990 + i % 3, "raters": []} for i in range(1, 601)}
    metrics = {k: v for k, v in ann_bundle.metrics.items() if k not in ("heads",
                                                                        "format_version")}
    out = tmp_path_factory.mktemp("bundle") / "twins"
    save_bundle(out, heads_of(ann_bundle), ann_bundle.spec, items, metrics, ann_threshold=1)
    return out


@pytest.mark.anyio
async def test_twin_movies_are_one_point_and_all_candidates(
        twins_bundle_path: Path, redis_url: str) -> None:
    """Identical item vectors are one point of the graph; a point found brings all its
    movies, so ties are ranked as the exact path ranks them (the lower row first)."""
    twins = Bundle(twins_bundle_path)
    for name in HEADS:
        index = twins.heads[name].ann
        assert index is not None and index.points < len(twins.catalog) - 300
    settings = service_settings(bundle=twins_bundle_path, redis_url=redis_url, **COVER)
    genre = twins.catalog.genre_names[0]
    bodies = [{"user": USER, "context": CONTEXT, "n": 40, "rank_by": head} for head in HEADS]
    bodies.append({"user": USER, "context": CONTEXT, "n": 25, "genres": [genre]})
    answers = await _recommend(settings, bodies)
    for body, answer in zip(bodies, answers, strict=True):
        assert answer["path"] == "approximate"
        _same(answer, brute_force(twins, USER, CONTEXT, body["n"], exclude=set(USER["rated"]),
                                  genres=body.get("genres"),
                                  head=body.get("rank_by", "relevance")))


@pytest.mark.anyio
async def test_filters_are_honoured_on_the_approximate_path(
        ann_bundle_path: Path, ann_bundle: Bundle, redis_url: str) -> None:
    settings = service_settings(bundle=ann_bundle_path, redis_url=redis_url, **COVER)
    genre = ann_bundle.catalog.genre_names[0]
    bodies = [
        {"user": USER, "context": CONTEXT, "n": 12},  # excludes the rated movies
        {"user": USER, "context": CONTEXT, "n": 12, "genres": [genre],
         "rank_by": "rating"},
    ]
    excluded, genres = await _recommend(settings, bodies)
    assert excluded["path"] == genres["path"] == "approximate"
    _same(excluded, brute_force(ann_bundle, USER, CONTEXT, 12, exclude=set(USER["rated"])))
    _same(genres, brute_force(ann_bundle, USER, CONTEXT, 12, exclude=set(USER["rated"]),
                              genres=[genre], head="rating"))
    assert not set(USER["rated"]) & {i["movie_id"] for i in excluded["items"]}


@pytest.mark.anyio
async def test_exact_path_when_asked_for_candidates_filtered_or_switched_off(
        ann_bundle_path: Path, ann_bundle: Bundle, redis_url: str) -> None:
    candidates = [str(i) for i in ann_bundle.catalog.ids[:30]]
    body = {"user": USER, "context": CONTEXT, "n": 10}
    # a candidates list always takes the exact path
    listed, = await _recommend(service_settings(
        bundle=ann_bundle_path, redis_url=redis_url, **COVER),
        [{**body, "candidates": candidates}])
    assert listed["path"] == "exact"
    _same(listed, brute_force(ann_bundle, USER, CONTEXT, 10, exclude=set(USER["rated"]),
                              candidates=candidates))
    # defaults: 20 x 10 candidates are more than 5% of 200 movies, so exact
    default, = await _recommend(service_settings(bundle=ann_bundle_path, redis_url=redis_url),
                                [body])
    assert default["path"] == "exact"
    # a share just large enough without filters; a genre filter widens past it
    genre = ann_bundle.catalog.genre_names[0]
    narrow = {"ann_candidates": 2, "ann_max_share": 0.2}  # 2 x 10 + 4 rated = 24 <= 40
    plain, filtered = await _recommend(service_settings(
        bundle=ann_bundle_path, redis_url=redis_url, **narrow),
        [body, {**body, "genres": [genre]}])
    assert plain["path"] == "approximate"
    assert filtered["path"] == "exact"
    _same(filtered, brute_force(ann_bundle, USER, CONTEXT, 10, exclude=set(USER["rated"]),
                                genres=[genre]))
    off, = await _recommend(service_settings(
        bundle=ann_bundle_path, redis_url=redis_url, ann=False, **COVER), [body])
    assert off["path"] == "exact"
    _same(off, brute_force(ann_bundle, USER, CONTEXT, 10, exclude=set(USER["rated"])))


def _rehash(root: Path) -> None:
    (root / "model_id").write_text(content_hash(root) + "\n")


def _broken(source: Path, other: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Copies of an indexed bundle with a broken index, model_id recomputed (so only the
    index check can catch them), and the message each must be refused with."""
    out = {}

    def copy(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(source, path)
        return path

    index = ann.index_file("relevance")
    path = copy("missing")
    (path / index).unlink()
    _rehash(path)
    out["missing"] = (path, f"{index} is missing")
    path = copy("garbage")
    (path / index).write_bytes(b"not an index at all")
    _rehash(path)
    out["garbage"] = (path, "not a readable index")
    path = copy("flipped")  # one movie's stored vector changed: still a valid file
    data = bytearray((path / index).read_bytes())
    vector = ann.item_vectors(Bundle(source).heads["relevance"].items)[5].tobytes()
    at = bytes(data).find(vector)
    assert at > 0
    data[at:at + 4] = np.float32(123.0).tobytes()
    (path / index).write_bytes(bytes(data))
    _rehash(path)
    out["flipped"] = (path, "index of head relevance")
    path = copy("foreign")  # another model's rating index (its sums differ by the seed)
    shutil.copy(other / ann.index_file("rating"), path / ann.index_file("rating"))
    _rehash(path)
    out["foreign"] = (path, "does not hold this catalog's item vectors")
    path = copy("edited")  # no rehash: the content hash catches it
    (path / index).write_bytes(b"x" + (path / index).read_bytes()[1:])
    out["edited"] = (path, "does not match its model_id")
    return out


@pytest.fixture(scope="module")
def other_ann_path(tmp_path_factory: pytest.TempPathFactory,
                   small_data: tuple[Dataset, FeatureSpec]) -> Path:
    data, spec = small_data
    out = tmp_path_factory.mktemp("bundle") / "other-ann"
    fit_and_save(data, spec, TrainConfig(k=4, epochs=2, batch_size=512, learning_rate=0.02,
                                         members=1, seed=5), out, progress=False,
                 ann_threshold=1)
    return out


def test_broken_index_refuses_the_bundle(ann_bundle_path: Path, other_ann_path: Path,
                                         tmp_path: Path) -> None:
    for path, message in _broken(ann_bundle_path, other_ann_path, tmp_path).values():
        with pytest.raises(BundleError, match=re.escape(message)):
            Bundle(path)


def test_undeclared_index_is_refused(ann_bundle_path: Path, small_bundle_path: Path,
                                     tmp_path: Path) -> None:
    path = tmp_path / "undeclared"
    shutil.copytree(small_bundle_path, path)
    shutil.copy(ann_bundle_path / ann.index_file("rating"), path / ann.index_file("rating"))
    _rehash(path)
    with pytest.raises(BundleError, match=re.escape("metrics.json declares no index")):
        Bundle(path)


@pytest.mark.anyio
async def test_reload_to_a_broken_index_keeps_the_old_model(
        ann_bundle_path: Path, other_ann_path: Path, redis_url: str,
        tmp_path: Path) -> None:
    settings = service_settings(bundle=ann_bundle_path, redis_url=redis_url, **COVER)
    body = {"user": USER, "context": CONTEXT, "n": 10}
    async with serving(settings) as (_, client):
        before = (await client.post("/recommend", json=body)).json()
        for path, message in _broken(ann_bundle_path, other_ann_path, tmp_path).values():
            response = await client.post("/admin/reload", json={"bundle": str(path)})
            assert response.status_code == 422, response.text
            assert message in response.json()["detail"][0]["msg"]
            assert (await client.post("/recommend", json=body)).json() == before
        assert before["path"] == "approximate"


def test_synthetic_catalog_draws_movies_as_synthetic_does() -> None:
    """Ids 1..n, 1-3 distinct known genres (sorted), years 1930-1998, titles with the year;
    the same seed gives the same catalog."""
    from model.data.synthetic import GENRES, synthetic_catalog

    items = synthetic_catalog(5000, seed=3)
    assert list(items) == [str(i) for i in range(1, 5001)]
    genres = [m["genres"] for m in items.values()]
    assert all(1 <= len(g) <= 3 and g == sorted(set(g)) and set(g) <= set(GENRES)
               for g in genres)
    assert {len(g) for g in genres} == {1, 2, 3}
    years = np.array([m["year"] for m in items.values()])
    assert years.min() >= 1930 and years.max() <= 1998
    assert all(m["title"] == f"Movie {i} ({m['year']})" for i, m in items.items())
    assert synthetic_catalog(5000, seed=3) == items != synthetic_catalog(5000, seed=4)
