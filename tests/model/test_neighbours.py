"""The rating head's neighbourhood (model/neighbours.py): its similarities and its
correction against slow, obvious references, the residuals it is fitted on, and the
bundle that carries it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.blocks import encode_ratings, user_histories, user_stars
from model.bundle import Bundle, BundleError, content_hash
from model.data import Dataset
from model.features import FeatureMap, FeatureSpec
from model.neighbours import NeighbourConfig, Neighbours, fit_neighbours, pair_terms
from model.pipeline import fit
from model.train import TrainConfig
from tests.support.reference import fm_pairwise


def _slow_similarity(users: np.ndarray, rows: np.ndarray, values: np.ndarray,
                     n_movies: int, shrink: float) -> np.ndarray:
    """s_ij by its definition: the shrunk positive correlation over co-raters."""
    x = {(u, r): v for u, r, v in zip(users.tolist(), rows.tolist(), values.tolist(),
                                      strict=True)}
    raters = {r: {u for u, rr in x if rr == r} for r in range(n_movies)}
    s = np.zeros((n_movies, n_movies))
    for i in range(n_movies):
        for j in range(n_movies):
            both = raters[i] & raters[j]
            if i == j or not both:
                continue
            num = sum(x[u, i] * x[u, j] for u in both)
            den = np.sqrt(sum(x[u, i] ** 2 for u in both) * sum(x[u, j] ** 2 for u in both))
            s[i, j] = max(num / den, 0.0) * len(both) / (len(both) + shrink)
    return s


def _slow_term(nb: Neighbours, target: int, rated: list[int], residuals: list[float]
               ) -> float:
    """alpha * sum s e / (lam + sum s) over the k most similar rated stored neighbours."""
    if target < 0:
        return 0.0
    e = dict(zip(rated, residuals, strict=True))  # a movie rated twice: the last
    found = [(s, e[r]) for r, s in zip(nb.rows[target].tolist(), nb.sims[target].tolist(),
                                       strict=True) if r in e]
    found = sorted(found, key=lambda se: -se[0])[:nb.k]
    return nb.alpha * sum(s * v for s, v in found) / (nb.lam + sum(s for s, _ in found))


def _ratings(seed: int, n_users: int = 12, n_movies: int = 9, n: int = 60
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cells = rng.choice(n_users * n_movies, size=n, replace=False)
    return cells // n_movies, cells % n_movies, rng.normal(size=n)


@pytest.mark.parametrize("per_movie", [3, 100])
def test_each_movie_keeps_its_most_similar_movies(per_movie: int) -> None:
    users, rows, values = _ratings(0)
    nb = fit_neighbours(users, rows, values, 9, NeighbourConfig(shrink=2.0,
                                                                per_movie=per_movie))
    slow = _slow_similarity(users, rows, values, 9, 2.0)
    assert nb.rows.shape == (9, min(per_movie, 8))
    for i in range(9):
        expect = [j for j in np.argsort(-slow[i], kind="stable") if slow[i, j] > 0]
        expect = expect[:nb.rows.shape[1]]
        got = [int(r) for r in nb.rows[i] if r >= 0]
        assert got == expect
        np.testing.assert_allclose(nb.sims[i, :len(got)], slow[i, expect], rtol=1e-6)
        assert (nb.sims[i, len(got):] == 0).all() and (nb.rows[i, len(got):] == -1).all()
    assert (nb.rows >= 0).sum() > 20  # the data has neighbours to check


def test_a_pair_rated_twice_counts_its_last_rating() -> None:
    users, rows, values = _ratings(1)
    config = NeighbourConfig(shrink=2.0)
    once = fit_neighbours(users, rows, values, 9, config)
    twice = fit_neighbours(np.r_[users[:5], users], np.r_[rows[:5], rows],
                           np.r_[values[:5] + 7.0, values], 9, config)
    np.testing.assert_array_equal(twice.rows, once.rows)
    np.testing.assert_allclose(twice.sims, once.sims, rtol=1e-6)


def test_term_reads_the_k_most_similar_rated_neighbours() -> None:
    rng = np.random.default_rng(2)
    n = 12
    order = np.argsort(-rng.uniform(size=(n, 8)), axis=1)
    rows = np.array([[r for r in np.random.default_rng(i).permutation(n) if r != i][:8]
                     for i in range(n)], dtype=np.int32)
    rows = np.take_along_axis(rows, order, axis=1)
    sims = -np.sort(-rng.uniform(0.1, 1.0, size=(n, 8)), axis=1).astype(np.float32)
    rows[:, 6:], sims[:, 6:] = -1, 0.0  # padding
    nb = Neighbours(rows, sims, k=3, lam=0.5, alpha=0.8)
    rated = [0, 2, 3, 5, 7, 8, 10, 3]  # 3 twice: the last residual counts
    residuals = rng.normal(size=len(rated)).tolist()
    targets = np.array([1, 4, 6, -1, 11, 2])
    got = nb.term(targets, np.array(rated), np.array(residuals))
    expect = [_slow_term(nb, int(t), rated, residuals) for t in targets]
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-15)
    assert np.count_nonzero(got) >= 4
    by_row = dict(zip(rated, residuals, strict=True))  # the last of a repeated movie
    np.testing.assert_allclose([nb.term_of(int(t), by_row) for t in targets], expect,
                               rtol=1e-12, atol=1e-15)
    for t in (1, 4, 11):
        used, parts = nb.contributions(t, np.array(rated), np.array(residuals))
        assert parts.sum() == pytest.approx(nb.term(np.array([t]), np.array(rated),
                                                    np.array(residuals))[0], abs=1e-12)
        assert len(used) <= nb.k and set(used.tolist()) <= set(rated)
    assert (nb.term(targets, np.zeros(0, np.int64), np.zeros(0)) == 0).all()


def test_pair_terms_read_each_user_s_own_history() -> None:
    users, rows, values = _ratings(3)
    nb = fit_neighbours(users, rows, values, 9, NeighbourConfig(shrink=1.0, k=2))
    pair_user, pair_row = np.array([0, 5, 0, 11, 99]), np.array([1, 2, 8, 0, 3])
    got = pair_terms(nb, pair_user, pair_row, users, rows, values)
    for n, (u, r) in enumerate(zip(pair_user, pair_row, strict=True)):
        mine = users == u
        assert got[n] == pytest.approx(_slow_term(nb, int(r), rows[mine].tolist(),
                                                  values[mine].tolist()), abs=1e-12)
    assert got[-1] == 0  # a user with no history


@pytest.fixture(scope="module")
def fitted(small_data: tuple[Dataset, FeatureSpec]) -> tuple[Dataset, object]:
    data, spec = small_data
    return data, fit(data, spec, TrainConfig(k=4, epochs=3, batch_size=512,
                                             learning_rate=0.02), progress=False)


def test_fitted_on_the_fm_residuals_of_user_and_movie_sums_alone(fitted: tuple) -> None:
    """The residuals are the exported FM's score of the user's and the movie's features
    only (the pairwise FM of that row): what the service computes from cached sums."""
    data, report = fitted
    fmap = FeatureMap(report.metrics["spec"].rating_fields())
    fm = report.results[0].trainer.export()
    w0, w, V = float(fm.w0.numpy()), fm.w.numpy().astype(np.float64), fm.V.numpy().astype(
        np.float64)
    enc = encode_ratings(fmap, data, data.train, data.train)
    catalog = sorted(data.items)
    rows = np.array([catalog.index(m) for m in data.train.item])
    residuals = np.empty(len(enc))
    for n in range(len(enc)):
        blocks = ((enc.users, enc.row_user[n]), (enc.items, enc.row_item[n]))
        idx = np.concatenate([b.indices[b.indptr[r]:b.indptr[r + 1]] for b, r in blocks])
        val = np.concatenate([b.values[b.indptr[r]:b.indptr[r + 1]] for b, r in blocks]
                             ).astype(np.float64)
        vx = V[idx] * val[:, None]  # the O(pk) form, checked against the pairwise FM below
        score = w0 + w[idx] @ val + 0.5 * (np.square(vx.sum(0)).sum() - np.square(vx).sum())
        if n % 400 == 0:
            assert score == pytest.approx(fm_pairwise(w0, w, V, idx, val), abs=1e-9)
        residuals[n] = data.train.rating[n] - score
    expect = fit_neighbours(data.train.user, rows, residuals, len(catalog), NeighbourConfig())
    assert report.neighbours is not None
    assert expect.rows.shape[1] == len(catalog) - 1  # every pair kept: a full reference
    for i in range(len(catalog)):  # each stored pair's similarity (ties may swap places)
        full = dict(zip(expect.rows[i].tolist(), expect.sims[i].tolist(), strict=True))
        got = [(r, v) for r, v in zip(report.neighbours.rows[i].tolist(),
                                      report.neighbours.sims[i].tolist(), strict=True) if r >= 0]
        assert len(got) == sum(r >= 0 for r in expect.rows[i])
        assert all(abs(full.get(r, 0.0) - v) < 2e-4 for r, v in got)
    # and the reported RMSE is the FM's plus this correction
    assert report.metrics["test_rmse"] != report.metrics["test_rmse_fm"]


def test_off_leaves_the_fm_alone(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    report = fit(data, spec, TrainConfig(k=4, epochs=2, batch_size=512, learning_rate=0.02,
                                         neighbours=None), progress=False, refit=False)
    assert report.neighbours is None
    assert report.metrics["test_rmse"] == report.metrics["test_rmse_fm"]


def test_bundle_corrects_with_its_stored_neighbours(small_bundle: Bundle,
                                                    small_data: tuple[Dataset, FeatureSpec]
                                                    ) -> None:
    """Bundle.predict, the reference every API test uses, is the FM's score plus the
    correction from the residuals of the user's starred history."""
    data, _ = small_data
    nb = small_bundle.neighbours
    assert nb is not None and nb.rows.shape[0] == len(small_bundle.catalog)
    rated, stars = user_histories(data.train), user_stars(data.train)
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:40]]
    checked = 0
    for uid in ("1", "7", "33"):
        payload = {"id": uid, **data.users.get(uid, {}), "rated": rated[uid],
                   "rated_stars": [[m, s] for m, s in zip(rated[uid], stars[uid], strict=True)]}
        fm = small_bundle.scores(payload, movies)
        own = [small_bundle.catalog.row(m) for m in rated[uid]]
        fm_own = small_bundle.scores(payload, [{"id": m} for m in rated[uid]])
        residuals = (np.array(stars[uid]) - fm_own).tolist()
        expect = [_slow_term(nb, r, own, residuals) for r in range(40)]  # type: ignore[arg-type]
        np.testing.assert_allclose(small_bundle.predict(payload, movies),
                                   small_bundle.clip(fm + np.array(expect)), atol=1e-5)
        checked += int(np.count_nonzero(expect))
        # a movie rated without stars (an inline bare id) has no residual: no neighbour
        half = {**payload, "rated_stars": [[m, s if n % 2 else None] for n, (m, s)
                                           in enumerate(payload["rated_stars"])]}
        starred = [n for n in range(len(own)) if n % 2]
        fm_half = small_bundle.scores(half, [{"id": m} for m in rated[uid]])  # its own sums
        np.testing.assert_allclose(
            small_bundle.neighbour_correction(half, movies),
            [_slow_term(nb, r, [own[n] for n in starred],  # type: ignore[misc]
                        [stars[uid][n] - fm_half[n] for n in starred]) for r in range(40)],
            atol=1e-5)
        # without stars there are no residuals: the FM alone
        bare = {k: v for k, v in payload.items() if k != "rated_stars"}
        np.testing.assert_allclose(small_bundle.predict(bare, movies),
                                   small_bundle.clip(small_bundle.scores(bare, movies)),
                                   atol=1e-6)
    assert checked > 20


