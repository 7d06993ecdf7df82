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

from model.data import DataError, Dataset, Ratings, random_split

SPLITS_100K = ("ua", "ub", "u1", "u2", "u3", "u4", "u5")
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


def read_100k(root: Path, split: str = "ua", seed: int = 0) -> Dataset:
    """ML-100k: `split` is ua/ub/u1..u5 (the shipped .base/.test files) or `random`."""
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
    if split in SPLITS_100K:
        train = _ratings(_lines(root / f"{split}.base", "\t", 4, enc), root / f"{split}.base")
        test = _ratings(_lines(root / f"{split}.test", "\t", 4, enc), root / f"{split}.test")
    elif split == "random":
        train, test = random_split(_ratings(_lines(root / "u.data", "\t", 4, enc),
                                            root / "u.data"), 0.1, seed)
    else:
        raise DataError(f"unknown split {split!r} for ML-100k; choose from "
                        f"{', '.join(SPLITS_100K)} or random")
    return Dataset(f"ml-100k/{split}", users, items, train, test, (1.0, 5.0))


def read_dat(root: Path, split: str = "random", seed: int = 0) -> Dataset:
    """ML-1M / ML-10M (`::` separated). 10M has no users.dat: users then carry ids only."""
    if split != "random":
        raise DataError(f"unknown split {split!r} for {root.name}: only 'random' is available")
    users: dict[str, dict[str, Any]] = {}
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
    ratings = _ratings(_lines(root / "ratings.dat", "::", 4, "latin-1"), root / "ratings.dat")
    train, test = random_split(ratings, 0.1, seed)
    top = float(ratings.rating.max())
    return Dataset(f"{root.name}/random", users, items, train, test,
                   (float(ratings.rating.min()), top))


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


def read_csv(root: Path, split: str = "random", seed: int = 0) -> Dataset:
    """ML-20M / ML-25M (`ratings.csv`, `movies.csv` with a header line)."""
    if split != "random":
        raise DataError(f"unknown split {split!r} for {root.name}: only 'random' is available")
    items = {
        p[0]: {"title": p[1], "genres": [g for g in p[2].split("|") if g != "(no genres listed)"],
               "year": _title_year(p[1])}
        for _, p in _csv_rows(root / "movies.csv", 3)
    }
    ratings = _ratings(_csv_rows(root / "ratings.csv", 4), root / "ratings.csv")
    train, test = random_split(ratings, 0.1, seed)
    return Dataset(f"{root.name}/random", {}, items, train, test, (0.5, 5.0))


def read_movielens(path: str | Path, split: str | None = None, seed: int = 0) -> Dataset:
    """Any MovieLens folder; the format is told by which files it holds."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"no MovieLens folder at {root} (download from grouplens.org)")
    if (root / "u.data").is_file() or (root / "ua.base").is_file():
        return read_100k(root, split or "ua", seed)
    if (root / "ratings.dat").is_file():
        return read_dat(root, split or "random", seed)
    if (root / "ratings.csv").is_file():
        return read_csv(root, split or "random", seed)
    raise DataError(
        f"{root} holds no MovieLens ratings (u.data, ratings.dat or ratings.csv); "
        "ML-1M here may be users.dat/movies.dat only"
    )
