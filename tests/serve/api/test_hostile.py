"""A hostile client: slivers of images, bad class numbers, deep JSON, oversized and slow bodies,
idle sockets, a forged Host. Each is refused at its root with a precise 4xx, never a 500, and
before the expensive work (decoding, parsing, embedding) it would have asked for."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fakes import COARSE, DIM, FakeArtifacts, FakeEmbedder, colour_image, wait_readyz
from torchvision.transforms import v2

from coins.retrieval.data import Preprocess, eval_transform, load_image
from coins.retrieval.data.transforms import ResizeCentreCrop
from coins.serve.api.app import MAX_HEAD_BYTES, create_app, server_config
from coins.serve.api.settings import ServeSettings
from coins.serve.client.background import free_port
from coins.serve.index.build import build_index

KEY = "s3cret"
ADMIN = {"X-API-Key": KEY}
THIN = (100_000, 2_000_000)  # heights of 1-pixel-wide PNGs


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def settings(tmp_path, **overrides) -> ServeSettings:
    base = {"index_dir": tmp_path, "model": tmp_path / "m.onnx", "workers": 2, "threads": 1}
    return ServeSettings(**{**base, "api_key": KEY, **overrides})


class TransformEmbedder(FakeEmbedder):
    """The fake embedder behind the real preprocessing (eval_transform at 32 pixels), pooled
    to the fake's 4x4: what a thin image costs is what OnnxEmbedder.to_array would pay."""

    transform = eval_transform(Preprocess(input_size=32))

    def to_array(self, image: Image.Image) -> np.ndarray:
        x = self.transform(image).numpy()  # [3, 32, 32]
        return x.reshape(3, 4, 8, 4, 8).mean(axis=(2, 4))  # [3, 4, 4]


@pytest.fixture(scope="module")
def thin_pngs() -> dict[int, bytes]:
    return {n: png(Image.new("L", (1, n), 200)) for n in THIN}


@pytest.fixture
def artifacts() -> FakeArtifacts:
    found = FakeArtifacts()
    found.embedder = TransformEmbedder()
    return found


@contextmanager
def running(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        wait_readyz(c)
        yield c


@pytest.fixture
def client(tmp_path, artifacts) -> Iterator[TestClient]:
    with running(create_app(settings(tmp_path), artifacts)) as c:
        yield c


def search_image(client: TestClient, data: bytes, **fields: str):
    return client.post(
        "/v1/search/image", files=[("images", ("x.png", data, "image/png"))], data=fields
    )


def cpu_ms(fn):
    start = time.process_time()
    result = fn()
    return result, 1000 * (time.process_time() - start)


# ---- 1. thin images ----------------------------------------------------------------------


@pytest.mark.parametrize("height", THIN)
def test_thin_images_are_refused_from_the_header(client, thin_pngs, height) -> None:
    r, ms = cpu_ms(lambda: search_image(client, thin_pngs[height]))
    print(f"1x{height:,} PNG refused in {ms:.1f} ms of CPU")
    assert r.status_code == 422, r.json()
    assert f"1x{height} pixels" in r.json()["message"] and "at most 32:1" in r.json()["message"]
    assert ms < 1000


@pytest.mark.parametrize("height", THIN)
def test_thin_images_without_the_aspect_limit_are_cheap(tmp_path, artifacts, thin_pngs, height):
    """The aspect limit off, the image is decoded and preprocessed: the centre crop is resized
    alone, never the 32 x 32*height intermediate (6 GB for the 1 x 2,000,000 PNG)."""
    app = create_app(settings(tmp_path, max_image_aspect=1e9), artifacts)
    with running(app) as c:
        r, ms = cpu_ms(lambda: search_image(c, thin_pngs[height], k="3"))
        print(f"1x{height:,} PNG answered in {ms:.1f} ms of CPU")
        assert r.status_code == 200, r.json()
        assert len(r.json()["results"][0]["neighbors"]) == 3
        assert ms < 1000


def test_offline_path_preprocesses_a_thin_file_cheaply(tmp_path, thin_pngs) -> None:
    path = tmp_path / "thin.png"
    path.write_bytes(thin_pngs[2_000_000])
    x, ms = cpu_ms(lambda: eval_transform(Preprocess(input_size=32))(load_image(path)))
    print(f"load_image + eval_transform of 1x2,000,000: {ms:.1f} ms of CPU")
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x.numpy(), (200 / 255 - 0.5) / 0.25, atol=1e-6)
    assert ms < 1000


