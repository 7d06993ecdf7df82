"""model.ann's distinct points: every catalog row behind exactly one point, found again
by `members`, checked against plain loops."""

from __future__ import annotations

import numpy as np

from model import ann
from model.sums import Sums


def planted(seed: int = 0) -> np.ndarray:
    """60 rows drawn from 9 distinct ones (one of them -0.0 where another has 0.0)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((9, 5)).astype(np.float32)
    base[8] = base[7]
    base[7, 0], base[8, 0] = 0.0, -0.0
    return base[rng.integers(0, 9, size=60)]


def test_distinct_groups_every_row_with_its_equals() -> None:
    vectors = planted()
    points, order, starts = ann.distinct(vectors)
    assert len(points) == len({v.tobytes() for v in vectors})
    assert sorted(order.tolist()) == list(range(len(vectors))) and starts[-1] == len(vectors)
    for p, point in enumerate(points):
        rows = order[starts[p]:starts[p + 1]]
        expected = [r for r in range(len(vectors)) if vectors[r].tobytes() == point.tobytes()]
        assert rows.tolist() == expected  # ascending: ties go to the lower row


def test_members_expand_points_in_the_order_given() -> None:
    vectors = planted(1)
    s = vectors[:, :4]
    items = Sums(np.zeros(len(s), np.float32), s, np.zeros(len(s), np.float32))
    index = ann.build(items)
    assert index.points == len(ann.distinct(ann.item_vectors(items))[0])
    asked = np.array([3, -1, 0, index.points - 1, 0])
    expected = [r for p in asked.tolist() if p >= 0
                for r in index.order[index.starts[p]:index.starts[p + 1]].tolist()]
    assert index.members(asked).tolist() == expected
    assert index.members(np.array([-1, -1])).tolist() == []


def test_search_finds_the_best_point_and_all_its_movies() -> None:
    vectors = planted(2)
    s = vectors[:, :4]
    items = Sums(np.zeros(len(s), np.float32), s, np.zeros(len(s), np.float32))
    index = ann.build(items)
    a = np.array([[1.0, -0.5, 0.25, 2.0]], np.float32)
    scores = ann.query_vectors(a) @ ann.item_vectors(items).T
    best = np.flatnonzero(scores[0] == scores[0].max())
    found = index.search(a, 1, probe_share=1.0)
    assert sorted(index.members(found[0]).tolist()) == best.tolist()
    everything = index.members(index.search(a, index.points, probe_share=1.0)[0])
    assert sorted(everything.tolist()) == list(range(len(s)))
