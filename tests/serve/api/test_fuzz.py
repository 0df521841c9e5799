"""The whole search API fuzzed from its OpenAPI document by schemathesis, in process (ASGI).

Every route, the admin ones with the API key, gets schemathesis' example, coverage and random
cases of the document told what the server checks (tests/support/serve_fuzz.py); a scenario test
follows links between routes (list, search, delete, get, add, reload). A correct server answers
all of them without a 5xx, and every documented answer fits its schema. Budgets are small and
derandomized; benchmarks/fuzz_serve.py runs the long version.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hypothesis
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, settings
from serve_fakes import DIM
from serve_fuzz import (
    CHECKS,
    KEY,
    STATEFUL_CHECKS,
    IndexArtifacts,
    build_gallery_index,
    fuzz_settings,
    load_schema,
    restore,
    served_document,
    wait_ready,
    walk,
)

from coins.serve.api.app import create_app

STORED = list(range(100, 130))  # the ids of serve_fakes.fake_gallery(30)
# The document does not depend on the settings or the index: an app that never starts gives it.
DOCUMENT = create_app(fuzz_settings(Path("never-loaded"))).openapi()
SERVED = served_document(DOCUMENT, DIM, STORED)
schema = load_schema(SERVED)
# One app per route, on purpose: its examples share it (and what they wrote). Hypothesis would
# warn that a function-scoped fixture is not reset between examples.
FIXTURE = HealthCheck.function_scoped_fixture


# Flat and HNSW indexes take different paths: filtered search parameters, and HNSW refuses
# deletes (409); HNSW doubles the time, so it runs with the slow tests. (The parametrization
# also gives each route's test its own pytest node id, which schemathesis 4.32 does not give
# under pytest 9.2.)
@pytest.fixture(scope="module", params=["flat", pytest.param("hnsw", marks=pytest.mark.slow)])
def gallery(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    index_dir, ids = build_gallery_index(root, request.param)
    assert ids == STORED
    return index_dir


@pytest.fixture
def app(gallery, tmp_path):
    """A ready app on a fresh copy of the index: one route's deletes leave the next its items."""
    shutil.copytree(gallery, tmp_path / "index")
    app = create_app(fuzz_settings(tmp_path / "index"), IndexArtifacts())
    wait_ready(schema, app)
    return app


@schema.parametrize()
@settings(max_examples=50, derandomize=True, deadline=None, suppress_health_check=[FIXTURE])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL, on the cut-short TIFF images
def test_no_route_fails_or_answers_off_schema(case, app) -> None:
    case.call_and_validate(app=app)


@pytest.mark.slow
def test_scenarios_across_routes_keep_the_index_consistent(app, gallery) -> None:
    """Link-following scenarios: a deleted id is gone (use_after_free), an added one is found
    (ensure_resource_availability), a reload after a write serves what was written."""
    stateful = load_schema(SERVED, checks=CHECKS + STATEFUL_CHECKS)

    class Workflow(stateful.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            restore(stateful, app, gallery)

        def get_call_kwargs(self, case):
            return {"app": app}

    Workflow.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=10,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        )
    )


def test_int64_ids_are_bounded_exactly() -> None:
    """Every int64 bound in the document is the integer itself: FastAPI once wrote them as the
    float 2.0**63, so the document admitted 2**63, which the server refuses."""
    bounds = [
        (node.get("minimum"), node.get("maximum"))
        for node in walk(DOCUMENT)
        if node.get("type") == "integer" and abs(node.get("maximum", 0)) >= 2**62
    ]
    assert bounds, "the document has no int64 ids any more; drop this test"
    exact = (-(2**63), 2**63 - 1)
    assert all(type(b) is int for pair in bounds for b in pair), bounds
    assert set(bounds) == {exact}, bounds


# ---- where the document and the server once disagreed (none was a 5xx) --------------------
# Found by `benchmarks/fuzz_serve.py --strict`: each row is the smallest request it reported, or
# the same finding on another route. Each was marked xfail until the app was fixed; a request
# the document used to admit and the server refused now sits with those the document refuses.
# Requests follow the app's own document, not SERVED.

ADMIN = {"X-API-Key": KEY}
PLAIN = load_schema(DOCUMENT)


def document_accepts(method: str, path: str, body: object) -> bool:
    operation = DOCUMENT["paths"][path][method.lower()]
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    root = {**body_schema, "components": DOCUMENT["components"]}
    return jsonschema_rs.Draft202012Validator(root).is_valid(body)


