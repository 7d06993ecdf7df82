"""Bundles: save -> load -> identical predictions; refusal of broken bundles; the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli import main
from model.blocks import encode_ratings, item_payload, item_raters, user_histories
from model.bundle import HEADS, Bundle, BundleError, content_hash
from model.data import Dataset, Ratings
from model.data.synthetic import synthetic
from model.evaluate import evaluate_bundle
from model.features import FeatureSpec, with_session
from tests.support.reference import fm_pairwise


def test_bundle_metrics_match_offline_evaluation(small_bundle: Bundle,
                                                  small_data: tuple[Dataset, FeatureSpec]) -> None:
    """Scoring the test split through the SavedModel reproduces the trainer's test RMSE."""
    data, _ = small_data
    result = evaluate_bundle(small_bundle, data)
    assert result["rmse"] == pytest.approx(small_bundle.metrics["test_rmse"], abs=1e-5)
    assert result["mae"] == pytest.approx(small_bundle.metrics["test_mae"], abs=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_scores_equal_pairwise_reference_of_saved_weights(
        small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec], head: str) -> None:
    """Each head's score == the FM definition on the same payload (encoded with the
    fields the head reads), using the saved variables; predict == the clipped rating."""
    data, _ = small_data
    fm = getattr(small_bundle.model, head).fm
    variables = {"w0": fm.w0.numpy(), "w": fm.w.numpy(), "V": fm.V.numpy()}
    user = {"id": "3", **data.users["3"], "rated": user_histories(data.train)["3"][:7]}
    raters = item_raters(data.train)  # catalog movies carry who rated them in training
    movies = [{"id": m} for m in ("1", "2", "5")] + [{"id": "zz", "genres": ["War"]}]
    context = {"time": int(data.train.timestamp[0]), "last_movie": "2"}
    got = small_bundle.scores(user, movies, context, head=head)
    if head == "rating":
        assert small_bundle.predict(user, movies, context).tolist() == pytest.approx(
            small_bundle.clip(got).tolist())
    fmap = small_bundle.heads[head].fmap
    u = fmap.encode("user", [user])
    c = fmap.encode("context", [with_session(context, user["id"])])  # as the service does
    for n, movie in enumerate(movies):
        attrs = movie if movie["id"] == "zz" else item_payload(
            movie["id"], data.items[movie["id"]], raters.get(movie["id"], []))
        i = fmap.encode("item", [attrs])
        idx = np.concatenate([u.indices, i.indices, c.indices])
        val = np.concatenate([u.values, i.values, c.values])
        ref = fm_pairwise(variables["w0"], variables["w"], variables["V"], idx, val)
        assert got[n] == pytest.approx(ref, abs=1e-4)


def test_save_load_round_trip_gives_identical_predictions(
        small_bundle_path: Path, small_bundle: Bundle, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(small_bundle_path, copy)
    again = Bundle(copy)
    assert again.model_id == small_bundle.model_id
    user = {"id": "1", "rated": ["2", "3"]}
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:20]]
    np.testing.assert_array_equal(again.predict(user, movies), small_bundle.predict(user, movies))