def long_path(img: Image.Image, size: int) -> Image.Image:
    """The reference: resize the whole image (shorter side to `size`), then crop the centre."""
    return v2.CenterCrop(size)(v2.Resize(size, antialias=True)(img))


@pytest.mark.parametrize(("w", "h"), [(3, 200), (200, 3), (7, 401), (1, 90), (50, 2000)])
def test_thin_crop_resize_matches_the_long_path(w, h) -> None:
    rng = np.random.default_rng(w * h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    for size in (8, 32):
        short = ResizeCentreCrop(size, max_aspect=16)(img)
        assert short.size == (size, size)
        diff = np.abs(np.asarray(short, int) - np.asarray(long_path(img, size), int))
        assert diff.max() <= 1  # the same samples and filter; only rounding differs


@pytest.mark.parametrize(("w", "h"), [(40, 30), (16, 256), (300, 19), (32, 32)])
def test_ordinary_images_take_the_long_path_bit_for_bit(w, h) -> None:
    rng = np.random.default_rng(w + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    got = np.asarray(ResizeCentreCrop(16)(img))
    assert np.array_equal(got, np.asarray(long_path(img, 16)))


# ---- 2. class numbers in filters ---------------------------------------------------------


@pytest.fixture
def indexed(tmp_path) -> FakeArtifacts:
    """The fake model over a real (flat FAISS) index of the fake gallery: its manifest numbers
    the classes, as `coins index` does."""
    found = FakeArtifacts()
    fake = found.index
    ids = np.asarray(sorted(fake.vectors), dtype=np.int64)
    xb = fake.reconstruct(ids)
    rows = [fake.rows[int(i)] for i in ids]
    found.index = build_index(ids, xb, rows, tmp_path / "idx", index_key="flat", tune_queries=5)
    return found


@pytest.fixture
def indexed_client(tmp_path, indexed) -> Iterator[TestClient]:
    with running(create_app(settings(tmp_path), indexed)) as c:
        yield c


def classes(level: str, *labels: object) -> dict[str, object]:
    return {"must": [{"key": level, "match": {"any": list(labels)}}]}


BAD_FILTERS = [
    (classes("coarse", 999), "coarse class 999 out of range: the index has 3"),
    (classes("coarse", -1), "coarse class -1 out of range: the index has 3"),
    (classes("fine", 10**30), f"fine class {10**30} out of range: the index has 6"),
    (classes("fine", 1e10), "fine expects class names, got 10000000000.0"),
    (classes("coarse", 2.5), "coarse expects class names, got 2.5"),
]


@pytest.mark.parametrize(("filter_", "words"), BAD_FILTERS)
def test_bad_class_numbers_are_422_on_both_routes(indexed_client, filter_, words) -> None:
    body = {"vectors": [[1.0] * DIM], "k": 3, "filter": filter_}
    r = indexed_client.post("/v1/search", json=body)
    assert r.status_code == 422 and words in r.json()["message"], r.json()
    r = search_image(indexed_client, png(colour_image(1)), filter=json.dumps(filter_))
    assert r.status_code == 422 and words in r.json()["message"], r.json()
    assert "filter" in r.json()["message"]


def test_class_numbers_in_range_name_the_index_classes(indexed_client, indexed) -> None:
    names = indexed.index.manifest.classes["coarse"]
    body = {"vectors": [[1.0] * DIM], "k": 30, "filter": classes("coarse", 1)}
    found = indexed_client.post("/v1/search", json=body).json()["results"][0]["neighbors"]
    assert found and {n["metadata"]["coarse"] for n in found} == {names[1]}


def test_class_numbers_on_an_index_without_numbers_are_422(client) -> None:
    body = {"vectors": [[1.0] * DIM], "filter": classes("coarse", 0)}
    r = client.post("/v1/search", json=body)
    assert r.status_code == 422 and "out of range: the index has 0" in r.json()["message"]
    named = {"vectors": [[1.0] * DIM], "filter": classes("coarse", COARSE[0])}
    assert client.post("/v1/search", json=named).status_code == 200


# ---- 3. deeply nested JSON ---------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_json_in_the_filter_field_is_422(client) -> None:
    r = search_image(client, png(colour_image(1)), filter=DEEP)
    assert r.status_code == 422 and r.json()["message"].startswith("filter: expected")


def test_deep_json_in_the_items_field_is_422(client) -> None:
    files = [("images", ("a.png", png(colour_image(1)), "image/png"))]
    r = client.post("/v1/items/images", files=files, data={"items": DEEP}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["message"].startswith("items: expected")


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/v1/search", '{"vectors": ' + DEEP + "}"),
        ("POST", "/v1/search", DEEP),
        ("POST", "/v1/items", '{"items": ' + DEEP + "}"),
        ("DELETE", "/v1/items", '{"ids": ' + DEEP + "}"),
    ],
)
def test_deep_json_bodies_are_refused(client, method, url, body) -> None:
    headers = {"Content-Type": "application/json", **ADMIN}
    r = client.request(method, url, content=body, headers=headers)
    assert 400 <= r.status_code < 500 and r.json()["message"], r.text


