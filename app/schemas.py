"""Request and response bodies of the HTTP API (pydantic v2).

Ids may be sent as JSON numbers or strings and are strings from here on (MovieLens ids
are numbers in files but keys in the feature map). Numbers must be finite. Limits that
depend on settings (movies per request, n, history length) are checked by
`check_limits`; it and the scorer raise `InvalidInput`, which the app answers with the
same 422 body FastAPI gives for schema errors, so every refusal names its field alike.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StringConstraints,
    Tag,
    WithJsonSchema,
    model_validator,
)

from app.settings import Settings

MAX_ID_CHARS = 64
MAX_GENRES = 64


MAX_JSON_INT = 2**53 - 1  # exact in every JSON parser (JavaScript's Number.MAX_SAFE_INTEGER)


def _id_text(value: Any) -> Any:
    """JSON integers (also written 5.0, an integer to JSON Schema) become their decimal
    string; anything else is left to str validation. Integers past 2**53 - 1 are refused:
    most JSON parsers round them, so two ids could become one; send those as strings."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_JSON_INT:
            raise ValueError(f"integer ids must be within +-{MAX_JSON_INT}; send longer ids "
                             "as strings")
        return str(value)
    return value


def _json_number(value: Any) -> Any:
    """Numbers only, as the schema says: pydantic's lax mode would take "5" and true (and
    its strict mode would refuse 5.0, a JSON Schema integer)."""
    if isinstance(value, (str, bool, bytes)):
        raise ValueError("expected a JSON number")
    return value


# after the constraints (`Annotated[int, Field(ge=0), JsonNumber]`): before them, pydantic
# writes "ge" instead of "minimum" into the JSON schema
JsonNumber = BeforeValidator(_json_number)


def _not_blank(value: str) -> str:
    """After stripping: with the BeforeValidator, pydantic checks min_length before it
    strips, so "   " and "\t" would both pass as "" (and collide as one id)."""
    if not value:
        raise ValueError("must not be empty or only whitespace")
    return value


Id = Annotated[
    str, BeforeValidator(_id_text),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(_not_blank),
    WithJsonSchema({"anyOf": [
        {"type": "string", "maxLength": MAX_ID_CHARS, "pattern": r"\S"},
        {"type": "integer", "minimum": -MAX_JSON_INT, "maximum": MAX_JSON_INT}]}),
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                        pattern=r"\S")]


class Strict(BaseModel):
    """Unknown keys are refused (a misspelt "occupaton" must not be silently ignored); numbers
    and booleans must be JSON numbers and booleans (`JsonNumber`, `StrictBool`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RatedMovie(Strict):
    """A rated movie with its stars: the rating head reads how a user rated each movie
    (feature group "stars"), not only that they did."""

    id: Id
    stars: Annotated[float, Field(description="within the model's rating range"), JsonNumber]


def _rated_entry(value: Any) -> str:
    """Which form a `rated` entry has: an object is a movie with stars, else an id. Errors
    say which in their loc ([..., "rated", n, "id"] or [..., n, "movie", "stars"])."""
    return "movie" if isinstance(value, dict) else "id"


RatedEntry = Annotated[Annotated[Id, Tag("id")] | Annotated[RatedMovie, Tag("movie")],
                       Discriminator(_rated_entry)]


class UserIn(Strict):
    """A user by id (known to the store), inline (cold start), or both (inline wins)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [  # `_not_empty`, for the schema
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in ("id", "age", "gender", "occupation", "zip", "rated")]})

    id: Id | None = None
    age: Annotated[int, Field(ge=0, le=150), JsonNumber] | None = None
    gender: Text | None = None
    occupation: Text | None = None
    zip: Annotated[str, BeforeValidator(_id_text),
                   StringConstraints(strip_whitespace=True, max_length=16),
                   WithJsonSchema({"anyOf": [
                       {"type": "string", "maxLength": 16},
                       {"type": "integer", "minimum": -(10**15 - 1), "maximum": MAX_JSON_INT}
                   ]})] | None = None
    rated: Annotated[list[RatedEntry] | None, Field(
        description="movies the user rated, oldest first (replaces the stored history): "
                    "ids, or {id, stars}; a movie without stars counts as rated at the "
                    "training ratings' mean")] = None

    @model_validator(mode="after")
    def _not_empty(self) -> UserIn:
        if self.id is None and self.rated is None and not self.attributes():
            raise ValueError("give the user's id, or attributes / rated movies inline")
        return self

    def rated_movies(self) -> tuple[list[str], list[float | None]] | None:
        """The inline history as movie ids and their stars (None: not given)."""
        if self.rated is None:
            return None
        return ([m if isinstance(m, str) else m.id for m in self.rated],
                [None if isinstance(m, str) else m.stars for m in self.rated])

    def attributes(self) -> dict[str, Any]:
        """Inline attributes that were given (these override the stored profile)."""
        return {k: v for k, v in self.model_dump(exclude={"id", "rated"}).items()
                if v is not None}


class ContextIn(Strict):
    time: Annotated[Annotated[float, JsonNumber] | None, Field(
        description="unix seconds (default: now)")] = None
    last_movie: Annotated[Id | None, Field(
        description="default: the user's latest movie rated before `time`; null: none")] = None


class MovieIn(Strict):
    """A catalog movie by id, or a movie described inline (attributes override the catalog)."""

    id: Id
    genres: Annotated[list[Text] | None, Field(max_length=MAX_GENRES)] = None
    year: Annotated[int, Field(ge=0, le=9999), JsonNumber] | None = None

    def payload(self) -> dict[str, Any]:
        if self.genres is None and self.year is None:  # by id: cheaper than model_dump
            return {"id": self.id}
        return self.model_dump(exclude_none=True)


