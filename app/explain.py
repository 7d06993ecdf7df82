"""POST /explain and /recommend's "because you rated": the scores taken apart.

/explain rebuilds the full feature row of one (user, context, movie) from the same user
the scorer assembles (stored profile and history, inline overrides, context defaults)
and splits the score exactly over it (`model.explain`): O(nnz k), no cached sums, so it
answers for every feature. "Because you rated" needs only the history features, for
the ranked items at once: one matrix product over the user + context sum.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from app.schemas import ExplainRequest
from app.store import Store
from app.user_sums import (
    Bases,
    Histories,
    combine,
    history_weight,
    history_weighting,
)
from model.bundle import Bundle
from model.explain import (
    FMParams,
    explain_row,
    grouped,
    history_contributions,
    known_features,
    row_terms,
    top_columns,
)
from model.features import HISTORY_FIELD, STARS_FIELD, feature_hash

if TYPE_CHECKING:  # the scorer imports this module
    from app.scorer import Scorer

BECAUSE_N = 2  # rated movies named per recommended item
# /explain's field for the rating head's neighbourhood: per neighbour, what its residual adds
NEIGHBOURS_FIELD = "neighbours"


class SharedBucket(BaseModel):
    features: Annotated[int, Field(description="distinct known features in this hash "
                                               "bucket, this one included")]
    others: Annotated[list[str], Field(description="some of the others (up to 5)")]


class Contribution(BaseModel):
    field: str
    value: Annotated[str, Field(description="readable: a title, 'user 12', a date...")]
    feature: Annotated[str, Field(description="the hashed feature key")]
    contribution: float
    shared_bucket: SharedBucket | None = None


class FieldContributions(BaseModel):
    field: str
    contribution: Annotated[float, Field(description="sum of the field's features")]
    features: list[Contribution]


class ExplainResponse(BaseModel):
    model_id: str
    head: Annotated[str, Field(description="the head whose score this is")]
    movie_id: str
    title: str | None
    score: Annotated[float, Field(description="unclipped: bias + every contribution")]
    rating: Annotated[float | None, Field(description="rating head: the score clipped to "
                                                      "the rating range (relevance: null)")]
    bias: Annotated[float, Field(description="w0, the global bias")]
    fields: Annotated[list[FieldContributions], Field(
        description="contributions by field, largest total effect first")]


@dataclass
class _Explainer:
    """Per bundle: each head's parameters and, built on first use, the bucket index."""

    params: dict[str, FMParams]
    known: dict[int, set[str]] | None = None
    # (field name, movie) -> bucket, catalog movies only: a history is hashed on every
    # explained /recommend, ~half of its cost before
    rated_buckets: dict[tuple[str, str], int] = field(default_factory=dict)

    def rated_bucket(self, bundle: Bundle, name: str, movie: str) -> int:
        """The bucket of "user.<name>=<movie>" (name: "rated" or "rated_stars")."""
        bucket = self.rated_buckets.get((name, movie))
        if bucket is None:
            rated = next(f for f in bundle.spec.side_fields("user") if f.name == name)
            bucket = feature_hash(rated.token(movie), bundle.spec.hash_bits)
            if bundle.catalog.row(movie) is not None:
                self.rated_buckets[name, movie] = bucket
        return bucket


_explainers: weakref.WeakKeyDictionary[Bundle, _Explainer] = weakref.WeakKeyDictionary()


def _explainer(bundle: Bundle) -> _Explainer:
    found = _explainers.get(bundle)
    if found is None:
        params = {}
        for name, head in bundle.heads.items():
            engine: Any = head.engine  # NumPy's engine holds the arrays already
            params[name] = FMParams.of(
                engine if hasattr(engine, "V") else getattr(bundle.model, name).fm)
        found = _explainers[bundle] = _Explainer(params)
    return found


