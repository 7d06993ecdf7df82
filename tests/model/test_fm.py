"""The side-sum FM against the pairwise definition, on random sparse rows."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.fm import FactorizationMachine, SideSums, item_bias
from tests.support.reference import fm_pairwise

N_FEATURES, K = 50, 5


@pytest.fixture()
def fm() -> FactorizationMachine:
    rng = np.random.default_rng(1)
    model = FactorizationMachine(N_FEATURES, K, seed=3)
    model.w0.assign(0.7)
    model.w.assign(rng.normal(size=N_FEATURES).astype(np.float32))
    model.V.assign(rng.normal(size=(N_FEATURES, K)).astype(np.float32))
    return model


def random_rows(rng: np.random.Generator, n_rows: int, max_nnz: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows with repeated indices allowed (hash collisions are occurrences too)."""
    rows = []
    for _ in range(n_rows):
        nnz = int(rng.integers(0, max_nnz + 1))
        rows.append((rng.integers(0, N_FEATURES, nnz).astype(np.int32),
                     rng.normal(size=nnz).astype(np.float32)))
    return rows


def sums_of(fm: FactorizationMachine, rows: list[tuple[np.ndarray, np.ndarray]]) -> SideSums:
    row_ids = np.concatenate([np.full(len(i), n, np.int32) for n, (i, _) in enumerate(rows)])
    return fm.side_sums(tf.constant(row_ids), tf.constant(np.concatenate([i for i, _ in rows])),
                        tf.constant(np.concatenate([v for _, v in rows])),
                        tf.constant(len(rows), tf.int32))


def test_score_equals_pairwise_definition(fm: FactorizationMachine) -> None:
    rows = random_rows(np.random.default_rng(0), 40, 12)
    fast = fm.score(sums_of(fm, rows)).numpy()
    slow = [fm_pairwise(0.7, fm.w.numpy(), fm.V.numpy(), i, v) for i, v in rows]
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)


def test_split_by_side_equals_whole_row(fm: FactorizationMachine) -> None:
    """y(user | item | context) from three blocks' sums == y of the concatenated row."""
    rng = np.random.default_rng(2)
    user, item, ctx = (random_rows(rng, 25, 6) for _ in range(3))
    split = fm.score(sums_of(fm, user) + sums_of(fm, item) + sums_of(fm, ctx)).numpy()
    whole = [fm_pairwise(0.7, fm.w.numpy(), fm.V.numpy(), np.concatenate([u[0], i[0], c[0]]),
                         np.concatenate([u[1], i[1], c[1]]))
             for u, i, c in zip(user, item, ctx, strict=True)]
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-4)


def test_query_item_decomposition_ranks_like_full_score(fm: FactorizationMachine) -> None:
    """w0 + bias(query) + bias(item) + <s_q, s_i> is the full score (the /recommend form)."""
    rng = np.random.default_rng(4)
    query, items = sums_of(fm, random_rows(rng, 1, 8)), sums_of(fm, random_rows(rng, 30, 5))
    full = fm.score(query.gather(tf.zeros(30, tf.int32)) + items).numpy()
    q_bias = (query.L + 0.5 * (tf.reduce_sum(query.s**2, 1) - query.q)).numpy()
    fast = 0.7 + q_bias + item_bias(items).numpy() + (items.s.numpy() @ query.s.numpy()[0])
    np.testing.assert_allclose(fast, full, rtol=1e-4, atol=1e-4)


def test_empty_row_scores_global_bias(fm: FactorizationMachine) -> None:
    out = fm.score(sums_of(fm, [(np.zeros(0, np.int32), np.zeros(0, np.float32))])).numpy()
    np.testing.assert_allclose(out, [0.7])


