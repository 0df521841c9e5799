"""The search API as a schemathesis target, for tests/serve/api/test_fuzz.py and
benchmarks/fuzz_serve.py: a real FAISS index and metadata store of the fake gallery, served
with the stand-in embedder, and the app's OpenAPI document told what the server checks but the
document does not say, plus links between routes for stateful runs.

Fuzzed from the bare document nearly every request stops at validation (vectors of a random
length, ids nobody stored, bytes that are no image, form fields that are no JSON) and the code
behind it, filters, labels, decoding, admin writes, is never reached. `served_document` fills
those facts in; everything else stays as generated.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from serve_fakes import COARSE, FakeEmbedder, fake_gallery

from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index
from coins.serve.index.store import SearchIndex

KEY = "fuzz-key"
INT64_MAX = 2**63 - 1
# The int64 bound as FastAPI writes it for the models it parses itself: a float, 2.0**63.
INT64_MAX_AS_FLOAT = float(INT64_MAX)
# Larger numbers overflow the float32 norm the server computes, and it refuses them (422).
VECTOR_MAX = 1e18
ABSENT_IDS = (0, -1, 99, 2**31, INT64_MAX, -(2**63))  # never in the fake gallery (100..129)
NEW_IDS = (*ABSENT_IDS, *range(1000, 1060))  # for added items: each id can be added once
# Checks a correct server passes whatever the document leaves open; stateful runs add theirs.
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "content_type_conformance",
    "response_headers_conformance",
)
STATEFUL_CHECKS = ("use_after_free", "ensure_resource_availability")
IMAGE_ROUTES = ("/v1/search/image", "/v1/embed", "/v1/items/images")
IMAGE_PART = "image/png"  # the declared type of generated image parts; the bytes vary


class IndexArtifacts:
    """Artifacts of create_app: the stand-in embedder and the index folder, loaded for real."""

    def __init__(self) -> None:
        self.embedder = FakeEmbedder()

    def load_model(self, settings: ServeSettings) -> FakeEmbedder:
        return self.embedder

    def load_index(self, settings: ServeSettings, model_sha256: str) -> SearchIndex:
        return SearchIndex.load(settings.index_dir, model_sha256=model_sha256)


def build_gallery_index(root: Path, index_key: str = "flat", n: int = 30) -> tuple[Path, list[int]]:
    """An index of the fake gallery (item images in `root`) at root/index, and its ids."""
    embedder = FakeEmbedder()
    gallery = fake_gallery(n, embedder, image_dir=root)
    ids = np.array(sorted(gallery.rows), dtype=np.int64)
    rows = [gallery.rows[int(i)] for i in ids]
    build_index(ids, gallery.reconstruct(ids), rows, root / "index", index_key=index_key,
                model_sha256=embedder.sha256)  # fmt: skip
    return root / "index", ids.tolist()


def fuzz_settings(index_dir: Path, model: Path | None = None) -> ServeSettings:
    return ServeSettings(
        index_dir=index_dir,
        model=model or index_dir / "stand-in.onnx",
        workers=2,
        threads=1,
        api_key=KEY,
    )


# ---- the document, told what the server checks -----------------------------------------


def served_document(document: dict[str, Any], dim: int, ids: Sequence[int]) -> dict[str, Any]:
    """A copy of the app's OpenAPI document where a search is by vectors or by ids (exactly
    one, not empty); vectors have the index's `dim` numbers, none so large that the float32 norm
    overflows; an item added by vector has one; item ids are stored ones (`ids`) or a few absent
    ones; uploaded parts are images; the JSON form fields hold JSON. With the links of `LINKS`."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    for name in ("SearchRequest", "NewItem"):
        for node in walk(schemas[name]):
            if node.get("type") == "array" and node.get("items") == {"type": "number"}:
                node.update(minItems=dim, maxItems=dim)
                node["items"] = {"type": "number", "minimum": -VECTOR_MAX, "maximum": VECTOR_MAX}
    schemas["SearchRequest"] = _one_query_kind(schemas["SearchRequest"], dim)
    schemas["NewVectorItem"] = _with_vector(schemas["NewItem"])
    schemas["AddItemsRequest"]["properties"]["items"]["items"] = _ref("NewVectorItem")
    some_ids = [*ids, *ABSENT_IDS]
    for name in ("SearchRequest", "DeleteItemsRequest"):
        _item_ids(schemas[name], some_ids)
    # filters on the gallery's keys (colour: its int field) and one it lacks, of stored ids
    schemas["FieldCondition"]["properties"]["key"] = {"enum": FILTER_KEYS}
    schemas["HasId"]["properties"]["has_id"]["items"] = {"enum": some_ids}
    for name in ("NewItem", "NewVectorItem"):  # mostly new ids; one stored id for the 409
        _item_ids(schemas[name], [*NEW_IDS, *ids[:1]])
    for path in ("/v1/items/{item_id}", "/v1/items/{item_id}/image"):
        for parameter in document["paths"][path]["get"]["parameters"]:
            _item_ids(parameter, some_ids)
    for path in IMAGE_ROUTES:
        _form(document, path)["encoding"] = {"images": {"contentType": IMAGE_PART}}
    _form_fields(document, "/v1/search/image")["filter"] = {"enum": FILTER_TEXTS}
    _form_fields(document, "/v1/items/images")["items"] = {"enum": ITEMS_TEXTS}
    _add_links(document)
    return document


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in a JSON document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _one_query_kind(search: dict[str, Any], dim: int) -> dict[str, Any]:
    """SearchRequest as `oneOf` a query by vectors, by base64 vectors and by ids (pydantic's
    schema has all optional: its model validator, which refuses several, none or empty, is not
    in it). Base64 text is of whole float32 vectors of `dim` numbers (1 to 3 of them)."""
    properties = search["properties"]
    kinds = ("vectors", "vectors_base64", "ids")

    def kind(name: str) -> dict[str, Any]:
        wanted = "string" if name == "vectors_base64" else "array"
        given = [s for s in properties[name]["anyOf"] if s.get("type") == wanted]
        assert len(given) == 1, f"SearchRequest.{name}: expected `{wanted} | null`, got {given}"
        others = {k: v for k, v in properties.items() if k not in kinds}
        schema = {**given[0], "minItems": 1} if wanted == "array" else _base64_vectors(dim)
        return {**search, "properties": {**others, name: schema}, "required": [name]}

    return {"oneOf": [kind(name) for name in kinds]}


