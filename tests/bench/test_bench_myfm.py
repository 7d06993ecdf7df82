"""bench/myfm_peer.py builds myFM's extended inputs: checked against the ratings directly
(myFM itself is an optional extra and is not needed here)."""

from __future__ import annotations

import numpy as np

from bench.myfm_peer import Encoded
from model.data import Dataset
from model.features import FeatureSpec


def _ranges(enc: Encoded, block: int) -> dict[str, range]:
    """Column range of each prior group inside one block (0 main, 1 users, 2 movies)."""
    widths = [enc.train_x.shape[1], enc.user_matrix.shape[1], enc.item_matrix.shape[1]]
    start, out, offset = 0, {}, 0
    for name, size in zip(enc.groups, enc.group_shapes, strict=True):
        b = 0 if start < widths[0] else 1 if start < widths[0] + widths[1] else 2
        offset = sum(widths[:b])
        if b == block:
            out[name] = range(start - offset, start - offset + size)
        start += size
    return out


def test_extended_blocks_hold_what_the_ratings_say(small_data: tuple[Dataset, FeatureSpec]
                                                    ) -> None:
    data, _ = small_data
    enc = Encoded(data, extended=True)
    widths = enc.train_x.shape[1] + enc.user_matrix.shape[1] + enc.item_matrix.shape[1]
    assert sum(enc.group_shapes) == widths  # every column in exactly one prior group
    assert enc.groups[0] == "date" and len(set(enc.groups)) == len(enc.groups)
    users, movies = _ranges(enc, 1), _ranges(enc, 2)
    assert set(users) == {"user", "age", "gender", "occupation", "zip", "rated"}
    assert set(movies) == {"movie", "year", "genre", "raters"}
    # the main matrix: one date per training rating, the same column for the same day
    days = data.train.timestamp // 86400
    cols = enc.train_x.indices
    assert enc.train_x.nnz == len(data.train)
    assert len(set(zip(days.tolist(), cols.tolist(), strict=True))) == len(set(days.tolist()))
    for uid in ("1", "7"):
        row = enc.user_matrix[enc.user_pos[uid]]
        n = int(np.sum(data.train.user == uid))
        rated = [v for c, v in zip(row.indices, row.data, strict=True) if c in users["rated"]]
        np.testing.assert_allclose(rated, np.full(n, 1 / np.sqrt(n)))
        for group in ("user", "age", "gender", "occupation", "zip"):
            assert sum(c in users[group] for c in row.indices) == 1
    for mid in ("3",):
        row = enc.item_matrix[enc.item_pos[mid]]
        n = int(np.sum(data.train.item == mid))
        raters = [v for c, v in zip(row.indices, row.data, strict=True) if c in movies["raters"]]
        np.testing.assert_allclose(raters, np.full(n, 1 / np.sqrt(n)))
        genres = [v for c, v in zip(row.indices, row.data, strict=True) if c in movies["genre"]]
        k = len(data.items[mid]["genres"])
        np.testing.assert_allclose(genres, np.full(k, 1 / k))


def test_ids_only_has_no_date_and_no_attributes(small_data: tuple[Dataset, FeatureSpec]
                                                ) -> None:
    data, _ = small_data
    enc = Encoded(data, extended=False)
    assert enc.groups == ["user", "movie"]
    assert enc.train_x.shape == (len(data.train), 0)
    assert enc.user_matrix.nnz == enc.user_matrix.shape[0]  # one id per user
