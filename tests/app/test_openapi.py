"""The published OpenAPI description says what the service does (tests/app/test_fuzz.py checks
it against a live server with every schemathesis check); here, what depends on settings."""

from __future__ import annotations

from typing import Any

import pytest

from app.main import create_app
from app.settings import Settings

KEYED = {"401", "403"}


def published(**values: Any) -> dict[str, Any]:
    schema: dict[str, Any] = create_app(Settings(api_keys="k", **values)).openapi()
    return schema


@pytest.mark.parametrize("protect_reads", [False, True])
def test_keys_are_declared_where_they_are_needed(protect_reads: bool) -> None:
    paths = published(protect_reads=protect_reads)["paths"]
    for path in ("/ratings", "/admin/reload"):
        operation = paths[path]["post"]
        assert set(operation["responses"]) >= KEYED and operation["security"] == [
            {"ApiKey": []}]
    for path, method in (("/predict", "post"), ("/recommend", "post"), ("/model", "get"),
                         ("/metrics", "get")):
        operation = paths[path][method]
        assert (set(operation["responses"]) >= KEYED) == protect_reads
        assert ({} in operation["security"]) == (not protect_reads)  # optional when open
    assert "security" not in paths["/healthz"]["get"]


def test_refusals_and_limits_are_declared() -> None:
    schema = published(max_movies=7, max_n=9, max_history=11, max_events=13)
    paths, models = schema["paths"], schema["components"]["schemas"]
    for path in ("/predict", "/recommend", "/ratings", "/admin/reload"):
        responses = paths[path]["post"]["responses"]
        assert {"400", "413", "422"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/HTTPValidationError"}
    for path in ("/predict", "/recommend", "/ratings"):
        assert "503" in paths[path]["post"]["responses"]
    assert "409" in paths["/admin/reload"]["post"]["responses"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert models["PredictRequest"]["properties"]["movies"]["maxItems"] == 7
    assert models["RecommendRequest"]["properties"]["n"]["maximum"] == 9
    rated = models["UserIn"]["properties"]["rated"]["anyOf"][0]
    assert rated["maxItems"] == 11
    assert models["RatingsRequest"]["properties"]["events"]["maxItems"] == 13
