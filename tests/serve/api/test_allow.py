"""`Allow` of a 405 lists every method the path answers (RFC 9110 15.5.6), with the usual JSON
error body. Routing happens before the model and index are needed: the app is never started."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_fuzz import fuzz_settings

from coins.serve.api.app import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(fuzz_settings(Path("never-loaded"))))


def allowed(response) -> set[str]:
    return {m.strip() for m in response.headers["allow"].split(",")}


@pytest.mark.parametrize(
    ("method", "path", "methods"),
    [
        ("PUT", "/v1/items", {"GET", "POST", "DELETE"}),  # items.py's GET, admin.py's others
        ("HEAD", "/v1/items", {"GET", "POST", "DELETE"}),  # FastAPI's GET routes take no HEAD
        ("POST", "/v1/items/7", {"GET"}),
        ("GET", "/v1/search", {"POST"}),
        ("POST", "/static/app.js", {"GET", "HEAD"}),  # a mount's app gives its own
    ],
)
def test_405_allows_exactly_the_methods_of_the_path(client, method, path, methods) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert allowed(response) == methods
    if method != "HEAD":
        assert response.json() == {"status": 405, "message": "Method Not Allowed"}
