"""Data readers, relation blocks and the synthetic generator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from model.blocks import encode_ratings, last_movies
from model.data import DataError, Ratings
from model.data.movielens import read_files, read_movielens
from model.data.synthetic import (
    STAR_SHARES,
    normal_cdf,
    star_moments,
    synthetic,
    synthetic_encoded,
    to_stars,
)
from model.features import FeatureMap, feature_hash, movielens_spec


def test_reads_ml100k_ua_split(ml100k_dir: Path) -> None:
    data = read_movielens(ml100k_dir, "ua")
    assert (len(data.train), len(data.test)) == (90570, 9430)
    assert len(data.users) == 943 and len(data.items) == 1682
    assert data.users["1"] == {"age": 24, "gender": "M", "occupation": "technician",
                               "zip": "85711"}
    toy = data.items["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert set(np.unique(data.train.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_unknown_split_is_a_clear_error(ml100k_dir: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'u9'"):
        read_movielens(ml100k_dir, "u9")


def test_missing_folder_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MovieLens folder"):
        read_movielens(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no MovieLens ratings"):
        read_movielens(tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataError, match=r"missing file .*u\.genre"):
        read_movielens(tmp_path)


def _tiny_100k(root: Path, base: str) -> Path:
    (root / "u.genre").write_text("unknown|0\nComedy|1\n")
    (root / "u.user").write_text("1|24|M|technician|85711\n")
    (root / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n")
    (root / "u.data").write_text(base)
    (root / "ua.base").write_text(base)
    (root / "ua.test").write_text("1\t1\t4\t2\n")
    return root


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    _tiny_100k(tmp_path, "1\t1\t5\t1\n1\t1\n")
    with pytest.raises(DataError, match=r"ua\.base:2: expected 4 fields"):
        read_movielens(tmp_path)
    _tiny_100k(tmp_path, "1\t1\tfive\t1\n")
    with pytest.raises(DataError, match=r"ua\.base:1: rating and timestamp must be numbers"):
        read_movielens(tmp_path)


def test_reads_dat_and_csv_formats(tmp_path: Path) -> None:
    dat = tmp_path / "ml-1m"
    dat.mkdir()
    (dat / "users.dat").write_text("1::F::1::10::48067\n")
    (dat / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    (dat / "ratings.dat").write_text("".join(f"1::1::{r}::{978300760 + r}\n" for r in range(1, 6)))
    data = read_movielens(dat)
    assert len(data.train) + len(data.test) == 5
    assert data.items["1"] == {"title": "Toy Story (1995)", "genres": ["Animation", "Comedy"],
                               "year": 1995}
    assert data.users["1"]["zip"] == "48067"
    csv_dir = tmp_path / "ml-25m"
    csv_dir.mkdir()
    (csv_dir / "movies.csv").write_text('movieId,title,genres\n1,"Heat, The (1995)",Crime\n')
    (csv_dir / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                         + "".join(f"1,1,{r}.5,{r}\n" for r in range(4)))
    data = read_movielens(csv_dir)
    assert data.items["1"]["title"] == "Heat, The (1995)" and data.rating_range == (0.5, 5.0)


def _ratings(rows: list[tuple[str, str, int]]) -> Ratings:
    return Ratings(np.array([r[0] for r in rows], object), np.array([r[1] for r in rows], object),
                   np.ones(len(rows), np.float32), np.array([r[2] for r in rows], np.int64))


def test_last_movie_is_latest_strictly_earlier_history_entry() -> None:
    history = _ratings([("u", "a", 10), ("u", "b", 20), ("u", "c", 20), ("v", "x", 5)])
    events = _ratings([("u", "q", 20), ("u", "q", 21), ("u", "q", 10), ("v", "q", 6),
                       ("w", "q", 99)])
    assert last_movies(events, history) == ["a", "c", None, "x", None]


def test_test_ratings_use_training_history_only(ml100k_dir: Path) -> None:
    data = read_movielens(ml100k_dir, "ua")
    fmap = FeatureMap(movielens_spec(18))
    test = encode_ratings(fmap, data, data.test, data.train)
    # every "rated" feature of a test user is one of that user's *training* movies
    user = str(data.test.user[0])
    train_movies = set(data.train.item[data.train.user == user])
    test_movies = set(data.test.item[data.test.user == user])
    row = int(test.row_user[0])
    start, end = test.users.indptr[row], test.users.indptr[row + 1]
    rated = next(f for f in fmap.spec.fields if f.key == "user.rated")
    expected = {feature_hash(rated.token(m), 18) for m in train_movies}
    leaked = {feature_hash(rated.token(m), 18) for m in test_movies - train_movies}
    got = set(test.users.indices[start:end].tolist())
    assert expected <= got
    assert not (leaked - expected) & got


def test_synthetic_is_seeded_and_sized() -> None:
    a, spec = synthetic(n_ratings=3000, seed=5, hash_bits=12)
    b, _ = synthetic(n_ratings=3000, seed=5, hash_bits=12)
    c, _ = synthetic(n_ratings=3000, seed=6, hash_bits=12)
    assert len(a.train) + len(a.test) == 3000
    np.testing.assert_array_equal(a.train.rating, b.train.rating)
    assert not np.array_equal(a.train.rating, c.train.rating)
    assert spec.hash_bits == 12 and a.rating_range[0] < a.rating_range[1]


def test_synthetic_ratings_are_stars_spread_like_movielens() -> None:
    data, _ = synthetic(n_ratings=3000, seed=5, hash_bits=12)
    stars = np.concatenate([data.train.rating, data.test.rating])
    assert set(np.unique(stars).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert data.rating_range == (1.0, 5.0)
    shares = np.bincount(stars.astype(int), minlength=6)[1:] / len(stars)
    np.testing.assert_allclose(shares, STAR_SHARES, atol=2 / len(stars))
    info = data.info
    assert 0 < info["floor_rmse"] < 1 and 0 < info["planted_rmse"] < 1


def test_star_moments_match_sampling_the_noise() -> None:
    """E and Var of the stars given the planted score, against drawing the noise."""
    x = np.linspace(-6, 6, 241)
    np.testing.assert_allclose(normal_cdf(x), [0.5 * (1 + math.erf(v / math.sqrt(2)))
                                               for v in x], atol=2e-7)
    thresholds = np.array([2.0, 2.6, 3.4, 4.4])
    truth = np.array([1.0, 2.5, 3.0, 3.9, 6.0])
    mean, var = star_moments(truth, 0.4, thresholds)
    draws = truth[:, None] + np.random.default_rng(0).normal(0, 0.4, (len(truth), 200_000))
    stars = to_stars(draws.ravel(), thresholds).reshape(draws.shape)
    np.testing.assert_allclose(mean, stars.mean(axis=1), atol=0.01)
    np.testing.assert_allclose(var, stars.var(axis=1), atol=0.01)
    assert to_stars(np.array([1.9, 2.0, 2.1, 9.0]), thresholds).tolist() == [1, 1, 2, 5]


def test_synthetic_encoded_gives_the_training_encoding_encode_ratings_gives() -> None:
    data, spec, enc = synthetic_encoded(n_ratings=3000, seed=5, hash_bits=12)
    again = encode_ratings(FeatureMap(spec.rating_fields()), data, data.train, data.train)
    for name in ("users", "items", "contexts", "left_out"):
        mine, theirs = getattr(enc, name), getattr(again, name)
        for part in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(mine, part), getattr(theirs, part))
    np.testing.assert_array_equal(enc.row_user, again.row_user)
    np.testing.assert_array_equal(enc.row_item, again.row_item)
    np.testing.assert_array_equal(enc.y, data.train.rating)
    assert enc.y.std() > 0  # the planted ratings, not the zeros encoded before planting


def _stamped(n: int) -> list[tuple[str, str, int, int]]:
    """n ratings (user, movie, stars, time), times shuffled and some shared."""
    times = np.random.default_rng(1).permutation(np.arange(n) // 2 * 100 + 1000)
    return [(str(1 + i % 3), str(1 + i % 5), 1 + i % 5, int(t)) for i, t in enumerate(times)]


def test_temporal_split_holds_out_the_latest_ratings_of_every_format(tmp_path: Path) -> None:
    rows = _stamped(40)
    (tmp_path / "100k").mkdir()
    hundred = _tiny_100k(tmp_path / "100k", "".join(f"{u}\t{m}\t{r}\t{t}\n"
                                                     for u, m, r, t in rows))
    dat = tmp_path / "1m"
    dat.mkdir()
    (dat / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    (dat / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows))
    csv = tmp_path / "20m"
    csv.mkdir()
    (csv / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},{r},{t}\n" for u, m, r, t in rows))
    stamps = sorted(t for *_, t in rows)
    for folder in (hundred, dat, csv):
        data = read_movielens(folder, "temporal")  # default: 10% held out
        assert data.name.endswith("/temporal") and len(data.train) + len(data.test) == 40
        cut = data.info["cutoff"]
        assert cut == stamps[36] and len(data.test) == 4
        assert data.train.timestamp.max() < cut <= data.test.timestamp.min()
        data = read_movielens(folder, "temporal", holdout=0.25)
        assert len(data.test) == 10 and data.info["cutoff"] == stamps[30]
        assert stamps[19] < stamps[20] == stamps[21]  # two ratings in the cutoff second
        data = read_movielens(folder, "temporal", cutoff=stamps[20])
        assert len(data.test) == 20 and data.train.timestamp.max() == stamps[19]
        with pytest.raises(DataError, match="leaves no test ratings"):
            read_movielens(folder, "temporal", cutoff=stamps[-1] + 1)
        with pytest.raises(DataError, match="leaves no training ratings"):
            read_movielens(folder, "temporal", cutoff=stamps[0])
        with pytest.raises(DataError, match="a cutoff needs the temporal split"):
            read_movielens(folder, "random", cutoff=stamps[0])
    assert len(read_movielens(dat, "random", holdout=0.25).test) == 10


def test_train_and_test_files_in_any_format(tmp_path: Path) -> None:
    rows = _stamped(12)
    folder = _tiny_100k(tmp_path, "")
    (tmp_path / "mine.base").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in rows))
    (tmp_path / "mine.test").write_text("2::1::4::5\n3::9::2::6\n")
    data = read_files(tmp_path / "mine.base", tmp_path / "mine.test")
    assert data.name == "files/mine.base+mine.test"
    assert data.train.user.tolist() == [u for u, *_ in rows]
    assert data.train.timestamp.tolist() == [t for *_, t in rows]
    assert data.test.item.tolist() == ["1", "9"] and data.test.rating.tolist() == [4.0, 2.0]
    assert data.items["1"]["title"] == "Toy Story (1995)"  # the folder's attributes
    assert data.items["9"] == {"title": "9", "genres": [], "year": None}  # by id only
    assert data.users["1"]["occupation"] == "technician"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "r.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.5,7\n")
    from_csv = read_files(other / "r.csv", other / "r.csv", attributes=folder)
    assert from_csv.train.rating.tolist() == [3.5] and from_csv.users == data.users
    assert read_files(other / "r.csv", other / "r.csv").users == {}
    with pytest.raises(DataError, match="holds no MovieLens movie attributes"):
        read_files(other / "r.csv", other / "r.csv", attributes=other)
    with pytest.raises(DataError, match="missing file"):
        read_files(other / "nope", other / "r.csv")


def test_a_training_ratings_own_star_is_left_out_like_its_movie(ml100k_dir: Path) -> None:
    """user row - left out = the user's history without this rating: every other movie
    at 1/sqrt(n) and its stars at (r - centre)/sqrt(n), n the whole history's size."""
    data = read_movielens(ml100k_dir, "ua")
    spec = movielens_spec(18, "ids,implicit,stars").fit_centres(3.5)
    fmap = FeatureMap(spec)
    train = encode_ratings(fmap, data, data.train, data.train)
    r = 17
    user, movie = str(data.train.user[r]), str(data.train.item[r])
    mine = data.train.user == user
    stars = dict(zip(data.train.item[mine].tolist(), data.train.rating[mine].tolist(),
                     strict=True))
    n = len(stars)
    expected = np.zeros(spec.n_features)
    expected[feature_hash(f"user.id={user}", 18)] += 1
    for m, s in stars.items():
        if m != movie:
            expected[feature_hash(f"user.rated={m}", 18)] += 1 / np.sqrt(n)
            expected[feature_hash(f"user.rated_stars={m}", 18)] += (s - 3.5) / np.sqrt(n)
    got = (train.users.take([train.row_user[r]]).to_dense(spec.n_features)[0]
           - train.left_out.take([r]).to_dense(spec.n_features)[0])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert train.left_out.take([r]).nnz == 2
