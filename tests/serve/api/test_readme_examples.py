"""The README's example of adding an item by image works as printed: its code block is read from
README.md ("Adding an item by image") and run against a server in a thread (the stand-in model,
a real index with a `price` field), with only the address changed. curl runs it where curl is
installed, and the same request (parsed from the block: URL, headers, form parts) is sent
through httpx too."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_fakes import FakeEmbedder, colour_image
from serve_fuzz import IndexArtifacts
from serve_real import serving

from coins.serve.api.app import create_app
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index

README = Path(__file__).resolve().parents[3] / "README.md"
KEY = "readme-key"
DOCUMENTED = "http://127.0.0.1:8000"


def readme_block(marker: str) -> str:
    """The ```bash block of README.md that contains `marker`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one README bash block with {marker!r}, got {len(found)}"
    return found[0]


def command_and_answer(block: str) -> tuple[str, str]:
    """The block's one command (continuation lines joined) and the answer its comment shows."""
    command = re.sub(r"\\\n\s*", " ", block)
    lines = [line for line in command.splitlines() if line.strip()]
    answers = [line.lstrip("# ") for line in lines if line.startswith("#")]
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) == 1 and len(answers) == 1, block
    return commands[0], answers[0]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    embedder = FakeEmbedder()
    xb = embedder.embed_images([colour_image(i) for i in range(20)]).vectors
    rows = [{"id": i, "coarse": "kitchen", "fine": "cup", "price": f"{i}.5"} for i in range(20)]
    build_index(np.arange(20), xb, rows, tmp_path / "index", "flat",
                model_sha256=embedder.sha256, tune_queries=0)  # fmt: skip
    settings = ServeSettings(
        index_dir=tmp_path / "index", model=tmp_path / "m.onnx", workers=2, threads=1, api_key=KEY
    )
    app = create_app(settings, IndexArtifacts())
    with serving(app) as url:
        yield url


def send_as_httpx(command: str, cwd: Path) -> str:
    """The curl command's request through httpx: -X, -H, -F name=value and -F name=@file."""
    words = shlex.split(os.path.expandvars(command))
    assert words[0] == "curl", words
    method, target, headers, data, files = "GET", "", {}, {}, []
    it = iter(words[1:])
    for word in it:
        if word == "-s":
            continue
        if word == "-X":
            method = next(it)
        elif word == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-F":
            name, _, value = next(it).partition("=")
            if value.startswith("@"):
                path = cwd / value[1:]
                files.append((name, (path.name, path.read_bytes(), "image/png")))
            else:
                data[name] = value
        else:
            target = word
    r = httpx.request(method, target, headers=headers, data=data, files=files, timeout=30)
    return r.text


@pytest.mark.parametrize("via", ["curl", "httpx"])
def test_adding_an_item_by_image_works_as_printed(url, tmp_path: Path, monkeypatch, via) -> None:
    command, answer = command_and_answer(readme_block("/v1/items/images"))
    assert DOCUMENTED in command
    command = command.replace(DOCUMENTED, url)
    colour_image(3, size=32).save(tmp_path / "mug.png")  # the file the example uploads
    monkeypatch.setenv("COINS_API_KEY", KEY)
    if via == "curl":
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed; the httpx case sends the same request")
        out = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=True).stdout  # fmt: skip
    else:
        out = send_as_httpx(command, tmp_path)
    body = json.loads(out)
    assert answer.startswith('{"added":1,') and body["added"] == 1 and body["ntotal"] == 21
    item_id = json.loads(re.search(r"items=(\[.*\])", command).group(1))[0]["id"]  # type: ignore[union-attr]
    item = httpx.get(f"{url}/v1/items/{item_id}").json()
    assert item["fine"] == "mug" and item["extra"] == {"price": 12.5}
    found = httpx.post(f"{url}/v1/search", json={"ids": [item_id], "k": 3}).json()
    assert len(found["results"][0]["neighbors"]) == 3
