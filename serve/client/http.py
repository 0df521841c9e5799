"""A Python client of the search API: `SearchClient(url).search_images(["shoe.jpg"], k=10)`."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ImageInput = str | Path | bytes


class SearchServiceError(RuntimeError):
    """A response with an error status; `status` and the server's `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class SearchClient:
    """Blocking client; `api_key` is needed only for the admin calls."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self._base64: bool | None = None  # whether /v1/search takes vectors_base64

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:200]}
        if response.status_code >= 400:
            raise SearchServiceError(response.status_code, str(body.get("message", body)))
        return body

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        """Poll /readyz until 200; TimeoutError (with the last reason) after `timeout` s."""
        deadline, reason = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            try:
                r = self.http.get("/readyz")
                if r.status_code == 200:
                    return
                reason = r.json().get("message", r.text)
                if r.json().get("status") == "failed":
                    raise SearchServiceError(503, reason)
            except httpx.TransportError as err:
                reason = str(err) or type(err).__name__
            time.sleep(interval)
        raise TimeoutError(f"{self.http.base_url} not ready after {timeout:.0f} s: {reason}")

    def index(self) -> dict[str, Any]:
        """The manifest summary: ntotal, dim, model hash, coarse classes."""
        return dict(self._json(self.http.get("/v1/index")))

    def items(self, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        return dict(
            self._json(self.http.get("/v1/items", params={"offset": offset, "limit": limit}))
        )

    def search_vectors(
        self, xq: np.ndarray | Sequence[Sequence[float]], k: int = 10, **options: Any
    ) -> list[dict[str, Any]]:
        """Neighbours of each query vector; options: filter, with_metadata. The vectors go as
        float32 bytes (`vectors_base64`) to a server that takes them, else as JSON numbers."""
        x = np.asarray(xq, dtype=np.float32)
        if x.ndim == 2 and self.takes_base64():
            raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
            body: dict[str, Any] = {"vectors_base64": base64.b64encode(raw).decode("ascii")}
        else:
            body = {"vectors": x.tolist()}
        body |= {"k": k, **options}
        return list(self._json(self.http.post("/v1/search", json=body))["results"])

    def takes_base64(self) -> bool:
        """Whether the server's /v1/search takes `vectors_base64` (its OpenAPI document says
        so; an older server's does not): asked once per client."""
        if self._base64 is None:
            try:
                document = self._json(self.http.get("/openapi.json"))
                fields = document["components"]["schemas"]["SearchRequest"]["properties"]
                self._base64 = "vectors_base64" in fields
            except (SearchServiceError, KeyError, TypeError):
                self._base64 = False
        return self._base64

    def search_ids(self, ids: Sequence[int], k: int = 10, **options: Any) -> list[dict[str, Any]]:
        """Neighbours of stored items (never the item itself)."""
        body = {"ids": [int(i) for i in ids], "k": k, **options}
        return list(self._json(self.http.post("/v1/search", json=body))["results"])

    def search_images(
        self,
        images: Sequence[ImageInput],
        k: int = 10,
        *,
        gate: str = "none",
        gate_top: int = 1,
        gate_min_prob: float | None = None,
        filter: dict[str, Any] | None = None,
        with_metadata: bool = True,
    ) -> list[dict[str, Any]]:
        """Neighbours of image files or encoded image bytes; with gate="coarse" each result's
        `gate` says the predicted class, its probability and whether the search was gated
        (`gate_min_prob`: the threshold, else the server's)."""
        data = {"k": str(k), "gate": gate, "gate_top": str(gate_top)}
        data["with_metadata"] = "true" if with_metadata else "false"
        if gate_min_prob is not None:
            data["gate_min_prob"] = repr(float(gate_min_prob))
        if filter is not None:
            data["filter"] = json.dumps(filter)
        r = self.http.post("/v1/search/image", files=_files(images), data=data)
        return list(self._json(r)["results"])

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised vectors [N, D] of the images."""
        body = self._json(self.http.post("/v1/embed", files=_files(images)))
        return np.asarray(body["vectors"], dtype=np.float32)

    def add_items(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Admin: add items given as {id, vector, coarse, fine, path, extra}."""
        return dict(self._json(self.http.post("/v1/items", json={"items": items})))

    def delete_items(self, ids: Sequence[int]) -> dict[str, Any]:
        """Admin: delete items by id."""
        r = self.http.request("DELETE", "/v1/items", json={"ids": [int(i) for i in ids]})
        return dict(self._json(r))

    def reload(self) -> dict[str, Any]:
        """Admin: swap in the index folder as it is now on disk."""
        return dict(self._json(self.http.post("/v1/reload")))


def _files(images: Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = []
    for i, image in enumerate(images):
        if isinstance(image, bytes):
            files.append(("images", (f"image-{i}", image, "application/octet-stream")))
        else:
            path = Path(image)
            files.append(("images", (path.name, path.read_bytes(), "application/octet-stream")))
    return files