@pytest.mark.parametrize(("method", "body"), [("POST", "items"), ("DELETE", "ids")])
def test_deep_json_admin_bodies_are_422_as_search_bodies_are(client, method, body) -> None:
    headers = {"Content-Type": "application/json", **ADMIN}
    r = client.request(
        method, "/v1/items", content='{"' + body + '": ' + DEEP + "}", headers=headers
    )
    assert r.status_code == 422, r.text


def test_admin_bodies_keep_their_schema_in_the_openapi(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]["/v1/items"]
    for method, model in (("post", "AddItemsRequest"), ("delete", "DeleteItemsRequest")):
        schema = paths[method]["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}


def test_too_many_items_are_refused_by_size_before_parsing(tmp_path, artifacts) -> None:
    s = settings(tmp_path, max_items_add=2)
    item = {"id": 1, "vector": [0.123456789] * DIM, "coarse": COARSE[0]}
    raw = json.dumps({"items": [item] * 5_000}).encode()
    assert len(raw) > s.max_add_bytes(DIM)
    with running(create_app(s, artifacts)) as c:
        r = c.post("/v1/items", content=raw, headers=ADMIN)
        assert r.status_code == 413 and "for adding items (2 items" in r.json()["message"]


# ---- 4. limits before work ---------------------------------------------------------------


def vectors_body(n: int) -> bytes:
    return json.dumps({"vectors": [[0.123456789] * DIM] * n, "k": 1}).encode()


def test_too_many_vectors_are_refused_by_size_before_parsing(tmp_path, artifacts) -> None:
    s = settings(tmp_path, max_vectors=4)
    limit = s.max_search_bytes(DIM)
    raw = vectors_body(50_000)  # 5 MB: ~150 MB of Python objects once parsed
    assert len(raw) > limit
    with running(create_app(s, artifacts)) as c:
        r, ms = cpu_ms(lambda: c.post("/v1/search", content=raw))
        print(f"{len(raw):,} bytes of vectors refused in {ms:.1f} ms of CPU")
        assert r.status_code == 413, r.json()
        assert f"limit of {limit:,} bytes for a search (4 query vectors" in r.json()["message"]
        assert ms < 1000
        chunked = c.post("/v1/search", content=iter([raw[:1000], raw[1000:]]))
        assert chunked.status_code == 413 and "at least" in chunked.json()["message"]
        # within the size bound, the count is still checked after parsing
        r = c.post("/v1/search", content=vectors_body(5))
        assert r.status_code == 413 and "5 queries" in r.json()["message"]
        assert c.post("/v1/search", content=vectors_body(4)).status_code == 200


def test_the_search_size_bound_admits_a_full_batch_of_long_floats(tmp_path) -> None:
    s = settings(tmp_path, max_vectors=16)
    worst = {"vectors": [[-2.2250738585072014e-308] * 512] * 16, "k": 10}
    assert len(json.dumps(worst, indent=1)) <= s.max_search_bytes(512)


def test_chunked_bodies_over_the_limit_are_413_on_form_routes(tmp_path, artifacts) -> None:
    app = create_app(settings(tmp_path, max_request_bytes=5000), artifacts)
    with running(app) as c:
        body = b"--b\r\n" + b"x" * 10_000
        headers = {"Content-Type": "multipart/form-data; boundary=b", **ADMIN}
        for url in ("/v1/search/image", "/v1/embed", "/v1/items/images"):
            r = c.post(url, content=iter([body[:3000], body[3000:]]), headers=headers)
            assert r.status_code == 413 and "request body" in r.json()["message"], (url, r.text)


# ---- 4c. a real server: header and body time limits --------------------------------------


@pytest.fixture
def server(request, tmp_path) -> Iterator[tuple[str, int]]:
    import uvicorn

    s = settings(
        tmp_path,
        port=free_port(),
        header_timeout_s=getattr(request, "param", 0.5),
        body_idle_timeout_s=0.5,
        body_timeout_s=1.5,
    )
    app = create_app(s, FakeArtifacts())
    srv = uvicorn.Server(server_config(app, s, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield s.host, s.port
    srv.should_exit = True
    thread.join(10)


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes `sock`, and after how many seconds; a timeout
    error after `limit` seconds."""
    sock.settimeout(limit)
    start, data = time.monotonic(), b""
    while chunk := sock.recv(4096):
        data += chunk
    return data, time.monotonic() - start


def test_idle_and_dribbling_connections_are_closed(server) -> None:
    # Bounds in counts and wide margins, not tight times: the server shares two busy cores
    idle = socket.create_connection(server)
    data, after = read_until_closed(idle, 5)  # closed by the 0.5 s header deadline
    assert data == b"" and after >= 0.4
    drip = socket.create_connection(server)
    drip.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    while sent < 25:  # a header line every 0.2 s: never complete, never idle
        try:
            drip.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
        sent += 1
        time.sleep(0.2)
    assert sent < 25  # closed by the deadline, not by the client's giving up (5 s of lines)
    idle.close()
    drip.close()


def test_keep_alive_requests_still_work_and_idle_ones_close(server) -> None:
    conn = http.client.HTTPConnection(*server, timeout=5)
    sockets = set()
    for _ in range(3):
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status":"ok","message":null}'
        sockets.add(conn.sock)
        time.sleep(0.1)  # well under the 0.5 s header deadline: the same connection serves again
    assert len(sockets) == 1 and conn.sock is not None
    assert read_until_closed(conn.sock, 3)[0] == b""
    conn.close()


@pytest.mark.parametrize("server", [60.0], indirect=True)  # a deadline that never bites here
def test_an_endless_header_is_cut_off_by_size(server) -> None:
    # httptools, unlike h11, keeps a header of any length: the protocol counts the bytes of an
    # unfinished request head and closes past MAX_HEAD_BYTES, long before the 60 s deadline
    sock = socket.create_connection(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
    sent = 0
    try:
        while sent < 1000 * MAX_HEAD_BYTES:  # 64 MiB: more than any socket buffers hold
            sock.sendall(b"a" * 4096)
            sent += 4096
    except OSError:
        pass
    reply, _ = read_until_closed(sock, 30)
    assert sent < 1000 * MAX_HEAD_BYTES and not reply.startswith(b"HTTP/1.1 200"), sent
    sock.close()
    ok = http.client.HTTPConnection(*server, timeout=5)  # the server still answers
    ok.request("GET", "/healthz", headers={"X-Fine": "a" * 1000})
    assert ok.getresponse().status == 200
    ok.close()


def test_a_stalled_body_is_408(server) -> None:
    sock = socket.create_connection(server)
    sock.sendall(
        b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
        b"\r\nContent-Length: 1000\r\n\r\n--b\r\n"
    )
    reply, seconds = read_until_closed(sock, 5)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"no data for 0.5 s" in reply and seconds < 3
    sock.close()


def test_a_stalled_or_dribbled_search_body_is_408(server) -> None:
    # /v1/search is answered before the middleware (SearchEndpoint): the same limits apply
    deadline = time.monotonic() + 10
    while True:  # the fake model and index load in the background
        ready = http.client.HTTPConnection(*server, timeout=5)
        ready.request("GET", "/readyz")
        up = ready.getresponse().status == 200
        ready.close()
        if up:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    head = b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    stalled = socket.create_connection(server)
    stalled.sendall(head + b'Content-Length: 1000\r\n\r\n{"vectors": [[')
    reply, seconds = read_until_closed(stalled, 5)
    assert reply.startswith(b"HTTP/1.1 408") and b"no data for 0.5 s" in reply, reply
    assert seconds < 3
    stalled.close()
    drip = socket.create_connection(server)
    drip.sendall(head + b"Content-Length: 1000\r\n\r\n")
    for _ in range(20):  # a byte every 0.2 s: never idle for 0.5 s, past the 1.5 s total
        try:
            drip.sendall(b" ")
        except OSError:
            break
        time.sleep(0.2)
    reply, _ = read_until_closed(drip, 5)
    assert reply.startswith(b"HTTP/1.1 408") and b"not received within 1.5 s" in reply, reply
    drip.close()


# ---- 5. Host header ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/index/", "/healthz/", "/v1/search/"])
def test_a_forged_host_is_never_redirected_to(client, path) -> None:
    r = client.get(path, headers={"Host": "evil"}, follow_redirects=False)
    assert "evil" not in r.headers.get("location", "")
    assert r.status_code in (404, 405), r.status_code
    assert client.get(path.rstrip("/"), headers={"Host": "evil"}).status_code in (200, 405)
