"""The relevance head: an FM over the same feature map, trained to rank what users watch.

Why a second head: a rating-trained FM answers "how much would u like i *if* u watched
it", so its top-N is led by obscure movies with a few high ratings (P@10 0.04 on ML-100k
ua, a third of a most-popular list). What users want from /recommend is "what will u
watch next", which is learnt from implicit feedback: every rating is an observed event.

Loss: softmax over the catalog. For the event (u, c, i) the logits are the FM scores of
(u, c, j) for every movie j; the terms that depend on the user and context alone are the
same for all j and cancel, so a logit is <a, s_j> + b_j (a = user + context sums, b_j the
movie's own terms: `model.fm.item_bias`), one matrix product per batch. The user's other
rated movies are masked out of each softmax: serving never recommends them, and counting
them as negatives teaches the model to push down exactly what the user likes. Catalogs
larger than `max_softmax_items` use a shared sample of negatives per batch, drawn by
popularity, with the logQ correction (Bengio & Senecal 2008; Yi et al. 2019).

The user's history leaves out the event's own movie, as in rating training
(`model.blocks`): at serving time the movie to rank is never in the history.
Early stopping is on NDCG@10 of a per-user holdout, ranked exactly as serving ranks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from model.batch_sums import Tables, block_sums, wide_sides
from model.blocks import (
    Block,
    EncodedRatings,
    Operand,
    Sides,
    encode_ratings,
    item_payload,
    item_raters,
    used_columns,
    user_histories,
    user_payload,
)
from model.data import Dataset, Ratings
from model.engine import rank, segment_sum
from model.evaluate import ranking_metrics
from model.features import (
    FeatureMap,
    FeatureSpec,
    Field,
    SparseRows,
    context_payload,
    feature_hash,
)
from model.fm import FactorizationMachine, average_of
from model.optim import TableOptimizer

#: The fields the relevance head reads by default, chosen on ML-100k ua (README):
#: the last movie, time, session and user attributes made its top-10 worse.
RELEVANCE_FIELDS = ("user.id", "user.rated", "item.id", "item.genres", "item.year",
                    "user.history_size")


@dataclass(frozen=True)
class RelevanceConfig:
    """Hyper-parameters of the relevance head; defaults tuned on ML-100k ua.base and the
    cold start of bench/ranking.py (docs/ranking.md has every variant measured)."""

    fields: tuple[str, ...] = RELEVANCE_FIELDS
    k: int = 64
    epochs: int = 30
    batch_size: int = 2048
    learning_rate: float = 0.002
    l2: float = 1e-5  # on every trained w and V, per step
    init_std: float = 0.01
    patience: int = 2  # epochs without a better validation NDCG@10
    validation_per_user: int = 3  # held-out ratings per user for early stopping
    max_softmax_items: int = 20_000  # larger catalogs: sampled softmax
    sampled_negatives: int = 4096
    seed: int = 0
    members: int = 1  # heads from seeds seed.., exported as their average
    history_dropout: float = 0.0  # per event: share of the user's other movies dropped
    refit: bool = True  # retrain on all ratings for the early-stopped epoch count
    user_weight_power: float = 0.5  # an event's loss weight: n_user ** -power (normalised)
    new_user_share: float = 0.1  # per event: chance its query is a new user's (cold start)
    new_user_max_rated: int = 5  # such a query reads 1..this many of the user's movies
    average: float = 0.99  # > 0: validate and export a debiased EMA of the weights (decay)
    # training's softmax reads the scores / this (any T ranks alike): 0.5 ranks as well as
    # 1 in two thirds of the training, stopping earlier (docs/ranking.md)
    temperature: float = 0.5

    def __post_init__(self) -> None:
        if self.history_dropout and self.new_user_share:
            raise ValueError("history_dropout and new_user_share both rewrite the query: "
                             "choose one")
        if not 0.0 < self.temperature < float("inf"):
            raise ValueError("temperature must be a positive number")
        if not 0.0 <= self.new_user_share <= 1.0 or self.new_user_max_rated < 1:
            raise ValueError("new_user_share is a share in [0, 1] and new_user_max_rated "
                             ">= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RelevanceResult:
    model: FactorizationMachine  # over all 2**hash_bits columns, w0 = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def head_spec(spec: FeatureSpec, fields: Sequence[str]) -> FeatureSpec:
    """The part of `spec` a head reads (unknown field keys are an error)."""
    unknown = sorted(set(fields) - {f.key for f in spec.fields})
    if unknown:
        raise ValueError(f"relevance fields {unknown} are not in the feature spec")
    if "item.raters" in fields:  # a movie's raters include the user of every positive
        raise ValueError("the relevance head cannot read item.raters: the user is among "
                         "the raters of every movie it is trained to rank first")
    return spec.only(fields)


def catalog_payloads(data: Dataset, history: Ratings) -> tuple[list[str], list[dict[str, Any]]]:
    """Catalog movie ids (sorted, the bundle's row order) and their payloads."""
    ids = sorted(data.items)
    raters = item_raters(history)
    return ids, [item_payload(i, data.items[i], raters.get(i, [])) for i in ids]


def query_contexts(history: Ratings) -> dict[str, dict[str, Any]]:
    """Per user, the context of "now" at the end of `history`: its last time and movie.

    Offline rankings (validation, `fmrec evaluate`, bench/ranking.py) use it, and a
    request that sends it as its context gets the same list from /recommend.
    """
    order = np.argsort(history.timestamp, kind="stable")
    out: dict[str, dict[str, Any]] = {}
    for u, m, t in zip(history.user[order].tolist(), history.item[order].tolist(),
                       history.timestamp[order].tolist(), strict=True):
        out[str(u)] = context_payload(str(u), int(t), str(m))
    return out


def rated_rows(history: Ratings, users: Sequence[str], catalog: dict[str, int]
               ) -> SparseRows:
    """Per user (in `users` order), the catalog rows of the movies rated in `history`."""
    rated = user_histories(history)
    lists = [sorted({catalog[m] for m in rated.get(u, []) if m in catalog}) for u in users]
    indptr = np.cumsum([0] + [len(r) for r in lists]).astype(np.int64)
    flat = np.array([r for rows in lists for r in rows], dtype=np.int32)
    return SparseRows(indptr, flat, np.ones(len(flat), np.float32))


def rank_catalog(query_s: np.ndarray, item_s: np.ndarray, item_b: np.ndarray,
                 exclude: SparseRows, n: int) -> np.ndarray:
    """Top n catalog rows per query by <a, s_j> + b_j, rated rows left out (offline;
    ties by the lower row, as the engines rank)."""
    return rank_scores(query_s @ item_s.T + item_b[None, :], exclude, n)


def rank_scores(scores: np.ndarray, exclude: SparseRows, n: int) -> np.ndarray:
    """Top n columns per row of `scores` (queries x catalog), `exclude` left out."""
    scores = scores.astype(np.float32)
    no_filter = np.zeros(len(scores), np.int64)  # offline: no genre filter
    return rank(scores, np.zeros(scores.shape[1], np.int64), exclude.row_ids(),
                exclude.indices, no_filter, n)[0]


class RelevanceTrainer:
    """The compact relevance FM, its optimizer and its masked softmax loss."""

    def __init__(self, columns: np.ndarray, n_features: int, config: RelevanceConfig,
                 items: SparseRows, popularity: np.ndarray) -> None:
        self.config = config
        self.columns = columns
        self.n_features = n_features
        self.fm = FactorizationMachine(len(columns), config.k, init_std=config.init_std,
                                       seed=config.seed)
        self.optimizer = TableOptimizer("adam", config.learning_rate, [self.fm.w, self.fm.V])
        # with `average`, what is validated and exported is a debiased moving average of
        # the trajectory (as the rating head's `model.train.Trainer`); `fm` is what steps
        self.averaged = FactorizationMachine(len(columns), config.k, init_std=0.0)
        self._ema_steps = tf.Variable(0.0)
        self._sync_average()
        self.items = Operand(*map(tf.constant, Operand.of(items.remap(columns))))
        self.n_items = items.n_rows
        self.sampled = self.n_items > config.max_softmax_items
        share = np.maximum(popularity, 1).astype(np.float64) ** 0.5
        self.sample_p = share / share.sum()
        self.step = tf.function(self._step, reduce_retracing=True)

    @property
    def scored(self) -> FactorizationMachine:
        """The weights validation ranks with and `export` writes (the average, if any)."""
        return self.averaged if self.config.average else self.fm

    def _sync_average(self) -> None:
        self._ema_steps.assign(0.0)
        self.averaged.w.assign(self.fm.w)
        self.averaged.V.assign(self.fm.V)

    def _update_average(self, decay: float) -> None:
        """avg += (1 - d) / (1 - d^t) (w - avg): the debiased EMA (avg_1 = w_1)."""
        self._ema_steps.assign_add(1.0)
        rate = (1.0 - decay) / (1.0 - tf.pow(decay, self._ema_steps))
        self.averaged.w.assign_add(rate * (self.fm.w - self.averaged.w))
        self.averaged.V.assign_add(rate * (self.fm.V - self.averaged.V))

    def item_sums(self, fm: FactorizationMachine | None = None
                  ) -> tuple[tf.Tensor, tf.Tensor]:
        """(s_j, b_j) of every catalog movie under `fm`'s parameters (the stepped ones)."""
        sums, _ = block_sums(Tables.of(fm or self.fm), self.items)
        return sums.s, sums.L + 0.5 * (tf.reduce_sum(tf.square(sums.s), axis=1) - sums.q)

    def query(self, users: Operand, contexts: Block, left_out: Block, row_user: tf.Tensor
              ) -> tf.Tensor:
        """a = user + context sums (minus the left-out occurrences) of each row."""
        tables = Tables.of(self.fm)
        user, _ = block_sums(tables, users)
        ctx, _ = block_sums(tables, contexts)
        out, _ = block_sums(tables, left_out)
        return tf.gather(user.s, row_user) + ctx.s - out.s

    def _step(self, users: Operand, contexts: Block, left_out: Block, row_user: tf.Tensor,
              target: tf.Tensor, masked: tf.Tensor, candidates: tf.Tensor,
              log_q: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """One step; `candidates` are the columns of the softmax (all movies, or the
        targets plus a sample), `masked` (rows, columns) True where the user rated, `weight`
        each event's share of the loss (sums to 1)."""
        with tf.GradientTape() as tape:
            a = self.query(Operand(*users), Block(*contexts), Block(*left_out), row_user)
            item_s, item_b = self.item_sums()
            s, b = tf.gather(item_s, candidates), tf.gather(item_b, candidates)
            scores = tf.matmul(a, s, transpose_b=True) + b[None, :]
            logits = scores / self.config.temperature - log_q[None, :]
            logits = tf.where(masked, tf.constant(-1e9), logits)
            loss = tf.reduce_sum(
                weight * tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits))
            reg = self.config.l2 * (tf.reduce_sum(tf.square(self.fm.w))
                                    + tf.reduce_sum(tf.square(self.fm.V)))
            total = loss + reg
        grads = tape.gradient(total, [self.fm.w, self.fm.V])
        self.optimizer.apply(grads)
        if self.config.average:
            self._update_average(self.config.average)
        return loss

    def export(self) -> FactorizationMachine:
        """The head over all 2**hash_bits columns; untrained ones are zero, w0 is 0."""
        fm = FactorizationMachine(self.n_features, self.config.k, init_std=0.0)
        fm.w.scatter_nd_update(self.columns[:, None], self.scored.w)
        fm.V.scatter_nd_update(self.columns[:, None], self.scored.V)
        return fm

    def snapshot(self) -> list[np.ndarray]:
        """The weights that are scored (the average, with `average`)."""
        return [self.scored.w.numpy(), self.scored.V.numpy()]

    def restore(self, values: list[np.ndarray]) -> None:
        self.fm.w.assign(values[0])
        self.fm.V.assign(values[1])
        self._sync_average()


@dataclass(frozen=True)
class Events:
    """The positive events one training run reads, in the trainer's compact columns."""

    data: EncodedRatings
    target: np.ndarray  # per event: catalog row of its movie
    rated: SparseRows  # per encoded user row: its rated catalog rows
    history: SparseRows  # per encoded user row: its user.rated occurrences
    movie_column: np.ndarray  # per catalog row: column of user.rated=<movie> (-1: none)
    id_column: np.ndarray  # per encoded user row: column of its user.id (-1: none)
    rated_weighting: str  # "sqrt" or "mean": how a history of n movies weighs each
    weight: np.ndarray  # per event: loss weight before the per-batch normalisation
    size_column: np.ndarray  # per encoded user row: column of its history-size token (-1)
    sizes: np.ndarray  # per history size m (0..new_user_max_rated): its token's column (-1)


def history_dropout(events: Events, rows: np.ndarray, rate: float,
                    rng: np.random.Generator) -> SparseRows:
    """Per event in `rows`: occurrences to subtract so that its user's other movies are
    dropped with probability `rate` and the kept ones count 1/(1 - rate) (inverted
    dropout: the expected query is the full one). The event's own movie is left out
    already (`model.blocks`) and is not touched."""
    per = events.history.take(events.data.row_user[rows])
    row = per.row_ids()
    other = per.indices != events.movie_column[events.target[rows]][row]
    drop = rng.random(per.nnz) < rate
    values = np.where(drop, per.values, -per.values * rate / (1.0 - rate))[other]
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(np.bincount(row[other], minlength=len(rows)), out=indptr[1:])
    return SparseRows(indptr, per.indices[other], values.astype(np.float32))


def new_user_queries(events: Events, rows: np.ndarray, share: float, max_rated: int,
                     rng: np.random.Generator) -> SparseRows:
    """Per event in `rows`: occurrences to subtract so that, with probability `share`, its
    query is a new user's as the service would see one: no user id, and m of the user's
    other movies (m uniform in 1..max_rated, at most all), weighted as a history of m,
    and the history-size token of m in place of the user's own (if the head reads one).

    Why: a user's movies are weighted 1/sqrt(n), so a known user's query is built from
    ~100 movies and a new user's from the handful it sends; trained on full histories
    only, the head ranks such a short query little better than by popularity (the cold
    start of bench/ranking.py). The event's own movie is left out already and is never
    kept; events not drawn get nothing.
    """
    n = len(rows)
    chosen = rng.random(n) < share
    per = events.history.take(events.data.row_user[rows])
    row = per.row_ids()
    own = per.indices == events.movie_column[events.target[rows]][row]
    first_own = np.zeros(per.nnz, bool)  # the occurrence the event's left-out removes
    own_at = np.flatnonzero(own)
    first_own[own_at[np.unique(row[own_at], return_index=True)[1]]] = True
    other = chosen[row] & ~own
    count = np.bincount(row[other], minlength=n)
    m = np.minimum(rng.integers(1, max_rated + 1, n), count)
    at = np.flatnonzero(other)
    shuffled = at[np.lexsort((rng.random(len(at)), row[at]))]  # by row, random within
    starts = np.cumsum(count) - count
    rank = np.arange(len(shuffled)) - starts[row[shuffled]]
    kept = np.zeros(per.nnz, bool)
    kept[shuffled[rank < m[row[shuffled]]]] = True
    size = np.maximum(m, 1).astype(np.float64)
    weight = 1.0 / (size if events.rated_weighting == "mean" else np.sqrt(size))
    values = np.where(kept, per.values - weight[row], per.values)
    take = chosen[row] & ~first_own  # every other occurrence goes, the kept come back
    id_column = events.id_column[events.data.row_user[rows]]
    with_id = np.flatnonzero(chosen & (id_column >= 0))
    old_size = events.size_column[events.data.row_user[rows]]
    with_old = np.flatnonzero(chosen & (old_size >= 0))
    new_size = events.sizes[m]
    with_new = np.flatnonzero(chosen & (new_size >= 0))
    out_row = np.concatenate([row[take], with_id, with_old, with_new])
    order = np.argsort(out_row, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(out_row, minlength=n), out=indptr[1:])
    indices = np.concatenate([per.indices[take], id_column[with_id], old_size[with_old],
                              new_size[with_new]])
    values = np.concatenate([values[take], np.ones(len(with_id) + len(with_old)),
                             -np.ones(len(with_new))])
    return SparseRows(indptr, indices[order].astype(np.int32),
                      values[order].astype(np.float32))


def _batch_args(trainer: RelevanceTrainer, events: Events, rows: np.ndarray,
                sides: Sides, rng: np.random.Generator) -> tuple[Any, ...]:
    """The step's tensors for the events `rows` (users encoded once per batch, or all
    of them from `sides`)."""
    data, target, rated = events.data, events.target, events.rated
    batch = data.batch(rows, sides)
    config = trainer.config
    rewrites: list[SparseRows] = []  # of the query: subtracted after the own movie
    if config.history_dropout > 0:
        rewrites.append(history_dropout(events, rows, config.history_dropout, rng))
    if config.new_user_share > 0:
        rewrites.append(new_user_queries(events, rows, config.new_user_share,
                                         config.new_user_max_rated, rng))
    left_out = (Block.of(SparseRows.concat_columns([data.left_out.take(rows), *rewrites]))
                if rewrites else batch.left_out)
    per_row = rated.take(data.row_user[rows])  # per event: its user's rated catalog rows
    pos = target[rows]
    if trainer.sampled:
        sample = rng.choice(trainer.n_items, trainer.config.sampled_negatives,
                            p=trainer.sample_p)
        candidates = np.unique(np.concatenate([pos, sample]))
        log_q = np.log(trainer.sample_p[candidates] * trainer.config.sampled_negatives)
        column = np.full(trainer.n_items, -1, np.int64)
        column[candidates] = np.arange(len(candidates))
    else:
        candidates = np.arange(trainer.n_items)
        log_q = np.zeros(trainer.n_items)
        column = candidates
    pair_row, pair_col = per_row.row_ids(), column[per_row.indices]
    keep = (pair_col >= 0) & (per_row.indices != pos[pair_row])
    # dense: scattering ~400,000 (row, column) pairs per ML-100k batch cost a third of
    # the step, a mask as wide as the softmax costs a select
    masked = np.zeros((len(rows), len(candidates)), bool)
    masked[pair_row[keep], pair_col[keep]] = True
    weight = events.weight[rows]
    return (tuple(batch.users), tuple(batch.contexts), tuple(left_out),
            batch.row_user, column[pos].astype(np.int32), masked,
            candidates.astype(np.int32), log_q.astype(np.float32),
            (weight / weight.sum()).astype(np.float32))


class Validation:
    """NDCG@10 of ranking each holdout user's catalog, as serving ranks it."""

    def __init__(self, fmap: FeatureMap, data: Dataset, fit: Ratings, held_out: Ratings,
                 catalog: dict[str, int], columns: np.ndarray) -> None:
        self.users = sorted(set(held_out.user.tolist()))
        rated = user_histories(fit)
        contexts = query_contexts(fit)
        self.user_rows = fmap.encode("user", [
            user_payload(u, data.users.get(u, {}), rated.get(u, [])) for u in self.users
        ]).remap(columns)
        self.ctx_rows = fmap.encode("context", [contexts.get(u, {}) for u in self.users]
                                    ).remap(columns)
        self.exclude = rated_rows(fit, self.users, catalog)
        self.relevant: dict[str, set[str]] = {}
        for u, m in zip(held_out.user.tolist(), held_out.item.tolist(), strict=True):
            self.relevant.setdefault(str(u), set()).add(str(m))
        self.catalog_ids = np.array(sorted(catalog, key=catalog.__getitem__))

    def ndcg(self, trainer: RelevanceTrainer) -> float:
        tables = Tables.of(trainer.scored)
        user, _ = block_sums(tables, Block.of(self.user_rows))
        ctx, _ = block_sums(tables, Block.of(self.ctx_rows))
        item_s, item_b = trainer.item_sums(trainer.scored)
        top = rank_catalog((user.s + ctx.s).numpy(), item_s.numpy(), item_b.numpy(),
                           self.exclude, 10)
        ranked = {u: self.catalog_ids[row].tolist()
                  for u, row in zip(self.users, top, strict=True)}
        return ranking_metrics(ranked, self.relevant, 10)["ndcg"]


def holdout(ratings: Ratings, per_user: int, seed: int) -> tuple[Ratings, Ratings]:
    """(fit, held out): `per_user` random ratings of every user with > 3x as many."""
    rng = np.random.default_rng(seed)
    users = ratings.user.astype(str)
    order = rng.permutation(len(ratings))
    order = order[np.argsort(users[order], kind="stable")]
    sorted_users = users[order]
    starts = np.searchsorted(sorted_users, sorted_users, side="left")
    ends = np.searchsorted(sorted_users, sorted_users, side="right")
    picked = (np.arange(len(order)) - starts < per_user) & (ends - starts > 3 * per_user)
    mask = np.zeros(len(ratings), bool)
    mask[order[picked]] = True
    return ratings.subset(np.flatnonzero(~mask)), ratings.subset(np.flatnonzero(mask))


def train_relevance(data: Dataset, spec: FeatureSpec, config: RelevanceConfig,
                    progress: bool = True) -> RelevanceResult:
    """Train `config.members` heads (seeds seed, seed+1, ...) on `data.train` and average
    them into one FM (`model.fm.average_of`: exactly the mean of their logits)."""
    runs = [_train_one(data, spec, replace(config, seed=config.seed + m), progress)
            for m in range(max(config.members, 1))]
    if len(runs) == 1:
        return runs[0]
    return RelevanceResult(average_of([r.model for r in runs]), runs[0].history,
                           runs[0].best_epoch, sum(r.seconds for r in runs))


def _events(fmap: FeatureMap, data: Dataset, ratings: Ratings, config: RelevanceConfig,
            catalog: dict[str, int], items: SparseRows) -> tuple[Events, np.ndarray]:
    """`ratings` (movies in the catalog) as training events, and the trainer's columns."""
    known = np.array([m in catalog for m in ratings.item.astype(str)], bool)
    ratings = ratings.subset(np.flatnonzero(known))
    encoded = encode_ratings(fmap, data, ratings, ratings)
    users = sorted(set(ratings.user.astype(str).tolist()))  # = encoded user rows
    rated = user_histories(ratings)
    size_field = next((f for f in fmap.spec.side_fields("user") if f.kind == "size"), None)
    size_tokens: list[int] = []  # trainable even if no training user has such a history
    if size_field is not None:
        size_tokens = [feature_hash(size_field.token(size_field.size_value(n)),
                                    fmap.spec.hash_bits) for n in range(1, size_field.below)]
    columns = np.union1d(np.union1d(used_columns(encoded), items.indices),
                         np.array(size_tokens, np.int64))
    field = next((f for f in fmap.spec.fields if f.key == "user.rated"), None)
    if field is None:
        history = SparseRows(np.zeros(len(users) + 1, np.int64), np.zeros(0, np.int32),
                             np.zeros(0, np.float32))
        movie_column = np.full(len(catalog), -1, np.int64)
    else:
        history = FeatureMap(fmap.spec.only(["user.rated"])).encode(
            "user", [{"rated": rated[u]} for u in users]).remap(columns)
        movie_column = _columns_of(field, sorted(catalog, key=catalog.__getitem__),
                                   fmap.spec.hash_bits, columns)
    target = np.array([catalog[m] for m in ratings.item.astype(str)], np.int64)
    id_field = next((f for f in fmap.spec.fields if f.key == "user.id"), None)
    id_column = (np.full(len(users), -1, np.int64) if id_field is None
                 else _columns_of(id_field, users, fmap.spec.hash_bits, columns))
    counts = np.bincount(encoded.row_user)[encoded.row_user].astype(np.float64)  # n_user
    weight = counts ** -config.user_weight_power
    events = Events(encoded.remap(columns), target, rated_rows(ratings, users, catalog),
                    history, movie_column, id_column,
                    field.weighting if field is not None else "sqrt",
                    weight * len(weight) / weight.sum(),
                    _size_columns(size_field, [len(rated[u]) for u in users],
                                  fmap.spec.hash_bits, columns),
                    _size_columns(size_field, range(config.new_user_max_rated + 1),
                                  fmap.spec.hash_bits, columns))
    return events, columns


def _size_columns(field: Field | None, sizes: Iterable[int], hash_bits: int,
                  columns: np.ndarray) -> np.ndarray:
    """The trainer's column of the history-size token of each size (-1: it has none)."""
    values = [None if field is None else field.size_value(n) for n in sizes]
    if field is None or all(v is None for v in values):
        return np.full(len(values), -1, np.int64)
    found = _columns_of(field, [v or "" for v in values], hash_bits, columns)
    return np.where([v is None for v in values], -1, found)


def _columns_of(field: Field, values: Sequence[str], hash_bits: int, columns: np.ndarray
                ) -> np.ndarray:
    """The trainer's column of `field`=value for each value (-1: not among `columns`)."""
    hashed = np.array([feature_hash(field.token(v), hash_bits) for v in values], np.int64)
    at = np.minimum(np.searchsorted(columns, hashed), len(columns) - 1)
    return np.where(columns[at] == hashed, at, -1)


def _train_one(data: Dataset, spec: FeatureSpec, config: RelevanceConfig,
               progress: bool) -> RelevanceResult:
    """One head on `data.train` (all ratings are positive events).

    Early-stopped on a per-user holdout of the training ratings; with `config.refit` a
    fresh head is then trained on all of them for the best epoch count.
    """
    fmap = FeatureMap(head_spec(spec, config.fields))
    fit, held_out = holdout(data.train, config.validation_per_user, config.seed)
    ids, payloads = catalog_payloads(data, fit)
    catalog = {m: n for n, m in enumerate(ids)}
    items = fmap.encode("item", payloads)
    events, columns = _events(fmap, data, fit, config, catalog, items)
    fit = fit.subset(np.flatnonzero([m in catalog for m in fit.item.astype(str)]))
    validation = (Validation(fmap, data, fit, held_out, catalog, columns)
                  if len(held_out) else None)
    start = time.perf_counter()
    result = _epochs(events, columns, spec.n_features, config, items, validation,
                     config.epochs, progress)
    if config.refit and validation is not None:
        events, columns = _events(fmap, data, data.train, config, catalog, items)
        refit = _epochs(events, columns, spec.n_features, config, items, None,
                        result.best_epoch, progress)
        result.model = refit.model
        result.history += [{**row, "refit": 1.0} for row in refit.history]
    result.seconds = time.perf_counter() - start
    return result


def _epochs(events: Events, columns: np.ndarray, n_features: int, config: RelevanceConfig,
            items: SparseRows, validation: Validation | None, epochs: int,
            progress: bool) -> RelevanceResult:
    """Train a fresh head on `events` for up to `epochs`; with a validation, stop after
    `patience` epochs without a better NDCG@10 and keep the best epoch's weights."""
    popularity = np.bincount(events.target, minlength=items.n_rows)
    trainer = RelevanceTrainer(columns, n_features, config, items, popularity)
    rng = np.random.default_rng(config.seed)
    sides = wide_sides(events.data, config.batch_size)
    result = RelevanceResult(trainer.fm)
    best, best_values, waited = -1.0, trainer.snapshot(), 0
    bar = tqdm(range(1, epochs + 1), desc="relevance", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        order = rng.permutation(len(events.data))
        losses = [float(trainer.step(*_batch_args(trainer, events,
                                                  order[i:i + config.batch_size], sides, rng)))
                  for i in range(0, len(order), config.batch_size)]
        row = {"epoch": epoch, "loss": float(np.mean(losses)),
               "seconds": time.perf_counter() - t0}
        if validation is not None:
            row["val_ndcg10"] = validation.ndcg(trainer)
        result.history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if validation is None:
            result.best_epoch = epoch
            continue
        if row["val_ndcg10"] > best + 1e-5:
            best, best_values, waited, result.best_epoch = row["val_ndcg10"], \
                trainer.snapshot(), 0, epoch
        else:
            waited += 1
            if waited >= config.patience:
                break
    trainer.restore(best_values if validation is not None else trainer.snapshot())
    result.model = trainer.export()
    return result


def catalog_scores(fm: FactorizationMachine, fmap: FeatureMap, data: Dataset
                   ) -> tuple[list[str], list[str], np.ndarray]:
    """(test users, catalog ids, scores): each test user's score of every catalog movie
    under `fm` (any head), straight from its weights, without the terms of the user
    alone (the same for every movie, so no ranking or per-user standardisation moves)."""
    w, V = fm.w.numpy(), fm.V.numpy()

    def sums(rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, x = rows.indices, rows.values
        return (segment_sum(w[idx] * x, rows.indptr),
                segment_sum(V[idx] * x[:, None], rows.indptr),
                segment_sum(np.square(V[idx]).sum(axis=1) * np.square(x), rows.indptr))

    ids, payloads = catalog_payloads(data, data.train)
    item_L, item_s, item_q = sums(fmap.encode("item", payloads))
    item_b = item_L + 0.5 * (np.einsum("ij,ij->i", item_s, item_s) - item_q)
    users = sorted({str(u) for u in data.test.user.tolist()})
    rated = user_histories(data.train)
    contexts = query_contexts(data.train)
    _, user_s, _ = sums(fmap.encode("user", [
        user_payload(u, data.users.get(u, {}), rated.get(u, [])) for u in users]))
    _, ctx_s, _ = sums(fmap.encode("context", [contexts.get(u, {}) for u in users]))
    return users, ids, (user_s + ctx_s) @ item_s.T + item_b[None, :]


def rank_fm(fm: FactorizationMachine, fmap: FeatureMap, data: Dataset, n: int = 10
            ) -> dict[str, list[str]]:
    """Each test user's top-n unrated movies under `fm` (any head): what
    `model.evaluate.rank_bundle` gets from the saved bundle (tested)."""
    users, ids, scores = catalog_scores(fm, fmap, data)
    catalog = {m: r for r, m in enumerate(ids)}
    top = rank_scores(scores, rated_rows(data.train, users, catalog), n)
    return {u: [ids[r] for r in row] for u, row in zip(users, top.tolist(), strict=True)}
