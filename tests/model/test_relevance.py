"""The relevance head: its ranking metrics, its loss's logits, and that the service ranks
with exactly the scores the offline evaluation ranks with."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.blocks import PER_BATCH, Block, Operand, encode_ratings
from model.bundle import Bundle
from model.data import Dataset, Ratings
from model.data.movielens import read_movielens
from model.evaluate import rank_bundle, ranking_metrics, ranking_summary
from model.features import FeatureMap, FeatureSpec
from model.relevance import (
    RelevanceConfig,
    RelevanceTrainer,
    catalog_payloads,
    head_spec,
    holdout,
    query_contexts,
    rank_fm,
    train_relevance,
)
from tests.support.api_client import load_users, service_settings, serving
from tests.support.redis_server import RedisServer
from tests.support.reference import fm_pairwise

pytestmark = pytest.mark.anyio


# --- metrics against hand-computed examples ----------------------------------------------

def test_ranking_metrics_by_hand() -> None:
    ranked = {"a": ["1", "2", "3"], "b": ["4", "5", "6"], "c": ["7"]}
    relevant = {"a": {"2", "3", "9"}, "b": {"4"}, "c": set(), "d": {"1"}}
    got = ranking_metrics(ranked, relevant, 3, popularity_rank={"1": 1, "2": 2, "4": 3,
                                                                "7": 7}, catalog_size=12)
    # a: hits at 2, 3 of 3 relevant; b: hit at 1 of 1; c: no relevant (skipped);
    # d: nothing ranked, 1 relevant
    d1, d2, d3 = 1.0, 1 / math.log2(3), 1 / math.log2(4)
    ndcg = [(d2 + d3) / (d1 + d2 + d3), 1.0, 0.0]
    ap = [(1 / 2 + 2 / 3) / 3, 1.0, 0.0]
    assert got["precision"] == pytest.approx(np.mean([2 / 3, 1 / 3, 0.0]))
    assert got["recall"] == pytest.approx(np.mean([2 / 3, 1.0, 0.0]))
    assert got["ndcg"] == pytest.approx(np.mean(ndcg))
    assert got["map"] == pytest.approx(np.mean(ap))
    assert got["users"] == 3
    assert got["coverage"] == pytest.approx(6 / 12)  # a, b and d's lists: 1..6
    assert got["popularity_rank"] == pytest.approx(np.mean([1, 2, 3]))  # known ranks only
    with pytest.raises(ValueError, match="no user"):
        ranking_metrics(ranked, {"a": set()}, 3)


def test_ranking_summary_splits_all_and_good() -> None:
    users = np.array(["u", "u", "v"], dtype=object)
    data = Dataset("t", {}, {m: {} for m in "xyz"},
                   Ratings(np.array(["u", "v", "v"], dtype=object),
                           np.array(["x", "x", "y"], dtype=object),
                           np.ones(3, np.float32), np.zeros(3, np.int64)),
                   Ratings(users, np.array(["y", "z", "z"], dtype=object),
                           np.array([5.0, 2.0, 4.0], np.float32), np.zeros(3, np.int64)))
    got = ranking_summary({"u": ["z", "y"], "v": ["z"]}, data, n=2)
    assert got["all"]["precision"] == pytest.approx(np.mean([1.0, 0.5]))
    assert got["good"]["precision"] == pytest.approx(np.mean([0.5, 0.5]))  # u: y; v: z
    assert got["all"]["popularity_rank"] == pytest.approx(2.0)  # y: rank 2 (x first)


# --- the loss's logits are FM scores minus what the movies share -------------------------

def test_logits_are_fm_score_differences(small_data: tuple[Dataset, FeatureSpec]) -> None:
    """For one rating, logit(j) - logit(j') == FM(user - own movie, ctx, j) - FM(..., j')
    by the pairwise definition, for every pair of catalog movies."""
    data, spec = small_data
    spec = spec.fit_numeric("context", {"time": data.train.timestamp.tolist()})
    config = RelevanceConfig(k=3, init_std=0.3, fields=(
        "user.id", "user.rated", "user.age", "item.id", "item.genres", "context.last_movie"))
    fmap = FeatureMap(head_spec(spec, config.fields))
    ids, payloads = catalog_payloads(data, data.train)
    events = data.train.subset(np.arange(5))
    encoded = encode_ratings(fmap, data, events, data.train)
    items = fmap.encode("item", payloads)
    columns = np.union1d(np.concatenate([encoded.users.indices, encoded.contexts.indices]),
                         items.indices)
    trainer = RelevanceTrainer(columns, spec.n_features, config, items,
                               np.ones(len(ids), np.int64))
    data_c = encoded.remap(columns)
    batch = data_c.batch(np.arange(len(data_c)))
    a = trainer.query(batch.users, Block(*batch.contexts), Block(*batch.left_out),
                      batch.row_user).numpy()
    item_s, item_b = (t.numpy() for t in trainer.item_sums())
    logits = a @ item_s.T + item_b
    w, V = trainer.fm.w.numpy(), trainer.fm.V.numpy()
    for r in range(len(events)):
        user = data_c.users.take([data_c.row_user[r]])
        own = data_c.left_out.take([r])
        ctx = data_c.contexts.take([r])
        scores = []
        for j in (0, 3, 7):
            item = items.remap(columns).take([j])
            idx = np.concatenate([user.indices, own.indices, ctx.indices, item.indices])
            val = np.concatenate([user.values, -own.values, ctx.values, item.values])
            scores.append(fm_pairwise(0.0, w, V, idx, val))
        assert logits[r, 3] - logits[r, 0] == pytest.approx(scores[1] - scores[0], abs=1e-4)
        assert logits[r, 7] - logits[r, 0] == pytest.approx(scores[2] - scores[0], abs=1e-4)


def test_head_cannot_read_item_raters(small_data: tuple[Dataset, FeatureSpec]) -> None:
    _, spec = small_data
    with pytest.raises(ValueError, match="raters"):
        head_spec(spec, ("user.id", "item.id", "item.raters"))
    with pytest.raises(ValueError, match="not in the feature spec"):
        head_spec(spec, ("user.id", "item.colour"))


def test_holdout_takes_the_same_number_from_every_user() -> None:
    users = np.array(["a"] * 20 + ["b"] * 12 + ["c"] * 5, dtype=object)
    ratings = Ratings(users, np.arange(37).astype(str).astype(object), np.ones(37, np.float32),
                      np.arange(37, dtype=np.int64))
    fit, held = holdout(ratings, 3, seed=1)
    assert sorted(held.user.tolist()) == ["a"] * 3 + ["b"] * 3  # c has too few
    assert len(fit) + len(held) == 37
    assert not set(fit.item.tolist()) & set(held.item.tolist())


# --- offline ranking == bundle ranking == /recommend ----------------------------------------

def test_rank_fm_equals_the_bundle_engines(small_bundle: Bundle,
                                           small_data: tuple[Dataset, FeatureSpec]) -> None:
    """The offline ranking (raw weights, numpy) and the bundle's top_n agree for both
    heads: same movies, or ties of equal score."""
    data, _ = small_data
    for head in small_bundle.heads.values():
        fm = getattr(small_bundle.model, head.name).fm
        offline = rank_fm(fm, head.fmap, data)
        served = rank_bundle(small_bundle, data, head.name)
        assert offline.keys() == served.keys()
        contexts = query_contexts(data.train)
        for user in list(offline)[:20]:
            if offline[user] == served[user]:
                continue
            from tests.support.api_client import full_payload, head_scores

            scores = head_scores(small_bundle, full_payload(data, user), contexts[user],
                                 head.name)
            rows = [small_bundle.catalog.row(m) for m in offline[user] + served[user]]
            mine, theirs = np.split(scores[rows], 2)
            np.testing.assert_allclose(mine, theirs, atol=1e-5)


async def test_recommend_ranks_as_the_offline_evaluation(
        small_bundle_path: Path, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        redis_server: RedisServer) -> None:
    """/recommend by id, with the context `rank_bundle` uses, answers exactly the lists
    and scores the offline evaluation ranks (for the relevance head, the default)."""
    data, _ = small_data
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    await load_users(settings, data)
    offline = rank_bundle(small_bundle, data, "relevance", n=10)
    contexts = query_contexts(data.train)
    async with serving(settings) as (_, client):
        for user in sorted(offline)[:15]:
            context = {"time": contexts[user]["time"],
                       "last_movie": contexts[user]["last_movie"]}
            response = await client.post("/recommend", json={
                "user": {"id": user}, "context": context, "n": 10})
            assert response.status_code == 200, response.text
            assert [i["movie_id"] for i in response.json()["items"]] == offline[user]


# --- on MovieLens: the head learns what people watch -----------------------------------------

def test_relevance_head_beats_most_rated_on_ml100k(ml100k_dir: Path) -> None:
    """Three epochs of the default head rank ua.test better than the most-rated list
    (NDCG@10 0.133 on this protocol), where the rating head ranks far below it."""
    data = read_movielens(ml100k_dir, "ua")
    from model.features import movielens_spec

    spec = movielens_spec().fit_numeric("context", {"time": data.train.timestamp.tolist()})
    config = replace(RelevanceConfig(), epochs=3, validation_per_user=0)
    result = train_relevance(data, spec, config, progress=False)
    ranked = rank_fm(result.model, FeatureMap(head_spec(spec, config.fields)), data)
    counts = np.unique(data.train.item.astype(str), return_counts=True)
    popular = [m for _, m in sorted(zip(-counts[1], counts[0], strict=True))]
    rated: dict[str, set[str]] = {}
    for u, m in zip(data.train.user.tolist(), data.train.item.tolist(), strict=True):
        rated.setdefault(u, set()).add(m)
    most_rated = {u: [m for m in popular if m not in rated.get(u, set())][:10] for u in ranked}
    ndcg = ranking_summary(ranked, data)["all"]["ndcg"]
    assert ndcg > 1.5 * ranking_summary(most_rated, data)["all"]["ndcg"]
    assert len(result.history) == 3


def test_sampled_softmax_batches_keep_positives_and_mask_only_rated(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """Past max_softmax_items the softmax runs over the batch's targets plus a sample:
    every target is a column, logQ is log(p * negatives), and the masked pairs are
    exactly the rated movies among the columns, never the row's own target."""
    from model.relevance import _batch_args, _events

    data, spec = small_data
    config = RelevanceConfig(k=2, max_softmax_items=10, sampled_negatives=15,
                             user_weight_power=0.5, fields=("user.id", "user.rated", "item.id"))
    fmap = FeatureMap(head_spec(spec, config.fields))
    ids, payloads = catalog_payloads(data, data.train)
    catalog = {m: n for n, m in enumerate(ids)}
    items = fmap.encode("item", payloads)
    events, columns = _events(fmap, data, data.train, config, catalog, items)
    trainer = RelevanceTrainer(columns, spec.n_features, config, items,
                               np.bincount(events.target, minlength=len(ids)))
    assert trainer.sampled
    users = sorted(set(data.train.user.astype(str).tolist()))
    rated, target, encoded = events.rated, events.target, events.data
    rows = np.arange(40)
    args = _batch_args(trainer, events, rows, PER_BATCH, np.random.default_rng(0))
    _, _, _, row_user, column_of_target, masked, candidates, log_q, weight = args
    n_user = np.bincount(encoded.row_user)[encoded.row_user[rows]]
    np.testing.assert_allclose(weight, n_user**-0.5 / np.sum(n_user**-0.5), rtol=1e-5)
    assert candidates[column_of_target].tolist() == target[rows].tolist()
    np.testing.assert_allclose(log_q, np.log(trainer.sample_p[candidates] * 15), rtol=1e-6)
    per_user = {u: set(rated.indices[rated.indptr[n]:rated.indptr[n + 1]].tolist())
                for n, u in enumerate(users)}
    row_users = np.unique(encoded.row_user[rows])[row_user]
    want = {(r, c) for r in range(len(rows)) for c, movie in enumerate(candidates)
            if movie in per_user[users[row_users[r]]] and movie != target[rows][r]}
    assert masked.shape == (len(rows), len(candidates))
    assert {tuple(p) for p in np.argwhere(masked).tolist()} == want
    loss = float(trainer.step(*args))
    assert np.isfinite(loss)