def send(app, operation: str, path: str, **case):
    """A case of the operation (`method=` in `case` sends another method), with the key."""
    headers = case.pop("headers", ADMIN)
    return PLAIN[path][operation].Case(**case).call(app=app, headers=headers)


@pytest.mark.parametrize("gallery", ["flat"], indirect=True)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/v1/search", {"ids": [100], "k": 3.0}, id="integral-float-k"),
        pytest.param("POST", "/v1/search", {"ids": [100], "filter": {"must": [
            {"key": "coarse", "match": {"value": "shoes"}}, {"has_id": [101, 102]}],
            "must_not": [{"key": "colour", "range": {"gte": 5}}]}}, id="filter"),
    ],
)  # fmt: skip
def test_what_the_document_accepts_is_not_refused_as_invalid(app, method, path, body) -> None:
    assert document_accepts(method, path, body)
    response = send(app, method, path, body=body)
    assert response.status_code != 422, response.text


@pytest.mark.parametrize("gallery", ["flat"], indirect=True)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("DELETE", "/v1/items", {"ids": [False]}, id="delete-false"),
        pytest.param("DELETE", "/v1/items", {"ids": ["5"]}, id="delete-text"),
        pytest.param("POST", "/v1/search", {"ids": ["100"]}, id="search-text"),
        pytest.param("POST", "/v1/items", {"items": [{"id": "7", "vector": [1.0] * DIM}]},
                     id="add-text-id"),
        pytest.param("POST", "/v1/search", {"ids": [100], "k": 0}, id="k-zero"),
        # SearchRequest's model validator (exactly one of `vectors` and `ids`, not empty) is
        # published as a oneOf; POST /v1/items takes NewVectorItem, `vector` required
        pytest.param("POST", "/v1/search", {}, id="search-nothing"),
        pytest.param("POST", "/v1/search", {"vectors": [[1.0] * DIM], "ids": [100]},
                     id="search-both-kinds"),
        pytest.param("POST", "/v1/search", {"vectors_base64": "AAAA", "ids": [100]},
                     id="search-base64-and-ids"),
        pytest.param("POST", "/v1/items", {"items": [{"id": 0}]}, id="add-without-vector"),
        # the filter format: Qdrant's shape only (the older {"coarse": [...]} is refused)
        pytest.param("POST", "/v1/search", {"ids": [100], "filter": {"coarse": ["shoes"]}},
                     id="filter-old-shape"),
        pytest.param("POST", "/v1/search", {"ids": [100], "filter": {"must": [{"key": 1}]}},
                     id="filter-key-not-text"),
        pytest.param("POST", "/v1/search", {"ids": [100], "filter": {"must": [
            {"key": "colour", "match": {"value": [1]}}]}}, id="filter-value-a-list"),
    ],
)  # fmt: skip
def test_what_the_document_refuses_is_refused(app, method, path, body) -> None:
    assert not document_accepts(method, path, body)
    response = send(app, method, path, body=body)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize("gallery", ["flat"], indirect=True)
@pytest.mark.parametrize(
    ("method", "path", "case"),
    [
        pytest.param("GET", "/v1/items/{item_id}", {"path_parameters": {"item_id": 0}},
                     id="404-absent-item"),
        pytest.param("POST", "/v1/search", {"body": {"ids": [0]}},
                     id="404-search-absent-id"),
        pytest.param("POST", "/v1/search", {"body": {}},
                     id="422-search"),
        pytest.param("POST", "/v1/items", {"body": {"items": [{"id": 0, "vector": [1.0] * DIM}]},
                     "headers": {}}, id="401-no-key"),
        pytest.param("POST", "/v1/items", {"body": {"items": [{"id": 100, "vector": [1.0] * DIM}]}},
                     id="409-stored-id"),
        pytest.param("POST", "/v1/embed", {"body": {"images": [b"no image"]},
                     "media_type": "multipart/form-data"},
                     id="415-not-an-image"),
        pytest.param("GET", "/v1/items", {"query": {"limit": 0}}, id="422-limit"),
    ],
)  # fmt: skip
def test_every_status_a_route_answers_is_documented(app, method, path, case) -> None:
    response = send(app, method, path, **case)
    assert 400 <= response.status_code < 500, response.text
    documented = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, (response.status_code, sorted(documented))


@pytest.mark.parametrize("gallery", ["flat"], indirect=True)
def test_405_allows_every_method_of_the_path(app) -> None:
    response = send(app, "GET", "/v1/items", method="PUT")
    assert response.status_code == 405
    allowed = {m.strip() for line in response.headers["allow"] for m in line.split(",")}
    assert allowed >= {"GET", "POST", "DELETE"}, allowed
