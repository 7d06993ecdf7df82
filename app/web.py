"""The try-it page at `/` and the one read-only endpoint it needs besides the API.

The page (app/web/: plain HTML, JS and CSS, no build step, nothing fetched from the
network) calls /catalog once, then /recommend, /explain and /ratings like any client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.routes import ScoringDep

WEB_DIR = Path(__file__).resolve().parent / "web"
SAMPLE_USERS = 50  # training users /catalog suggests on the page

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


def _user_order(uid: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order (MovieLens: 1, 2, ... 943), then the rest."""
    return (0, int(uid)) if uid.isdigit() else (1, uid)


@router.get("/catalog")
async def catalog(scoring: ScoringDep) -> dict[str, Any]:
    """The served model's movies (id, title, year or null, genres), its genre names and
    up to 50 of its training users to try (read-only; what the page at / shows)."""
    catalog = scoring.scorer.bundle.catalog
    users = sorted({u for raters in catalog.raters for u in raters}, key=_user_order)
    return {
        "model_id": scoring.scorer.model_id, "genres": catalog.genre_names,
        "users": users[:SAMPLE_USERS],
        "movies": [{"id": str(i), "title": str(t), "year": int(y) or None, "genres": g}
                   for i, t, y, g in zip(catalog.ids.tolist(), catalog.titles.tolist(),
                                         catalog.years.tolist(), catalog.genres, strict=True)],
    }


def static_files() -> StaticFiles:
    """The page's script and style sheet, mounted at /web."""
    return StaticFiles(directory=WEB_DIR)