# --- history dropout, refit ----------------------------------------------------------------

def _small_events(small_data: tuple[Dataset, FeatureSpec], config: RelevanceConfig
                  ) -> tuple[Any, RelevanceTrainer]:
    from model.relevance import _events

    data, spec = small_data
    fmap = FeatureMap(head_spec(spec, config.fields))
    ids, payloads = catalog_payloads(data, data.train)
    catalog = {m: n for n, m in enumerate(ids)}
    items = fmap.encode("item", payloads)
    events, columns = _events(fmap, data, data.train, config, catalog, items)
    return events, RelevanceTrainer(columns, spec.n_features, config, items,
                                    np.bincount(events.target, minlength=len(ids)))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_step_loss_is_the_weighted_cross_entropy_of_scores_over_temperature(
        small_data: tuple[Dataset, FeatureSpec], temperature: float) -> None:
    """The loss a step reports (before it updates) is, in NumPy, sum_e weight_e *
    -log softmax((a_e . s_j + b_j) / T) at the event's movie, its user's other rated
    movies left out of the softmax."""
    from model.relevance import _batch_args

    config = RelevanceConfig(k=3, init_std=0.3, new_user_share=0.0, average=0.0,
                             temperature=temperature, fields=("user.id", "user.rated", "item.id"))
    events, trainer = _small_events(small_data, config)
    rows = np.arange(40)
    args = _batch_args(trainer, events, rows, PER_BATCH, np.random.default_rng(0))
    users, contexts, left_out, row_user, target, masked, _, _, weight = args
    a = trainer.query(Operand(*users), Block(*contexts), Block(*left_out), row_user).numpy()
    item_s, item_b = (t.numpy().astype(np.float64) for t in trainer.item_sums())
    logits = (a @ item_s.T + item_b) / temperature
    logits[masked] = -np.inf
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                            keepdims=True)) - logits.max(1, keepdims=True)
    expected = -(weight * log_p[np.arange(len(rows)), target]).sum()
    assert float(trainer.step(*args)) == pytest.approx(expected, rel=1e-4)


