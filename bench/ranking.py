"""Top-10 recommendation quality: fmrec's relevance head against the peers a user would
pick instead, all trained and ranked in this one run.

Protocol (issue 13): train on a split's base file as implicit feedback; for every test
user rank every movie they did not rate in training; relevant = the user's test movies
("all"), or those rated >= 4 ("good"). Peers: most rated, EASE (Steck 2019, closed form
in NumPy), `implicit` ALS and BPR (the optional `bench` extra). fmrec's row is its
relevance head as `fmrec train` builds it (the service ranks with exactly these scores:
tests/model/test_relevance.py), with its rating head beside it to show why the head exists.
Runs ua, then the 5 folds u1..u5 (mean and spread), and a cold-start comparison (users
held out of training who send 5 ratings inline).

    .venv/bin/python -m bench.ranking [--data DIR] [--folds ua,u1,...] [--no-readme]
        [--quick] [--relevance KEY=VALUE ...]

--quick runs ua alone against the peers that matter for the targets (most rated, EASE,
ALS), without the rating head, BPR and cold start: a variant of the head in a few
minutes. --relevance overrides a RelevanceConfig field (k=128, history_dropout=0.25,
fields=user.id,item.id, refit=false) for fmrec's rows, cold start included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from functools import partial
from typing import Any

import numpy as np

from bench.common import Table, update_docs, write_json
from bench.train import default_data_dir
from model.data import DataError, Dataset, Ratings
from model.data.movielens import read_movielens
from model.evaluate import ranking_summary
from model.features import FeatureMap, movielens_spec
from model.fm import FactorizationMachine
from model.pipeline import fit
from model.relevance import RelevanceConfig, head_spec, rank_fm, train_relevance
from model.train import TrainConfig

Ranker = Callable[[Dataset], dict[str, list[str]]]


class Interactions:
    """The training split as a binary user x movie matrix over the catalog."""

    def __init__(self, data: Dataset) -> None:
        self.items = sorted(data.items)
        self.users = sorted({str(u) for u in data.test.user.tolist()}
                            | {str(u) for u in data.train.user.tolist()})
        col = {m: n for n, m in enumerate(self.items)}
        row = {u: n for n, u in enumerate(self.users)}
        self.X = np.zeros((len(self.users), len(self.items)), np.float32)
        self.X[[row[str(u)] for u in data.train.user.tolist()],
               [col[str(m)] for m in data.train.item.tolist()]] = 1.0
        self.row = row

    def top(self, scores: np.ndarray, data: Dataset, n: int = 10) -> dict[str, list[str]]:
        """Each test user's n best unrated movies by `scores` (users x movies)."""
        scores = np.where(self.X > 0, -np.inf, scores)
        out = {}
        for u in {str(u) for u in data.test.user.tolist()}:
            r = scores[self.row[u]]
            best = np.argpartition(-r, n)[:n]
            out[u] = [self.items[j] for j in best[np.argsort(-r[best], kind="stable")]]
        return out


def most_rated(data: Dataset) -> dict[str, list[str]]:
    x = Interactions(data)
    return x.top(np.broadcast_to(x.X.sum(axis=0), x.X.shape), data)


def ease_scores(x: Interactions, lam: float = 500.0) -> np.ndarray:
    """EASE: X B, B = I - P diag(1/diag(P)), P = (X'X + lam I)^-1, diag(B) = 0."""
    G = (x.X.T @ x.X).astype(np.float64)
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return x.X @ B


def ease(data: Dataset, lam: float = 500.0) -> dict[str, list[str]]:
    x = Interactions(data)
    return x.top(ease_scores(x, lam), data)


def implicit_model(kind: str) -> Ranker:
    """`implicit`'s ALS (32 factors, binary input) or BPR (128 factors), as issue 13 ran them."""
    def rank(data: Dataset) -> dict[str, list[str]]:
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        x = Interactions(data)
        model: Any = (AlternatingLeastSquares(factors=32, random_state=0) if kind == "als"
                      else BayesianPersonalizedRanking(factors=128, random_state=0))
        with threadpool_limits(1, "blas"):  # implicit's advice for its own threads
            model.fit(csr_matrix(x.X), show_progress=False)
        users, items = (np.asarray(getattr(f, "to_numpy", lambda f=f: f)())
                        for f in (model.user_factors, model.item_factors))
        return x.top(users @ items.T, data)
    return rank