class PredictRequest(Strict):
    user: UserIn
    context: ContextIn | None = None
    movies: Annotated[list[MovieIn], Field(min_length=1)]


class ExplainRequest(PredictRequest):
    """/predict's body with one movie, and which head's score to take apart."""

    movies: Annotated[list[MovieIn], Field(min_length=1, max_length=1,
                                           description="exactly one movie")]

    head: Annotated[Literal["rating", "relevance"], Field(
        description="rating (default): the predicted rating of /predict; relevance: the "
                    "score /recommend ranks by")] = "rating"


class RecommendRequest(Strict):
    user: UserIn
    context: ContextIn | None = None
    n: Annotated[int, Field(ge=1), JsonNumber] = 10
    candidates: Annotated[list[Id] | None, Field(min_length=1)] = None
    exclude_rated: StrictBool = True
    genres: Annotated[list[Text] | None, Field(max_length=MAX_GENRES)] = None
    rank_by: Annotated[Literal["relevance", "rating"], Field(
        description="relevance (default): what the user is likely to watch next, from the "
                    "head trained on implicit feedback; rating: the highest rating "
                    "head FM score, which favours rarely watched movies")] = "relevance"
    explain: Annotated[bool, Field(description="items gain `because`: the user's rated "
                                               "movies that add most to their score (the "
                                               "ranking head's)")] = False


KNOWN = Field(description="false: the movie is not in the catalog and came without "
                         "attributes, so only its hashed id was scored")


class Prediction(BaseModel):
    movie_id: str
    rating: Annotated[float, Field(description="the rating head's FM score plus its "
                                               "neighbourhood's correction from the user's "
                                               "starred history, clipped to the rating range")]
    known: Annotated[bool, KNOWN]


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[Prediction]
    user_cached: bool


class Because(BaseModel):
    movie_id: str
    title: str | None
    contribution: Annotated[float, Field(description="what this rated movie adds to the score")]


class Recommendation(BaseModel):
    movie_id: str
    title: str
    score: Annotated[float, Field(description="the ranking key: the relevance, or the "
                                              "rating head's unclipped FM score with "
                                              "rank_by=rating")]
    relevance: Annotated[float, Field(description="the relevance head's score: higher is "
                                                  "likelier to be watched; comparable "
                                                  "within one user's list only")]
    rating: Annotated[float, Field(description="the rating head's FM score, clipped to "
                                               "the rating range; /predict also adds the "
                                               "neighbourhood's correction, which reads the "
                                               "user's stars")]
    known: Annotated[bool, KNOWN]
    because: Annotated[list[Because] | None, Field(
        description="with `explain`: top rated movies by contribution to `score`")] = None


class RecommendResponse(BaseModel):
    model_id: str
    rank_by: Literal["relevance", "rating"]
    path: Annotated[Literal["exact", "approximate"], Field(
        description="how the ranking was served: exact (the whole catalog scored) or "
                    "approximate (a catalog large enough to have an index: its best "
                    "candidates, re-scored exactly; see docs/ann.md)")]
    items: list[Recommendation]
    user_cached: bool


class ReloadRequest(Strict):
    bundle: Annotated[str | None, Field(min_length=1, max_length=4096)] = None


class InvalidInput(ValueError):
    """Input that passed the schema but not a later check; `loc` is the path in the body."""

    def __init__(self, loc: tuple[str | int, ...], message: str, value: Any = None) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.value = value

    def errors(self) -> list[dict[str, Any]]:
        """FastAPI's validation error entries."""
        return [{"type": "value_error", "loc": ["body", *self.loc], "msg": self.message,
                 "input": self.value}]


def check_limits(request: PredictRequest | RecommendRequest, settings: Settings) -> None:
    """Refuse requests over the configured sizes; the error names the field."""
    rated = request.user.rated
    if rated is not None and len(rated) > settings.max_history:
        raise InvalidInput(("user", "rated"), f"at most {settings.max_history} rated movies",
                      len(rated))
    if isinstance(request, PredictRequest):
        if len(request.movies) > settings.max_movies:
            raise InvalidInput(("movies",), f"at most {settings.max_movies} movies per request",
                          len(request.movies))
        return
    if request.n > settings.max_n:
        raise InvalidInput(("n",), f"n must be at most {settings.max_n}", request.n)
    if request.candidates is not None and len(request.candidates) > settings.max_movies:
        raise InvalidInput(("candidates",), f"at most {settings.max_movies} candidates",
                      len(request.candidates))


# --- POST /ratings (app/online.py) -----------------------------------------------------------

MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: milliseconds sent as seconds fail


class RatingEvent(Strict):
    """One rating; `event_id` makes it idempotent (a retried event is not counted twice)."""

    event_id: Id
    user_id: Id
    movie_id: Annotated[Id, Field(description="a catalog movie, or any other id (stored and "
                                              "listed as unknown)")]
    rating: Annotated[float, Field(description="within the model's rating range"), JsonNumber]
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP, description="unix seconds"),
                         JsonNumber]


class RatingsRequest(Strict):
    events: Annotated[list[RatingEvent], Field(
        min_length=1, description="stored all together or not at all (FMREC_MAX_EVENTS)")]


class RatingsResponse(BaseModel):
    model_id: str
    accepted: Annotated[int, Field(description="events recorded now (event ids new)")]
    duplicates: Annotated[int, Field(description="event ids seen before: skipped")]
    stale: Annotated[int, Field(description="accepted events older than the stored rating "
                                            "of the same user and movie, which stays")]
    unknown_movies: Annotated[list[str], Field(description="movies of this batch that the "
                                                          "model's catalog lacks")]