def _with_neighbours(source: Path, target: Path, rows: np.ndarray | None = None,
                     sims: np.ndarray | None = None, described: object = "keep",
                     drop_file: bool = False) -> Path:
    shutil.copytree(source, target)
    with np.load(target / "neighbours.npz") as z:
        arrays = {"rows": z["rows"] if rows is None else rows,
                  "sims": z["sims"] if sims is None else sims}
    if drop_file:
        (target / "neighbours.npz").unlink()
    else:
        np.savez(target / "neighbours.npz", **arrays)
    meta = json.loads((target / "metrics.json").read_text())
    if described != "keep":
        meta["neighbours"] = described
    (target / "metrics.json").write_text(json.dumps(meta))
    (target / "model_id").write_text(content_hash(target) + "\n")
    return target


def test_broken_neighbours_are_refused_by_name(small_bundle_path: Path, small_bundle: Bundle,
                                               tmp_path: Path) -> None:
    nb = small_bundle.neighbours
    assert nb is not None
    outside, negative = nb.rows.copy(), nb.sims.copy()
    outside[0, 0] = len(small_bundle.catalog)
    negative[1, 0] = -0.5
    cases = {"outside": {"rows": outside}, "negative": {"sims": negative},
             "short": {"rows": nb.rows[:-1], "sims": nb.sims[:-1]},
             "nan": {"sims": np.full_like(nb.sims, np.nan)},
             "k": {"described": {"k": 0, "lam": 3.0, "alpha": 1.0}},
             "missing-key": {"described": {"lam": 3.0}},
             "no-file": {"drop_file": True}}
    for name, change in cases.items():
        bad = _with_neighbours(small_bundle_path, tmp_path / name, **change)  # type: ignore[arg-type]
        with pytest.raises(BundleError, match="neighbours"):
            Bundle(bad)
    plain = _with_neighbours(small_bundle_path, tmp_path / "none", described=None)
    assert Bundle(plain).neighbours is None
