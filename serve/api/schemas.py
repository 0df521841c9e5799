"""Request and response bodies of the API, kept apart from the index and model types.

Vectors are checked (shape, finite, non-zero) once, where they become arrays:
`coins.serve.api.search.normalise`, with the dimension of the index loaded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coins.serve.index.filters import Filter

__all__ = ["Filter"]  # the one filter format (serve/index/filters.py), used in request bodies

MAX_K = 1000  # the hard ceiling; a server may set a lower one (ServeSettings.max_k)
MAX_BATCH = 100_000  # schema ceiling on vectors/ids; the server's own limit is lower

Vector = list[float]
# FAISS ids are int64; strict: "5", 5.0 and false are refused, as the OpenAPI document says
ItemId = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
# a class name as stored in the index, or a number: the class's position in the index's list;
# strict: a JSON float (2.5, 1e10) is refused, not truncated into some class number
Label = str | Annotated[int, Field(strict=True)]


def _exactly_one_given(**kinds: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of `SearchRequest._one_kind`: one of `kinds` given as its schema (a non-empty
    array or string), every other one absent or null. An explicit null counts as absent, in the
    server as here: links and clients turn a query by vectors into one by ids by sending
    `"vectors": null`."""
    return {
        "oneOf": [
            {
                "required": [given],
                "properties": {
                    name: schema if name == given else {"type": "null"}
                    for name, schema in kinds.items()
                },
            }
            for given in kinds
        ]
    }


class SearchRequest(BaseModel):
    """Queries as `vectors` (one per row), as `vectors_base64` (the same numbers as float32
    bytes, the compact form) or as stored `ids` (the item itself is never returned)."""

    # the model validator below, published: a document without it admits `{}` and both kinds
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_exactly_one_given(
            vectors={"type": "array", "minItems": 1},
            vectors_base64={"type": "string", "minLength": 1},
            ids={"type": "array", "minItems": 1},
        ),
    )

    vectors: list[Vector] | None = Field(default=None, max_length=MAX_BATCH)
    vectors_base64: str | None = Field(
        default=None,
        description="Query vectors as base64 of little-endian float32, row after row: "
        "nq x dim numbers, dim the index's (/v1/index).",
    )
    ids: list[ItemId] | None = Field(default=None, max_length=MAX_BATCH)
    k: int = Field(default=10, ge=1, le=MAX_K)
    filter: Filter | None = Field(
        default=None,
        description="Search only among the items it keeps (inside the FAISS search): "
        '{"must": [...], "should": [...], "must_not": [...]} of conditions '
        '{"key": FIELD, "match": {"value": V}} or {"match": {"any": [...]}}, '
        '{"key": FIELD, "range": {"gte": A, "lt": B}}, {"has_id": [ids]}, or a nested filter '
        "(at most 4 levels, 1,024 conditions). FIELD: a field of the index (/v1/index "
        "`fields`), coarse, fine or id. A filter keeping no item gives no neighbours.",
    )
    with_metadata: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRequest:
        """Exactly one kind of query, not empty; `_exactly_one_given` says the same in JSON."""
        given = [q for q in (self.vectors, self.vectors_base64, self.ids) if q is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `vectors`, `vectors_base64` and `ids`")
        if not given[0]:
            raise ValueError("give at least one query")
        return self


class ItemMetadata(BaseModel):
    id: int
    path: str | None = None
    coarse: str | None = None
    fine: str | None = None
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="The item's fields, typed as the index's schema says (/v1/index `fields`).",
    )


class Neighbor(BaseModel):
    id: int
    score: float = Field(description="Cosine similarity, higher is closer.")
    rank: int = Field(description="0 for the closest.")
    metadata: ItemMetadata | None = None


class CoarseGuess(BaseModel):
    index: int = Field(description="Output of the model's coarse head.")
    label: str = Field(description="The class as stored in the index metadata.")
    probability: float


