"""Readers for the MovieLens formats: 100k (tab/pipe), 1M/10M (`::`) and 20M/25M (csv).

MovieLens data may not be redistributed, so fmrec never ships it: download it from
https://grouplens.org/datasets/movielens/ and point `fmrec train --data DIR` at the
unpacked folder. The format is detected from the files present. The 100k, 1M and 10M
files are Latin-1; the csv sets are UTF-8.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model.data import DataError, Dataset, Ratings, random_split, temporal_split

SPLITS_100K = ("ua", "ub", "u1", "u2", "u3", "u4", "u5")
HELD_OUT = ("random", "temporal")  # splits made here, for every MovieLens size
Users = dict[str, dict[str, Any]]
Items = dict[str, dict[str, Any]]
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _lines(path: Path, sep: str, n_fields: int, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Non-empty lines split on `sep`, each checked to have at least `n_fields` fields."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    with path.open(encoding=encoding, errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) < n_fields:
                raise DataError(
                    f"{path}:{lineno}: expected {n_fields} fields separated by {sep!r}, "
                    f"got {len(parts)}: {line[:80]!r}"
                )
            yield lineno, parts


def _ratings(rows: Iterator[tuple[int, list[str]]], path: Path) -> Ratings:
    users, items, values, times = [], [], [], []
    for lineno, parts in rows:
        try:
            values.append(float(parts[2]))
            times.append(int(float(parts[3])))
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: rating and timestamp must be numbers, got {parts[2:4]}"
            ) from None
        users.append(parts[0].strip())
        items.append(parts[1].strip())
    if not values:
        raise DataError(f"{path}: no ratings")
    return Ratings(
        np.array(users, dtype=object), np.array(items, dtype=object),
        np.array(values, dtype=np.float32), np.array(times, dtype=np.int64),
    )


def _title_year(title: str) -> int | None:
    match = _YEAR.search(title)
    return int(match.group(1)) if match else None


def _held_out(ratings: Ratings, split: str, seed: int, holdout: float, cutoff: int | None
              ) -> tuple[Ratings, Ratings, dict[str, Any]]:
    """(train, test, info) of a `random` or `temporal` split of all the ratings."""
    if split == "temporal":
        train, test, cut = temporal_split(ratings, cutoff, holdout)
        return train, test, {"cutoff": cut}
    if cutoff is not None:
        raise DataError("a cutoff needs the temporal split")
    return (*random_split(ratings, holdout, seed), {})


def _attributes_100k(root: Path) -> tuple[Users, Items]:
    enc = "latin-1"
    genre_names = [p[0] for _, p in _lines(root / "u.genre", "|", 2, enc)]
    users = {
        p[0]: {"age": int(p[1]), "gender": p[2], "occupation": p[3], "zip": p[4]}
        for _, p in _lines(root / "u.user", "|", 5, enc)
    }
    items: dict[str, dict[str, Any]] = {}
    for lineno, p in _lines(root / "u.item", "|", 5 + len(genre_names), enc):
        flags = p[5 : 5 + len(genre_names)]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{root / 'u.item'}:{lineno}: genre flags must be 0 or 1")
        date = p[2].strip()
        items[p[0]] = {
            "title": p[1],
            "genres": [g for g, f in zip(genre_names, flags, strict=True) if f == "1"],
            "year": int(date[-4:]) if date[-4:].isdigit() else None,
        }
    return users, items


def read_100k(root: Path, split: str = "ua", seed: int = 0, holdout: float = 0.1,
              cutoff: int | None = None) -> Dataset:
    """ML-100k: `split` is ua/ub/u1..u5 (the shipped .base/.test files), `random` or
    `temporal` (`holdout` of u.data held out, or the ratings from `cutoff` on)."""
    enc = "latin-1"
    if split not in (*SPLITS_100K, *HELD_OUT):
        raise DataError(f"unknown split {split!r} for ML-100k; choose from "
                        f"{', '.join(SPLITS_100K)}, random or temporal")
    users, items = _attributes_100k(root)
    info: dict[str, Any] = {}
    if split in SPLITS_100K:
        if cutoff is not None:
            raise DataError("a cutoff needs the temporal split")
        train = _ratings(_lines(root / f"{split}.base", "\t", 4, enc), root / f"{split}.base")
        test = _ratings(_lines(root / f"{split}.test", "\t", 4, enc), root / f"{split}.test")
    else:
        train, test, info = _held_out(_ratings(_lines(root / "u.data", "\t", 4, enc),
                                               root / "u.data"), split, seed, holdout, cutoff)
    return Dataset(f"ml-100k/{split}", users, items, train, test, (1.0, 5.0), info)


def _check_held_out(root: Path, split: str) -> None:
    if split not in HELD_OUT:
        raise DataError(f"unknown split {split!r} for {root.name}: choose random or temporal")


def _attributes_dat(root: Path) -> tuple[Users, Items]:
    users: Users = {}
    if (root / "users.dat").is_file():
        users = {
            p[0]: {"gender": p[1], "age": int(p[2]), "occupation": p[3], "zip": p[4]}
            for _, p in _lines(root / "users.dat", "::", 5, "latin-1")
        }
    items = {
        p[0]: {"title": p[1], "genres": [g for g in p[2].split("|") if g],
               "year": _title_year(p[1])}
        for _, p in _lines(root / "movies.dat", "::", 3, "latin-1")
    }
    return users, items


def read_dat(root: Path, split: str = "random", seed: int = 0, holdout: float = 0.1,
             cutoff: int | None = None) -> Dataset:
    """ML-1M / ML-10M (`::` separated). 10M has no users.dat: users then carry ids only."""
    _check_held_out(root, split)
    users, items = _attributes_dat(root)
    ratings = _ratings(_lines(root / "ratings.dat", "::", 4, "latin-1"), root / "ratings.dat")
    train, test, info = _held_out(ratings, split, seed, holdout, cutoff)
    top = float(ratings.rating.max())
    return Dataset(f"{root.name}/{split}", users, items, train, test,
                   (float(ratings.rating.min()), top), info)


def _csv_rows(path: Path, n_fields: int) -> Iterator[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # header
        for lineno, row in enumerate(reader, 2):
            if len(row) < n_fields:
                raise DataError(f"{path}:{lineno}: expected {n_fields} comma-separated fields")
            yield lineno, row


def _attributes_csv(root: Path) -> tuple[Users, Items]:
    return {}, {
        p[0]: {"title": p[1], "genres": [g for g in p[2].split("|") if g != "(no genres listed)"],
               "year": _title_year(p[1])}
        for _, p in _csv_rows(root / "movies.csv", 3)
    }


def read_csv(root: Path, split: str = "random", seed: int = 0, holdout: float = 0.1,
             cutoff: int | None = None) -> Dataset:
    """ML-20M / ML-25M (`ratings.csv`, `movies.csv` with a header line)."""
    _check_held_out(root, split)
    _, items = _attributes_csv(root)
    ratings = _ratings(_csv_rows(root / "ratings.csv", 4), root / "ratings.csv")
    train, test, info = _held_out(ratings, split, seed, holdout, cutoff)
    return Dataset(f"{root.name}/{split}", {}, items, train, test, (0.5, 5.0), info)


def read_rating_file(path: str | Path) -> Ratings:
    """One MovieLens ratings file in any of its formats: `.csv` with a header line, `::`
    separated (1M/10M), else tab separated (100k's u.data, ua.base, ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    if path.suffix == ".csv":
        return _ratings(_csv_rows(path, 4), path)
    with path.open(encoding="latin-1") as fh:
        first = next((line for line in fh if line.strip()), "")
    return _ratings(_lines(path, "::" if "::" in first else "\t", 4, "latin-1"), path)


def read_files(train: str | Path, test: str | Path, attributes: str | Path | None = None
               ) -> Dataset:
    """Any train and test files of MovieLens ratings. User and movie attributes come from
    the MovieLens folder `attributes` (default: the train file's), if it holds them;
    movies they do not describe are known by id only."""
    train_part, test_part = read_rating_file(train), read_rating_file(test)
    root = Path(attributes) if attributes is not None else Path(train).parent
    users: Users = {}
    items: Items = {}
    if (root / "u.item").is_file():
        users, items = _attributes_100k(root)
    elif (root / "movies.dat").is_file():
        users, items = _attributes_dat(root)
    elif (root / "movies.csv").is_file():
        users, items = _attributes_csv(root)
    elif attributes is not None:
        raise DataError(f"{root} holds no MovieLens movie attributes (u.item, movies.dat "
                        "or movies.csv)")
    for movie in dict.fromkeys([*train_part.item.tolist(), *test_part.item.tolist()]):
        items.setdefault(movie, {"title": movie, "genres": [], "year": None})
    both = np.concatenate([train_part.rating, test_part.rating])
    return Dataset(f"files/{Path(train).name}+{Path(test).name}", users, items, train_part,
                   test_part, (float(both.min()), float(both.max())))


def read_movielens(path: str | Path, split: str | None = None, seed: int = 0,
                   holdout: float = 0.1, cutoff: int | None = None) -> Dataset:
    """Any MovieLens folder; the format is told by which files it holds. `holdout` and
    `cutoff` apply to the splits made here (`random`, `temporal`)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"no MovieLens folder at {root} (download from grouplens.org)")
    if (root / "u.data").is_file() or (root / "ua.base").is_file():
        return read_100k(root, split or "ua", seed, holdout, cutoff)
    if (root / "ratings.dat").is_file():
        return read_dat(root, split or "random", seed, holdout, cutoff)
    if (root / "ratings.csv").is_file():
        return read_csv(root, split or "random", seed, holdout, cutoff)
    raise DataError(
        f"{root} holds no MovieLens ratings (u.data, ratings.dat or ratings.csv); "
        "ML-1M here may be users.dat/movies.dat only"
    )