def test_temperature_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            RelevanceConfig(temperature=bad)


def test_history_dropout_query_is_the_kept_movies_scaled(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """With dropout rate r an event's query is user id + 1/(1-r) * the kept other movies'
    weighted factors (by the slow sum over the movies kept), so its expectation is the
    full query; the event's own movie is never in it; at r = 0 nothing changes."""
    from model.relevance import _batch_args, history_dropout

    rate = 0.4
    config = RelevanceConfig(k=3, init_std=0.3, history_dropout=rate, new_user_share=0.0,
                             fields=("user.id", "user.rated", "item.id"))
    events, trainer = _small_events(small_data, config)
    rows = np.arange(0, 3000, 37)
    dropped = history_dropout(events, rows, rate, np.random.default_rng(3))
    args = _batch_args(trainer, events, rows, PER_BATCH, np.random.default_rng(3))
    a = trainer.query(Operand(*args[0]), Block(*args[1]), Block(*args[2]), args[3]).numpy()
    V, users, history = trainer.fm.V.numpy(), events.data.users, events.history
    n_dropped = n_kept = 0
    for r, event in enumerate(rows):
        user = events.data.row_user[event]
        id_cols = np.setdiff1d(users.indices[users.indptr[user]:users.indptr[user + 1]],
                               history.indices[history.indptr[user]:history.indptr[user + 1]])
        own = events.movie_column[events.target[event]]
        mine = history.indices[history.indptr[user]:history.indptr[user + 1]]
        x = history.values[history.indptr[user]]  # 1/sqrt(n): one weight per user
        span = slice(dropped.indptr[r], dropped.indptr[r + 1])
        out, values = dropped.indices[span], dropped.values[span]
        assert sorted(out.tolist()) == sorted(mine[mine != own].tolist())
        kept = out[values < 0]
        np.testing.assert_allclose(values[values < 0], -x * rate / (1 - rate), rtol=1e-6)
        np.testing.assert_allclose(values[values > 0], x, rtol=1e-6)
        n_kept, n_dropped = n_kept + len(kept), n_dropped + len(out) - len(kept)
        # a movie rated twice (the synthetic data has some) keeps its second occurrence
        want = (V[id_cols].sum(axis=0) + V[kept].sum(axis=0) * x / (1 - rate)
                + (np.sum(mine == own) - 1) * V[own] * x)
        np.testing.assert_allclose(a[r], want, atol=1e-5)
    assert abs(n_dropped / (n_dropped + n_kept) - rate) < 0.05
    plain = _batch_args(_small_events(small_data, replace(config, history_dropout=0.0))[1],
                        events, rows, PER_BATCH, np.random.default_rng(3))
    own_only = events.data.left_out.take(rows)
    np.testing.assert_array_equal(plain[2][1], own_only.indices)
    np.testing.assert_array_equal(plain[2][2], own_only.values)


def test_query_from_the_whole_users_equals_the_batchs_own(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """Every user computed once (`wide_sides`) or the batch's distinct users: the same
    query for every event."""
    from model.batch_sums import wide_sides
    from model.relevance import _batch_args

    config = RelevanceConfig(k=3, init_std=0.3, new_user_share=0.0,
                             fields=("user.id", "user.rated", "item.id"))
    events, trainer = _small_events(small_data, config)
    sides = wide_sides(events.data, len(events.data))
    assert sides.users is not None
    rows = np.arange(0, 3000, 37)
    queries = []
    for how in (PER_BATCH, sides):
        args = _batch_args(trainer, events, rows, how, np.random.default_rng(3))
        queries.append(trainer.query(Operand(*args[0]), Block(*args[1]), Block(*args[2]),
                                     args[3]).numpy())
    assert queries[0].shape == (len(rows), 3) and np.abs(queries[0]).max() > 0.1
    np.testing.assert_allclose(queries[1], queries[0], atol=1e-5)


def test_new_user_query_is_a_few_of_the_other_movies_without_the_id(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """An event drawn (chance `share`) gets the query of a new user who sent m of its other
    movies, 1 <= m <= max_rated: no user id, each kept movie weighted 1/sqrt(m) as a
    history of m, plus the history-size token of m (the slow sum over the kept movies and
    that token), its own movie never among them. Events not drawn keep the full query."""
    from model.relevance import _batch_args, new_user_queries

    share, longest = 0.5, 4
    config = RelevanceConfig(k=3, init_std=0.3, new_user_share=share,
                             new_user_max_rated=longest,
                             fields=("user.id", "user.rated", "item.id", "user.history_size"))
    events, trainer = _small_events(small_data, config)
    size_field = next(f for f in small_data[1].fields if f.kind == "size")
    size_column = {m: _column(trainer, size_field.token(size_field.size_value(m)))
                   for m in range(1, longest + 1)}
    rows = np.arange(0, 3000, 37)
    changed = new_user_queries(events, rows, share, longest, np.random.default_rng(3))
    args = _batch_args(trainer, events, rows, PER_BATCH, np.random.default_rng(3))
    a = trainer.query(Operand(*args[0]), Block(*args[1]), Block(*args[2]), args[3]).numpy()
    full = trainer.query(Operand(*args[0]), Block(*args[1]),
                         Block.of(events.data.left_out.take(rows)), args[3]).numpy()
    V, users, history = trainer.fm.V.numpy(), events.data.users, events.history
    sizes = []
    for r, event in enumerate(rows):
        span = slice(changed.indptr[r], changed.indptr[r + 1])
        out, values = changed.indices[span], changed.values[span]
        if not len(out):
            np.testing.assert_allclose(a[r], full[r], atol=1e-6)
            continue
        user = events.data.row_user[event]
        mine = history.indices[history.indptr[user]:history.indptr[user + 1]]
        own = events.movie_column[events.target[event]]
        profile = np.setdiff1d(users.indices[users.indptr[user]:users.indptr[user + 1]], mine)
        kept = out[(values < 0) & np.isin(out, mine)]
        assert set(profile.tolist()) <= set(out[values > 0].tolist()) and own not in kept
        assert 1 <= len(kept) <= min(longest, np.sum(mine != own))
        assert set(kept.tolist()) <= set(mine[mine != own].tolist())
        token = size_column[len(kept)]
        np.testing.assert_allclose(a[r], V[kept].sum(axis=0) / np.sqrt(len(kept)) + V[token],
                                   atol=1e-5)
        sizes.append(len(kept))
    assert 0.35 < len(sizes) / len(rows) < 0.65 and len(set(sizes)) > 1
    with pytest.raises(ValueError, match="choose one"):
        replace(config, history_dropout=0.2)


def _column(trainer: RelevanceTrainer, token: str) -> int:
    """The trainer's compact column of a feature token."""
    from model.features import feature_hash

    hashed = feature_hash(token, int(np.log2(trainer.n_features)))
    (at,) = np.flatnonzero(trainer.columns == hashed)
    return int(at)


def test_refit_retrains_on_every_rating_for_the_best_epoch_count(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """With refit the early-stopped epoch count is spent again on all training ratings
    (the holdout included): the same head as training on them without a holdout."""
    data, spec = small_data
    config = RelevanceConfig(k=4, epochs=4, patience=4, refit=True, learning_rate=0.02,
                             validation_per_user=2)
    result = train_relevance(data, spec, config, progress=False)
    stopped = [row for row in result.history if "refit" not in row]
    refit = [row for row in result.history if "refit" in row]
    assert len(stopped) == 4 and 1 <= result.best_epoch <= 4
    assert len(refit) == result.best_epoch
    # the refit is the head trained on every rating for that many epochs, no holdout
    direct = train_relevance(data, spec, replace(config, refit=False, validation_per_user=0,
                                                 epochs=result.best_epoch), progress=False)
    assert len(direct.history) == result.best_epoch
    np.testing.assert_allclose(result.model.V.numpy(), direct.model.V.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.model.w.numpy(), direct.model.w.numpy(), atol=1e-5)


def test_average_is_the_debiased_moving_average_of_the_steps(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """With `average` = d, what is validated and exported is avg_t = (1 - d) sum_s d^(t-s)
    w_s / (1 - d^t) over the weights after each step (the slow sum), not the last step."""
    from model.relevance import _batch_args

    decay = 0.7
    config = RelevanceConfig(k=3, init_std=0.3, average=decay, learning_rate=0.05,
                             fields=("user.id", "user.rated", "item.id"))
    events, trainer = _small_events(small_data, config)
    rng = np.random.default_rng(0)
    steps = []
    for start in (0, 500, 1000, 1500):
        trainer.step(*_batch_args(trainer, events, np.arange(start, start + 400), PER_BATCH, rng))
        steps.append((trainer.fm.w.numpy().copy(), trainer.fm.V.numpy().copy()))
    t = len(steps)
    weights = np.array([(1 - decay) * decay ** (t - 1 - s) for s in range(t)]) / (1 - decay**t)
    for got, part in zip(trainer.snapshot(), (0, 1), strict=True):
        want = sum(wt * step[part] for wt, step in zip(weights, steps, strict=True))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(trainer.snapshot()[1], steps[-1][1], atol=1e-4)
    exported = trainer.export()
    np.testing.assert_allclose(exported.V.numpy()[trainer.columns], trainer.snapshot()[1],
                               atol=1e-7)