def test_gradient_matches_numeric_difference(fm: FactorizationMachine) -> None:
    """Autodiff through side sums equals a central finite difference of the reference."""
    idx, val = np.array([3, 7, 7, 20], np.int32), np.array([1.0, 0.5, 0.25, 2.0], np.float32)
    with tf.GradientTape() as tape:
        y = fm.score(sums_of(fm, [(idx, val)]))[0]
    grad_v = tf.convert_to_tensor(tape.gradient(y, fm.V)).numpy()
    V = fm.V.numpy().astype(np.float64)
    eps = 1e-4
    for f in range(K):
        up, down = V.copy(), V.copy()
        up[7, f] += eps
        down[7, f] -= eps
        numeric = (fm_pairwise(0.7, fm.w.numpy(), up, idx, val)
                   - fm_pairwise(0.7, fm.w.numpy(), down, idx, val)) / (2 * eps)
        assert grad_v[7, f] == pytest.approx(numeric, rel=1e-3, abs=1e-3)


def test_training_block_sums_equal_side_sums_and_pairwise(fm: FactorizationMachine) -> None:
    """The trainer's sparse-matmul side sums == the gather ones == the definition, and its
    L2 terms (with and without per-column multipliers) == their sums."""
    from model.batch_sums import Tables, block_sums
    from model.blocks import Block

    rows = random_rows(np.random.default_rng(4), 30, 9)
    row_ids = np.concatenate([np.full(len(i), n, np.int32) for n, (i, _) in enumerate(rows)])
    indices = np.concatenate([i for i, _ in rows])
    values = np.concatenate([v for _, v in rows])
    block = Block(row_ids, indices, values, np.int32(len(rows)))
    scale = np.random.default_rng(5).uniform(0.0, 10.0, N_FEATURES).astype(np.float32)
    w, V = fm.w.numpy(), fm.V.numpy()
    for m in (None, scale):
        sums, l2 = block_sums(Tables.of(fm, None if m is None else tf.constant(m)), block)
        gathered = sums_of(fm, rows)
        for got, want in zip(sums, gathered, strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
        slow = [fm_pairwise(0.7, w, V, i, v) for i, v in rows]
        np.testing.assert_allclose(fm.score(sums).numpy(), slow, rtol=1e-4, atol=1e-4)
        mult = np.ones(N_FEATURES) if m is None else m
        # per occurrence: sum over the row of m_i x_i^2 |v_i|^2 and m_i x_i^2 w_i^2
        want_l2 = [[np.sum(mult[i] * v**2 * np.sum(V[i] ** 2, axis=1)),
                    np.sum(mult[i] * v**2 * w[i] ** 2)] for i, v in rows]
        np.testing.assert_allclose(l2.numpy(), want_l2, rtol=1e-4, atol=1e-5)


def test_average_of_members_scores_their_mean(fm: FactorizationMachine) -> None:
    from model.fm import average_of

    rng = np.random.default_rng(6)
    other = FactorizationMachine(N_FEATURES, 3, seed=4)
    other.w0.assign(-0.2)
    other.w.assign(rng.normal(size=N_FEATURES).astype(np.float32))
    other.V.assign(rng.normal(size=(N_FEATURES, 3)).astype(np.float32))
    rows = random_rows(rng, 30, 10)
    mean = (fm.score(sums_of(fm, rows)).numpy() + other.score(sums_of(other, rows)).numpy()) / 2
    both = average_of([fm, other])
    assert both.k == K + 3
    np.testing.assert_allclose(both.score(sums_of(both, rows)).numpy(), mean, rtol=1e-4,
                               atol=1e-4)
    slow = [fm_pairwise(float(both.w0.numpy()), both.w.numpy(), both.V.numpy(), i, v)
            for i, v in rows]
    np.testing.assert_allclose(slow, mean, rtol=1e-4, atol=1e-4)
    # concatenating without the 1/sqrt(M) scale would not be the mean
    assert np.abs(average_of([fm]).score(sums_of(fm, rows)).numpy()
                  - fm.score(sums_of(fm, rows)).numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="at least one"):
        average_of([])
