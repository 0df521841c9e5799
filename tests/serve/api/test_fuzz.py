"""The whole search API fuzzed from its OpenAPI document by schemathesis, in process (ASGI).

Every route, the admin ones with the API key, gets schemathesis' example, coverage and random
cases of the document told what the server checks (tests/serve_fuzz.py); a scenario test
follows links between routes (list, search, delete, get, add, reload). A correct server answers
all of them without a 5xx, and every documented answer fits its schema. Budgets are small and
derandomized; benchmarks/fuzz_serve.py runs the long version.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, settings
from serve_fakes import DIM
from serve_fuzz import (
    CHECKS,
    STATEFUL_CHECKS,
    IndexArtifacts,
    build_gallery_index,
    fuzz_settings,
    load_schema,
    restore,
    served_document,
    wait_ready,
)

from coins.serve.api.app import create_app

STORED = list(range(100, 130))  # the ids of serve_fakes.fake_gallery(30)
# The document does not depend on the settings or the index: an app that never starts gives it.
DOCUMENT = create_app(fuzz_settings(Path("never-loaded"))).openapi()
SERVED = served_document(DOCUMENT, DIM, STORED)
schema = load_schema(SERVED)
# The app is made once per route (a fixture), not per example: that is what the check is about.
FIXTURE = HealthCheck.function_scoped_fixture


# Flat and HNSW indexes take different paths: filtered search parameters, and HNSW refuses
# deletes (409). (The parametrization also gives each route's test its own pytest node id, which
# schemathesis 4.32 does not under pytest 9.2.)
@pytest.fixture(scope="module", params=["flat", "hnsw"])
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
@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=[FIXTURE])
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
            max_examples=20,
            stateful_step_count=8,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        )
    )
