"""Property-based: whatever JSON, form fields or bytes a client sends, the API answers with a
status below 500 and a JSON message for every error."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fakes import DIM, FakeArtifacts, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.settings import ServeSettings

KEY = "k"
PROPS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)
ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([100, 101, 129]))
labels = st.one_of(st.text(max_size=8), st.integers(min_value=-5, max_value=2**65))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
values = st.one_of(labels, numbers, st.booleans(), json_values)
conditions = st.one_of(
    st.fixed_dictionaries(
        {"key": st.sampled_from(["coarse", "fine", "id", "colour", "hue"])},
        optional={
            "match": st.one_of(
                st.fixed_dictionaries({"value": values}),
                st.fixed_dictionaries({"any": st.lists(values, max_size=3)}),
                json_values,
            ),
            "range": st.one_of(
                st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte"]), values, max_size=2),
                json_values,
            ),
        },
    ),
    st.fixed_dictionaries({"has_id": st.lists(ids, max_size=4)}),
)
filters = st.one_of(
    st.none(),
    st.recursive(
        st.fixed_dictionaries(
            {},
            optional={
                clause: st.lists(conditions, max_size=3)
                for clause in ("must", "should", "must_not")
            },
        ),
        lambda inner: st.fixed_dictionaries(
            {},
            optional={"must": st.lists(inner, max_size=2), "should": st.lists(inner, max_size=2)},
        ),
        max_leaves=6,
    ),
    json_values,
)
search_bodies = st.fixed_dictionaries(
    {},
    optional={
        "vectors": st.one_of(
            st.lists(st.lists(numbers, min_size=DIM, max_size=DIM), max_size=3),
            st.lists(st.lists(numbers, max_size=DIM + 2), max_size=3),
            json_values,
        ),
        "ids": st.one_of(st.lists(ids, max_size=4), json_values),
        "k": st.one_of(st.integers(min_value=-3, max_value=2**66), json_values),
        "filter": filters,
        "with_metadata": st.one_of(st.booleans(), json_values),
    },
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("props")
    app = create_app(
        ServeSettings(index_dir=tmp, model=tmp / "m.onnx", workers=2, threads=1, api_key=KEY),
        FakeArtifacts(),
    )
    with TestClient(app) as c:
        wait_readyz(c)
        yield c


def send(client, method: str, url: str, body, **kwargs):
    """JSON as Python writes it (NaN and Infinity literals included): httpx would refuse them."""
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return client.request(method, url, content=json.dumps(body), headers=headers, **kwargs)


def check(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["message"]


@PROPS
@given(body=search_bodies)
def test_search_never_fails_on_any_json(client, body) -> None:
    check(send(client, "POST", "/v1/search", body))


@PROPS
@given(body=json_values)
def test_search_and_admin_routes_on_arbitrary_json(client, body) -> None:
    check(send(client, "POST", "/v1/search", body))
    check(send(client, "POST", "/v1/items", body, headers={"X-API-Key": KEY}))
    check(send(client, "DELETE", "/v1/items", body, headers={"X-API-Key": KEY}))


@PROPS
@given(
    data=st.binary(max_size=300),
    ctype=st.sampled_from(
        ["image/png", "image/jpeg", "text/plain", "application/octet-stream", ""]
    ),
    fields=st.dictionaries(
        st.sampled_from(["k", "gate", "gate_top", "filter", "with_metadata"]),
        st.text(max_size=12),
        max_size=4,
    ),
)
def test_image_routes_never_fail_on_any_upload(client, data, ctype, fields) -> None:
    files = [("images", ("x", data, ctype) if ctype else ("x", data))]
    check(client.post("/v1/search/image", files=files, data=fields))
    check(client.post("/v1/embed", files=files))


@PROPS
@given(
    offset=st.integers(min_value=-(2**65), max_value=2**65),
    item=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=10)),
    label=st.one_of(st.none(), st.text(max_size=6)),
)
def test_item_routes_never_fail(client, offset, item, label) -> None:
    check(client.get("/v1/items", params={"offset": offset, "coarse": label or ""}))
    path = quote(str(item), safe="")
    check(client.get(f"/v1/items/{path}"))
    check(client.get(f"/v1/items/{path}/image", params={"size": offset}))