async def explain_request(scorer: Scorer, request: ExplainRequest, store: Store
                          ) -> ExplainResponse:
    """The score of /predict's request for its one movie under `request.head`, split over
    every feature the head reads."""
    bundle = scorer.bundle
    catalog, fmap = bundle.catalog, bundle.heads[request.head].fmap
    user, context = await scorer.user_and_context(request.user, request.context, store)
    movie = request.movies[0].payload()
    row = catalog.row(movie["id"]) if set(movie) == {"id"} else None
    item = catalog.payload(row) if row is not None else movie  # as the catalog encoded it
    rated, stars = user.rated or [], user.stars or []
    history = {HISTORY_FIELD: rated,
               STARS_FIELD: [[m, s] for m, s in zip(rated, stars, strict=True)]}
    terms = (row_terms(fmap, "user", {**user.base_payload, **history})
             + row_terms(fmap, "context", context) + row_terms(fmap, "item", item))
    explainer = _explainer(bundle)
    if explainer.known is None:  # hashes the catalog's vocabulary once: not in the loop
        explainer.known = await asyncio.to_thread(known_features, bundle.fmap, catalog)
    explained = explain_row(explainer.params[request.head], terms)
    found = catalog.row(movie["id"])
    fields = grouped(explained, fmap, catalog, explainer.known)
    score = explained.score
    if request.head == "rating" and row is not None:
        own = neighbour_group(bundle, {**user.base_payload, **history}, rated, stars, row)
        if own is not None:
            fields = sorted([*fields, own], key=lambda g: -abs(g["contribution"]))
            score += sum(f["contribution"] for f in own["features"])
    return ExplainResponse.model_validate({
        "model_id": scorer.model_id, "head": request.head, "movie_id": movie["id"],
        "title": str(catalog.titles[found]) if found is not None else None,
        "score": score,
        "rating": float(bundle.clip(np.array(score))) if request.head == "rating" else None,
        "bias": explained.bias, "fields": fields})


def neighbour_group(bundle: Bundle, user: dict[str, Any], rated: Sequence[str],
                    stars: Sequence[float | None], row: int) -> dict[str, Any] | None:
    """The rating head's neighbourhood correction of catalog row `row`, one feature per
    neighbour it reads (`model.neighbours`); None without neighbours or residuals."""
    if bundle.neighbours is None:
        return None
    head = bundle.heads["rating"]
    residuals = bundle.residuals(head.side_sums(head.fmap.encode("user", [user])), rated,
                                 stars)
    if residuals is None:
        return None
    rows, parts = bundle.neighbours.contributions(row, *residuals)
    if len(rows) == 0:
        return None
    catalog = bundle.catalog
    order = np.argsort(-np.abs(parts), kind="stable")
    features = [{"field": NEIGHBOURS_FIELD, "value": str(catalog.titles[rows[n]]),
                 "feature": f"{NEIGHBOURS_FIELD}={catalog.ids[rows[n]]}",
                 "contribution": float(parts[n])} for n in order.tolist()]
    return {"field": NEIGHBOURS_FIELD, "contribution": float(parts.sum()), "features": features}


def because_you_rated(bundle: Bundle, head: str, history_ids: Sequence[str],
                      stars: Sequence[float | None] | None, base: Bases, history: Histories,
                      context: dict[str, Any], rows: np.ndarray) -> list[list[dict[str, Any]]]:
    """Per ranked catalog row, the user's rated movies that add most to its score under
    `head` (the head that ranked), best first, with what they add: a movie's features
    together (it, and its stars where the head reads them; an inline history may repeat
    it). `base` and `history` are the user's parts of every head, in head order."""
    h = bundle.heads[head]
    position = list(bundle.heads).index(head)
    weighting = history_weighting(h.fmap.spec)
    if not history_ids or len(rows) == 0 or weighting is None:  # nothing rated counts
        return [[] for _ in range(len(rows))]
    explainer = _explainer(bundle)
    params = explainer.params[head]
    rated = list(dict.fromkeys(history_ids))
    column = {m: n for n, m in enumerate(rated)}
    g = history_weight(len(history_ids), weighting)
    occurrences = [(HISTORY_FIELD, m, g) for m in history_ids]
    graded = next((f for f in h.fmap.spec.side_fields("user") if f.name == STARS_FIELD), None)
    if graded is not None and stars is not None:
        occurrences += [(STARS_FIELD, m, g * (s - graded.centre))
                        for m, s in zip(history_ids, stars, strict=True) if s is not None]
    _, s_user, _ = combine(base[position], history[position], weighting, h.size_sums)
    ctx = h.fmap.encode("context", [context])  # its sum under the head, in NumPy
    s_ctx = (params.V[ctx.indices].astype(np.float64) * ctx.values[:, None]).sum(axis=0)
    indices = np.array([explainer.rated_bucket(bundle, name, m) for name, m, _ in occurrences])
    x = np.array([value for *_, value in occurrences], np.float64)
    per_occurrence = history_contributions(params, x, s_user + s_ctx, indices, h.items.s[rows])
    values = np.zeros((len(rows), len(rated)))  # summed per movie
    np.add.at(values.T, np.array([column[m] for _, m, _ in occurrences]), per_occurrence.T)
    catalog = bundle.catalog
    out = []
    for item, top in enumerate(top_columns(values, BECAUSE_N)):
        because = []
        for col in top.tolist():
            found = catalog.row(rated[col])
            because.append({"movie_id": rated[col], "contribution": float(values[item, col]),
                            "title": str(catalog.titles[found]) if found is not None else None})
        out.append(because)
    return out