def relevance_config(overrides: Sequence[str]) -> RelevanceConfig:
    """RelevanceConfig() with KEY=VALUE overrides (tuples comma-separated, bools true/false)."""
    config = RelevanceConfig()
    known = {f.name for f in fields(config)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--relevance {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(sorted(known))}")
        current = getattr(config, key)
        try:
            if isinstance(current, tuple):
                changes[key] = tuple(v for v in text.split(",") if v)
            elif isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                changes[key] = text.lower() in ("true", "1")
            else:
                changes[key] = type(current)(text)
        except ValueError:
            raise SystemExit(f"--relevance {item!r}: {text!r} is not a "
                             f"{type(current).__name__}") from None
    try:
        return replace(config, **changes)
    except ValueError as exc:  # RelevanceConfig's own checks
        raise SystemExit(f"--relevance: {exc}") from None


def relevance_head(data: Dataset, config: RelevanceConfig | None = None
                   ) -> tuple[FactorizationMachine, FeatureMap]:
    """The relevance head as `fmrec train` trains it on `data`, and its feature map."""
    spec = movielens_spec().fit_numeric("context", {"time": data.train.timestamp.tolist()})
    config = config or RelevanceConfig()
    result = train_relevance(data, spec, config, progress=False)
    return result.model, FeatureMap(head_spec(spec, config.fields))


def fmrec_relevance(data: Dataset, config: RelevanceConfig | None = None
                    ) -> dict[str, list[str]]:
    return rank_fm(*relevance_head(data, config), data)


def fmrec_rating(data: Dataset) -> dict[str, list[str]]:
    """The rating head alone (one member: the ranking barely moves with more)."""
    spec = movielens_spec()
    report = fit(data, spec, TrainConfig(members=1), progress=False)
    fitted = spec.fit_numeric("context", {"time": data.train.timestamp.tolist()})
    return rank_fm(report.model, FeatureMap(fitted.rating_fields()), data)


def peers(config: RelevanceConfig | None = None, quick: bool = False
          ) -> list[tuple[str, Ranker]]:
    """Every ranker of the table; `quick`: no BPR and no rating head (the slow rows)."""
    out: list[tuple[str, Ranker]] = [("most rated", most_rated), ("EASE (lambda 500)", ease)]
    try:
        import implicit  # noqa: F401
        out += [("implicit ALS (32 factors)", implicit_model("als"))]
        if not quick:
            out += [("implicit BPR (128 factors)", implicit_model("bpr"))]
    except ImportError:
        print("implicit is not installed (pip install '.[bench]'): ALS and BPR skipped",
              file=sys.stderr)
    if not quick:
        out += [("fmrec rating head", fmrec_rating)]
    return [*out, ("fmrec relevance head", partial(fmrec_relevance, config=config))]


def run(data_dir: str, folds: Sequence[str], config: RelevanceConfig | None = None,
        quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    for fold in folds:
        data = read_movielens(data_dir, fold)
        for name, rank in peers(config, quick):
            t0 = time.perf_counter()
            ranked = rank(data)
            seconds = time.perf_counter() - t0
            summary = ranking_summary(ranked, data)
            rows.append({"fold": fold, "model": name, "seconds": seconds, **{
                f"{part}_{k}": v for part, metrics in summary.items() for k, v in metrics.items()}})
            print(f"{fold} {name}: NDCG@10 {summary['all']['ndcg']:.4f} "
                  f"P@10 {summary['all']['precision']:.4f} ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
    return rows


def cold_start(data_dir: str, fold: str = "ua", share: float = 0.1, given: int = 5,
               seed: int = 0, config: RelevanceConfig | None = None) -> list[dict[str, Any]]:
    """New users from a handful of ratings, without retraining: `share` of the users are
    held out of training entirely; each then sends its first `given` ratings (by time)
    as an inline history, and every other movie it rated (base and test) is relevant."""
    data = read_movielens(data_dir, fold)
    users = sorted({str(u) for u in data.train.user.tolist()})
    rng = np.random.default_rng(seed)
    cold = set(rng.choice(users, size=round(share * len(users)), replace=False).tolist())
    in_cold = np.array([str(u) in cold for u in data.train.user.tolist()])
    order = np.lexsort((data.train.timestamp, data.train.user.astype(str)))
    first = np.zeros(len(data.train), bool)
    seen: dict[str, int] = {}
    for r in order[in_cold[order]]:
        u = str(data.train.user[r])
        seen[u] = seen.get(u, 0) + 1
        first[r] = seen[u] <= given
    test_cold = np.array([str(u) in cold for u in data.test.user.tolist()])
    warm = replace(data, train=data.train.subset(np.flatnonzero(~in_cold)),
                   test=data.test.subset(np.flatnonzero(~test_cold)))
    rest = data.train.subset(np.flatnonzero(in_cold & ~first))
    probe = replace(data, train=data.train.subset(np.flatnonzero(~in_cold | first)),
                    test=Ratings(*(np.concatenate([getattr(rest, c), getattr(
                        data.test.subset(np.flatnonzero(test_cold)), c)])
                        for c in ("user", "item", "rating", "timestamp"))))
    spec = movielens_spec().fit_numeric("context", {"time": warm.train.timestamp.tolist()})
    config = config or RelevanceConfig()
    t0 = time.perf_counter()
    result = train_relevance(warm, spec, config, progress=False)
    ranked = rank_fm(result.model, FeatureMap(head_spec(spec, config.fields)), probe)
    seconds = time.perf_counter() - t0
    rows = []
    for name, lists, secs in (("most rated", most_rated(probe), 0.0),
                              ("fmrec relevance head", ranked, seconds)):
        summary = ranking_summary(lists, probe)
        rows.append({"fold": fold, "model": name, "cold_users": len(cold), "given": given,
                     "seconds": secs, **{f"{part}_{k}": v for part, metrics in summary.items()
                                         for k, v in metrics.items()}})
        print(f"cold start {name}: NDCG@10 {summary['all']['ndcg']:.4f}", file=sys.stderr)
    return rows


def tables(rows: list[dict[str, Any]], cold: list[dict[str, Any]] | None = None
           ) -> dict[str, Table]:
    cols = ["all_precision", "all_recall", "all_ndcg", "all_map", "good_precision",
            "good_ndcg", "all_coverage", "all_popularity_rank", "seconds"]
    heads = ["model", "P@10", "R@10", "NDCG@10", "MAP@10", "P@10 good", "NDCG@10 good",
             "coverage", "pop. rank", "train+rank s"]
    out = {}
    ua = [r for r in rows if r["fold"] == "ua"]
    if ua:
        out["ranking-ua"] = Table("ML-100k ua: top-10 of unrated movies, relevant = ua.test "
                                  "(same run)", heads,
                                  [[r["model"], *(round(r[c], 4) for c in cols)] for r in ua])
    folds = sorted({r["fold"] for r in rows} - {"ua"})
    if folds:
        models = list(dict.fromkeys(r["model"] for r in rows if r["fold"] in folds))
        body = []
        for m in models:
            mine = [r for r in rows if r["model"] == m and r["fold"] in folds]
            ndcg = np.array([r["all_ndcg"] for r in mine])
            body.append([m, round(float(np.mean([r["all_precision"] for r in mine])), 4),
                         round(float(ndcg.mean()), 4), round(float(ndcg.std()), 4),
                         round(float(np.mean([r["good_ndcg"] for r in mine])), 4)])
        out["ranking-folds"] = Table(f"ML-100k {', '.join(folds)}: means over the folds "
                                     "(same run)", ["model", "P@10", "NDCG@10", "NDCG sd",
                                                    "NDCG@10 good"], body)
    if cold:
        first = cold[0]
        out["ranking-cold"] = Table(
            f"Cold start on {first['fold']}: {first['cold_users']} users held out of "
            f"training send their first {first['given']} ratings inline; relevant = every "
            "other movie they rated", ["model", "P@10", "NDCG@10", "P@10 good", "train s"],
            [[r["model"], round(r["all_precision"], 4), round(r["all_ndcg"], 4),
              round(r["good_precision"], 4), round(r["seconds"], 1)] for r in cold])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except DataError as exc:  # no MovieLens where --data points, or an unknown fold
        print(f"bench.ranking: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--folds", default="ua,u1,u2,u3,u4,u5")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README tables")
    parser.add_argument("--cold-start-only", action="store_true",
                        help="only the cold-start comparison (results/ranking-cold.json)")
    parser.add_argument("--quick", action="store_true",
                        help="ua only; most rated, EASE, ALS and the relevance head; no "
                             "cold start; writes results/ranking-quick.json, not README")
    parser.add_argument("--relevance", action="append", default=[], metavar="KEY=VALUE",
                        help="override a RelevanceConfig field for fmrec (repeatable)")
    args = parser.parse_args(argv)
    config = relevance_config(args.relevance)
    if args.quick:
        rows = run(args.data, ["ua"], config, quick=True)
        for t in tables(rows).values():
            print(t.text())
        path = write_json("ranking-quick", {"runs": rows, "relevance_config": config.to_dict()})
        print(f"wrote {path}")
        return 0
    cold = cold_start(args.data, config=config)
    if args.cold_start_only:
        out = tables([], cold)
        for t in out.values():
            print(t.text())
        print(f"wrote {write_json('ranking-cold', {'runs': cold})}")
        if not args.no_readme:
            print("tables rewritten:", update_docs(out) or "none (no markers)")
        return 0
    rows = run(args.data, args.folds.split(","), config)
    out = tables(rows, cold)
    for t in out.values():
        print(t.text())
    path = write_json("ranking", {"folds": args.folds.split(","), "runs": rows, "cold": cold,
                                  "relevance_config": config.to_dict()})
    print(f"wrote {path}")
    if not args.no_readme:
        print("tables rewritten:", update_docs(out) or "none (no markers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