class GateReport(BaseModel):
    """What gate=coarse did with one image query."""

    applied: bool = Field(description="Whether the search was restricted to `gated_to`.")
    label: str = Field(description="The predicted coarse class (the most probable).")
    probability: float = Field(description="Its probability.")
    searched_probability: float = Field(
        description="Probability of the gate_top classes together: the gate applies when it "
        "is at least min_prob."
    )
    min_prob: float = Field(description="The threshold used (gate_min_prob).")
    message: str = Field(description="The decision in words.")


class QueryResult(BaseModel):
    neighbors: list[Neighbor]
    coarse: list[CoarseGuess] | None = Field(
        default=None, description="Predicted coarse classes (image queries, coarse head only)."
    )
    gated_to: list[str] | None = Field(
        default=None, description="Coarse labels searched among when gate=coarse applied."
    )
    gate: GateReport | None = Field(default=None, description="With gate=coarse: what it did.")


class SearchResponse(BaseModel):
    results: list[QueryResult]
    took_ms: float


class EmbedResponse(BaseModel):
    dim: int
    model_sha256: str
    vectors: list[Vector]
    coarse_probs: list[Vector] | None = None


class NewItem(BaseModel):
    """An item to add and its metadata; in the JSON `items` field of /v1/items/images, whose
    uploaded images give the vectors."""

    model_config = ConfigDict(extra="forbid")

    id: ItemId
    vector: Vector | None = Field(default=None, description="Omit when images are uploaded.")
    path: str | None = None
    coarse: Label | None = None
    fine: Label | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class NewVectorItem(NewItem):
    """An item added by its vector (POST /v1/items): there `vector` is required, and the
    document says so."""

    vector: Vector = Field(description="The item's embedding (normalised by the server).")

    @model_validator(mode="before")
    @classmethod
    def _vector_given(cls, data: Any) -> Any:
        """A missing or null vector refused with where to send images instead."""
        if isinstance(data, dict) and data.get("vector") is None:
            raise ValueError("every item needs a `vector` here; upload images to /v1/items/images")
        return data


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewVectorItem] = Field(min_length=1, max_length=MAX_BATCH)


class DeleteItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[ItemId] = Field(min_length=1, max_length=MAX_BATCH)


class ItemsChanged(BaseModel):
    added: int = 0
    removed: int = 0
    missing: list[int] = Field(default_factory=list, description="Ids not in the index.")
    ntotal: int


class ItemsPage(BaseModel):
    total: int
    offset: int
    items: list[ItemMetadata]


class RandomItems(BaseModel):
    total: int = Field(description="Items in the index.")
    items: list[ItemMetadata]


class IndexSummary(BaseModel):
    ntotal: int
    dim: int
    model_sha256: str | None
    coarse_classes: list[str] | None
    fields: dict[str, str] | None = Field(
        default=None,
        description="The items' typed fields, name -> int, float, bool, string or timestamp, "
        "which filters take as keys (with coarse, fine and id); null: an index built before "
        "typed fields.",
    )
    classes: dict[str, list[str]] = Field(
        default_factory=dict, description="The coarse and fine class names of the index."
    )
    report_url: str | None
    loaded_at: float | None
    manifest: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok", "loading", "failed"]
    message: str | None = None


class ErrorBody(BaseModel):
    """Every refusal: the HTTP status again and a message naming what was expected."""

    status: int
    message: str


ERRORS = {
    400: "A body that cannot be parsed (malformed JSON or multipart).",
    401: "Missing or wrong X-API-Key (admin routes).",
    404: "No item with this id, or an id query that is not stored.",
    408: "The request body did not arrive in time.",
    409: "An id that is already stored.",
    413: "Over a size or count limit of this server.",
    415: "Not an image type this server decodes.",
    422: "A well-formed request with a value that is not allowed (the message says which).",
    503: "The model and index are still loading (see /readyz).",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a router: the error statuses its routes answer, with their body."""
    return {code: {"model": ErrorBody, "description": ERRORS[code]} for code in codes}