def _base64_vectors(dim: int) -> dict[str, Any]:
    """Base64 of 1 to 3 float32 vectors of `dim` numbers: any bytes, so NaN, infinity and
    zero vectors come too (422s)."""
    lengths = [4 * -(-(4 * dim * n) // 3) for n in (1, 2, 3)]  # base64 chars, padded
    pads = [(3 - (4 * dim * n) % 3) % 3 for n in (1, 2, 3)]
    choices = "|".join(
        f"[A-Za-z0-9+/]{{{length - pad}}}{'=' * pad}"
        for length, pad in zip(lengths, pads, strict=True)
    )
    return {"type": "string", "pattern": f"^({choices})$"}


def _with_vector(item: dict[str, Any]) -> dict[str, Any]:
    """NewItem as POST /v1/items needs it: `vector` given (it may be omitted only with images)."""
    item = copy.deepcopy(item)
    vector = [s for s in item["properties"]["vector"]["anyOf"] if s.get("type") == "array"]
    assert len(vector) == 1, f"NewItem.vector: expected `array | null`, got {vector}"
    item["properties"]["vector"] = vector[0]
    item["required"] = sorted({*item.get("required", []), "vector"})
    return item


def _is_item_id(node: dict[str, Any]) -> bool:
    return node.get("type") == "integer" and node.get("maximum") in (INT64_MAX, INT64_MAX_AS_FLOAT)


def _item_ids(root: dict[str, Any], ids: Sequence[int]) -> None:
    """Each int64 id schema under `root` becomes an enum of `ids`. (An `anyOf` with the original
    schema would not do: the generator merges the enum into the integer range.)"""
    for node in list(walk(root)):
        for key, child in list(node.items()):
            if isinstance(child, dict) and _is_item_id(child):
                node[key] = {"enum": list(ids)}


# JSON texts for the form fields the routes parse themselves: valid ones, class numbers and
# names in and out of range, and a few the routes must refuse, one nested deeper than Python's
# recursion limit.
DEEP = "[" * 5000 + "]" * 5000
FILTER_KEYS = ["coarse", "fine", "id", "colour", "hue"]
FILTER_TEXTS = [
    "",
    "{}",
    '{"must": [{"key": "coarse", "match": {"value": 0}}]}',
    '{"must": [{"key": "coarse", "match": {"any": ["shoes", 2]}}]}',
    '{"should": [{"key": "fine", "match": {"any": ["3", 5]}}, {"has_id": [100, 101, 0]}]}',
    '{"must": [{"key": "coarse", "match": {"value": -1}}]}',
    '{"must": [{"key": "fine", "match": {"value": 99}}]}',
    '{"must": [{"key": "coarse", "match": {"value": 9223372036854775808}}]}',
    '{"must_not": [{"key": "colour", "range": {"gte": 3, "lt": 20.5}}]}',
    '{"must": [{"key": "colour", "range": {"gt": 1e400}}]}',
    '{"must": [{"key": "fine", "range": {"gt": "2"}}]}',
    '{"must": [{"must": [{"must": [{"must": [{"must": [{"has_id": [100]}]}]}]}]}]}',
    '{"must": [{"key": "coarse", "match": {"any": []}}]}',
    '{"must": [{"key": "hue", "match": {"value": 1}}]}',
    '{"coarse": [1]}',
    "[1]",
    "{",
    DEEP,
]
ITEMS_TEXTS = [
    json.dumps([{"id": i + k, "coarse": COARSE[k], "fine": str(i % 7)} for k in range(n)])
    for n in (1, 2, 3)  # as many items as the 1 to 3 images of a request
    for i in range(2000, 2060, 3)
] + [
    '[{"id": 100}]',  # already stored: 409
    '[{"id": 5, "coarse": 7, "extra": {"note": "x"}}]',
    "[]",
    '[{"id": 6}, {"id": 6}]',  # one id twice: 422
    '{"id": 8}',
    DEEP,
]


def _form(document: dict[str, Any], path: str) -> dict[str, Any]:
    form: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"]
    return form["multipart/form-data"]


def _form_fields(document: dict[str, Any], path: str) -> dict[str, Any]:
    name = _form(document, path)["schema"]["$ref"].rsplit("/", 1)[-1]
    fields: dict[str, Any] = document["components"]["schemas"][name]["properties"]
    return fields


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    """A small image in a format and mode the decoder accepts; one in five cut short."""
    fmt, modes = draw(st.sampled_from(sorted(IMAGE_MODES.items())))
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    out = io.BytesIO()
    rgb.convert(mode).save(out, format=fmt)
    data = out.getvalue()
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


IMAGE_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["P", "L"],
    "BMP": ["1", "L", "P", "RGB"],
    "WEBP": ["RGB", "RGBA"],
    "TIFF": ["1", "L", "RGB", "RGBA", "CMYK", "I;16", "F", "I"],
}


# ---- links between routes --------------------------------------------------------------

# (source method, path), status, link name, target (method, path), parameters, request body
# (merged into the generated one: `vectors: None` turns a generated query by vectors into one by
# the linked id).
# The ids listed by GET /v1/items are searched by and deleted; a deleted id must then be gone
# (use_after_free); an added id must be found (ensure_resource_availability); reloads follow
# writes, so a reload of what was just saved is exercised too.
LINKS: list[tuple[tuple[str, str], str, str, tuple[str, str], dict[str, str], Any]] = [
    (("get", "/v1/items"), "200", "SearchByListedId", ("post", "/v1/search"), {},
     {"ids": ["$response.body#/items/0/id"], "vectors": None}),
    (("get", "/v1/items"), "200", "DeleteListedId", ("delete", "/v1/items"), {},
     {"ids": ["$response.body#/items/0/id"]}),
    (("delete", "/v1/items"), "200", "GetDeletedId", ("get", "/v1/items/{item_id}"),
     {"path.item_id": "$request.body#/ids/0"}, None),
    (("delete", "/v1/items"), "200", "ReloadAfterDelete", ("post", "/v1/reload"), {}, None),
    (("post", "/v1/items"), "200", "GetAddedId", ("get", "/v1/items/{item_id}"),
     {"path.item_id": "$request.body#/items/0/id"}, None),
    (("post", "/v1/items"), "200", "SearchByAddedId", ("post", "/v1/search"), {},
     {"ids": ["$request.body#/items/0/id"], "vectors": None}),
    (("post", "/v1/items"), "200", "ReloadAfterAdd", ("post", "/v1/reload"), {}, None),
    (("post", "/v1/reload"), "200", "ListAfterReload", ("get", "/v1/items"), {}, None),
]  # fmt: skip


def _add_links(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for (method, path), status, name, (t_method, t_path), parameters, body in LINKS:
        link: dict[str, Any] = {"operationId": paths[t_path][t_method]["operationId"]}
        if parameters:
            link["parameters"] = parameters
        if body is not None:
            link["requestBody"] = body
        response = paths[path][method]["responses"][status]
        response.setdefault("links", {})[name] = link


# ---- schemathesis -----------------------------------------------------------------------


def load_schema(document: dict[str, Any], checks: Sequence[str] = CHECKS, **config: Any) -> Any:
    """A schemathesis schema of `document`: the API key on every request, only `checks` on,
    curl reproductions printed with the (test) key; `config` adds schemathesis.toml keys."""
    # A global registry. The strategy stands for the whole `images` array (one to three files).
    schemathesis.openapi.media_type(IMAGE_PART, st.lists(image_files(), min_size=1, max_size=3))
    settings = {
        "headers": {"X-API-Key": KEY},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        "output": {"sanitization": {"enabled": False}},
        **config,
    }
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(settings))


def wait_ready(schema: Any, app: Any, timeout: float = 60) -> None:
    """Call /readyz through schemathesis' ASGI transport until it answers 200: the first call
    starts the app's lifespan (schemathesis' pytest plugin ends it after each test), loading
    then runs in the background."""
    readyz = schema["/readyz"]["GET"]
    deadline = time.monotonic() + timeout
    while (status := readyz.Case().call(app=app).status_code) != 200:
        assert time.monotonic() < deadline, f"/readyz still {status} after {timeout} s"
        time.sleep(0.02)


def restore(schema: Any, app: Any, pristine: Path) -> None:
    """Put the pristine index back in the app's folder and reload it, so that every stateful
    scenario starts from the same index: Hypothesis replays a failing one to shrink it."""
    index_dir = app.state.settings.index_dir
    shutil.rmtree(index_dir)
    shutil.copytree(pristine, index_dir)
    reload = schema["/v1/reload"]["POST"].Case().call(app=app, headers={"X-API-Key": KEY})
    assert reload.status_code == 200, reload.text