def test_top_n_equals_brute_force(small_bundle: Bundle) -> None:
    cat = small_bundle.catalog
    user = {"id": "4", "rated": [str(m) for m in cat.ids[:5]]}
    brute = small_bundle.predict(user, [{"id": str(m)} for m in cat.ids])
    raw = small_bundle.score_pairs(small_bundle.side_sums(small_bundle.fmap.encode("user", [user])),
                                   small_bundle.fmap.encode("context", [{}]),
                                   np.zeros(len(cat), np.int32), cat.sums)
    excluded = np.arange(5)
    genre = cat.genre_names[0]
    mask = cat.mask([genre])
    rows, scores = small_bundle.top_n(
        small_bundle.side_sums(small_bundle.fmap.encode("user", [user])),
        small_bundle.fmap.encode("context", [{}]), np.zeros(5, np.int32),
        excluded.astype(np.int32), np.array([mask], np.int64), 10)
    allowed = [n for n in range(len(cat)) if n >= 5 and genre in cat.genres[n]]
    expected = sorted(allowed, key=lambda n: (-raw[n], n))[:10]
    assert rows[0].tolist() == expected
    np.testing.assert_allclose(scores[0], raw[expected], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(small_bundle.clip(raw), brute, atol=1e-5)


def test_missing_and_incomplete_bundles_are_refused(small_bundle_path: Path,
                                                    tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle"):
        Bundle(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(small_bundle_path, broken)
    (broken / "catalog.npz").unlink()
    with pytest.raises(BundleError, match=r"missing catalog\.npz"):
        Bundle(broken)


def test_edited_bundle_is_refused(small_bundle_path: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(small_bundle_path, edited)
    metrics = json.loads((edited / "metrics.json").read_text())
    metrics["test_rmse"] = 0.1
    (edited / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(BundleError, match="does not match its model_id"):
        Bundle(edited)


def test_spec_the_code_cannot_reproduce_is_refused(small_bundle_path: Path,
                                                   tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(small_bundle_path, other)
    spec = json.loads((other / "spec.json").read_text())
    key = next(iter(spec["golden"]))
    spec["golden"][key] += 1  # as if written by a different hash function
    (other / "spec.json").write_text(json.dumps(spec))
    (other / "model_id").write_text(content_hash(other))
    with pytest.raises(BundleError, match="cannot reproduce"):
        Bundle(other)


def test_cli_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert main(["train", "--synthetic", "3000", "--epochs", "2", "--k", "4", "--hash-bits", "12",
                 "--out", str(out), "--quiet"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--synthetic", "3000", "--hash-bits", "12", "--bundle",
                 str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["model_id"] == trained["model_id"]
    assert evaluated["rmse"] == pytest.approx(trained["test_rmse"], abs=1e-5)


def test_cli_train_with_fewer_features_narrows_both_heads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--features ids,implicit: the relevance head reads its default fields among those
    (it crashed after training the rating head when it wanted genres, year, size)."""
    out = tmp_path / "b"
    assert main(["train", "--synthetic", "3000", "--epochs", "1", "--k", "4", "--hash-bits",
                 "12", "--features", "ids,implicit", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    heads = Bundle(out).heads
    assert [f.key for f in heads["relevance"].fmap.spec.fields] == [
        "user.id", "item.id", "user.rated"]
    assert [f.key for f in heads["rating"].fmap.spec.fields] == [
        "user.id", "item.id", "user.rated"]


def _write_ratings(path: Path, ratings: Ratings, sep: str) -> None:
    path.write_text("".join(f"{u}{sep}{m}{sep}{r:g}{sep}{t}\n" for u, m, r, t in zip(
        ratings.user, ratings.item, ratings.rating, ratings.timestamp, strict=True)))


@pytest.mark.parametrize("how", ["files", "temporal"])
def test_cli_train_then_evaluate_on_own_files_and_temporal_splits(
        how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--train/--test files and --split temporal, in train and in evaluate alike."""
    data, _ = synthetic(3000, hash_bits=12)
    if how == "files":
        _write_ratings(tmp_path / "a.base", data.train, "\t")
        _write_ratings(tmp_path / "a.test", data.test, "::")
        source = ["--train", str(tmp_path / "a.base"), "--test", str(tmp_path / "a.test")]
        name = "files/a.base+a.test"
    else:  # an ML-1M-style folder; the cutoff a date inside the ratings' span
        (tmp_path / "movies.dat").write_text("".join(
            f"{m}::{a['title']}::{'|'.join(a['genres'])}\n" for m, a in data.items.items()))
        _write_ratings(tmp_path / "ratings.dat", data.train, "::")
        source = ["--data", str(tmp_path), "--split", "temporal", "--cutoff", "1998-01-01"]
        name = f"{tmp_path.name}/temporal"
    out = tmp_path / "b"
    assert main(["train", *source, "--epochs", "2", "--k", "4", "--hash-bits", "12",
                 "--members", "1", "--out", str(out), "--quiet"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["data"] == name
    assert main(["evaluate", *source, "--hash-bits", "12", "--bundle", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["data"] == name
    assert evaluated["rmse"] == pytest.approx(trained["test_rmse"], abs=1e-5)
    if how == "temporal":
        cutoff = 883_612_800  # 1998-01-01 UTC
        assert Bundle(out).metrics["data_info"] == {"cutoff": cutoff}
        later = int((data.train.timestamp >= cutoff).sum())
        assert evaluated["ratings"] == later > 0


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--data", "/no/such/dir"], "no MovieLens folder"),
    (["train"], "give --data DIR"),
    (["evaluate", "--synthetic", "100", "--bundle", "/no/bundle"], "no model bundle"),
    (["train", "--train", "/no/a.base"], "give --train FILE and --test FILE together"),
    (["train", "--train", "/no/a.base", "--test", "/no/a.test"], "missing file /no/a.base"),
    (["train", "--data", "/no/dir", "--cutoff", "1998-01-01"], "--cutoff needs --split temporal"),
    (["train", "--synthetic", "100", "--split", "temporal"], "--synthetic makes its own split"),
])
def test_cli_errors_are_one_line(args: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmrec: error: ") and message in err and "Traceback" not in err


def test_cli_train_falls_back_to_fmrec_data(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The "give --data" case above holds because conftest clears the caller's FMREC_DATA;
    a test that wants the variable sets it."""
    monkeypatch.setenv("FMREC_DATA", "/no/such/dir")
    assert main(["train"]) == 2
    assert "no MovieLens folder" in capsys.readouterr().err


def test_cli_bad_split_from_a_real_process(ml100k_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "app.cli", "train", "--data", str(ml100k_dir),
                           "--split", "u9"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown split 'u9'" in proc.stderr and "Traceback" not in proc.stderr


def test_encoded_test_split_has_nothing_left_out(small_data: tuple[Dataset, FeatureSpec],
                                                 small_bundle: Bundle) -> None:
    """Test ratings' movies are not in their training history, so scoring needs no fix-up."""
    data, _ = small_data
    assert encode_ratings(small_bundle.fmap, data, data.test, data.train).left_out.nnz == 0


def test_catalog_payloads_reproduce_the_precomputed_item_sums(small_bundle: Bundle) -> None:
    cat = small_bundle.catalog
    rows = np.arange(len(cat))
    assert any(cat.raters[r] for r in rows)  # the feature is really there
    encoded = small_bundle.side_sums(small_bundle.fmap.encode(
        "item", [cat.payload(int(r)) for r in rows]))
    np.testing.assert_allclose(encoded.s, cat.sums.s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded.L, cat.sums.L, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded.q, cat.sums.q, rtol=1e-5, atol=1e-6)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with `new`'s keys replaced, nested objects key by key."""
    out = dict(old)
    for key, value in new.items():
        both = isinstance(value, dict) and isinstance(old.get(key), dict)
        out[key] = _merged(old[key], value) if both else value
    return out


def _rehashed(source: Path, target: Path, metrics: dict[str, Any] | None = None,
              catalog: dict[str, Any] | None = None) -> Path:
    """A copy of `source` with metrics.json keys or catalog.npz arrays replaced, and its
    model id recomputed: only the declared-content checks can catch it."""
    shutil.copytree(source, target)
    if metrics is not None:
        meta = json.loads((target / "metrics.json").read_text())
        (target / "metrics.json").write_text(json.dumps(_merged(meta, metrics)))
    if catalog is not None:
        with np.load(target / "catalog.npz") as z:
            arrays = {name: z[name] for name in z.files}
        np.savez(target / "catalog.npz", **{**arrays, **catalog})
    (target / "model_id").write_text(content_hash(target) + "\n")
    return target


BAD_METRICS = [({"rating_range": [1]}, "rating_range"), ({"rating_range": ["a", "b"]},
               "rating_range"), ({"rating_range": [5, 1]}, "rating_range"),
               ({"rating_range": [3, 3]}, "rating_range"), ({"rating_range": [1, "5"]},
               "rating_range"), ({"rating_range": [float("nan"), 5]}, "rating_range"),
               ({"rating_range": [1, float("inf")]}, "rating_range"),
               ({"rating_range": [True, 5]}, "rating_range"),
               ({"rating_range": {"low": 1}}, "rating_range"),
               ({"rating_range": None}, "rating_range"),
               *(({"heads": {"rating": {"k": k}}}, "k of head rating must be")
                 for k in ("4", 4.0, 0, None)),
               ({"heads": {"relevance": {"k": 5}}}, "inconsistent k of head relevance"),
               ({"heads": {"relevance": {"fields": "user.id"}}}, "fields of head relevance"),
               ({"heads": {"relevance": None}}, "does not describe head 'relevance'"),
               ({"heads": []}, "does not describe head 'rating'")]


@pytest.mark.parametrize(("change", "words"), BAD_METRICS,
                         ids=[json.dumps(c) for c, _ in BAD_METRICS])
def test_bundle_declaring_impossible_metrics_is_refused(
        small_bundle_path: Path, tmp_path: Path, change: dict[str, Any], words: str) -> None:
    bad = _rehashed(small_bundle_path, tmp_path / "bad", metrics=change)
    with pytest.raises(BundleError, match=words):
        Bundle(bad)


def _catalog_changes(bundle: Bundle) -> list[tuple[str, dict[str, Any], str]]:
    cat = bundle.catalog
    nan_s = cat.sums.s.copy()
    nan_s[3, 1] = np.nan
    inf_l = cat.sums.L.copy()
    inf_l[0] = np.inf
    dup = cat.ids.copy()
    dup[1] = dup[0]
    return [
        ("short ids", {"ids": cat.ids[:-1]}, "disagree"),
        ("short titles", {"titles": cat.titles[:-1]}, "disagree"),
        ("short years", {"years": cat.years[:-1]}, "disagree"),
        ("short L", {"L": cat.sums.L[:-1]}, "disagree"),
        ("short q", {"q": cat.sums.q[:-1]}, "disagree"),
        ("s too wide", {"s": np.hstack([cat.sums.s, cat.sums.s[:, :1]])},
         "inconsistent k|disagree"),
        ("s flat", {"s": cat.sums.s[:, 0]}, "inconsistent k|disagree"),
        ("NaN in s", {"s": nan_s}, "not all finite"),
        ("inf in L", {"L": inf_l}, "not all finite"),
        ("text sums", {"q": cat.sums.q.astype(str)}, "dtype"),
        ("duplicate ids", {"ids": dup}, "not unique"),
        ("genre not named", {"genre_names": np.array(cat.genre_names[1:], dtype=str)},
         "genres outside"),
        ("empty", {name: a[:0] for name, a in (("ids", cat.ids), ("titles", cat.titles),
                   ("years", cat.years), ("L", cat.sums.L), ("s", cat.sums.s),
                   ("q", cat.sums.q), ("genres", np.array([], dtype=str)))}, "disagree"),
    ]


def test_bundle_with_an_inconsistent_catalog_is_refused(
        small_bundle_path: Path, small_bundle: Bundle, tmp_path: Path) -> None:
    for name, change, words in _catalog_changes(small_bundle):
        bad = _rehashed(small_bundle_path, tmp_path / name.replace(" ", "-"), catalog=change)
        with pytest.raises(BundleError, match=words):
            Bundle(bad)


def test_declared_content_of_a_good_bundle_passes(small_bundle_path: Path,
                                                  tmp_path: Path) -> None:
    """The checks refuse only what is wrong: an int range and the default range load."""
    ints = Bundle(_rehashed(small_bundle_path, tmp_path / "ints",
                            metrics={"rating_range": [1, 5]}))
    assert ints.rating_range == (1, 5)
    meta = json.loads((small_bundle_path / "metrics.json").read_text())
    assert isinstance(meta["heads"]["rating"]["k"], int) and "rating_range" in meta
