"""`coins query` against a server in a thread (the stand-in model and gallery): an image query
prints its predicted coarse class and what the gate did; `--filter` restricts image and id
queries; a bad filter is the server's 422, said by the command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_fakes import FakeArtifacts, colour_image
from serve_real import serving
from typer.testing import CliRunner

from coins.cli import app as cli
from coins.serve.api.app import create_app
from coins.serve.api.settings import ServeSettings


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("query-cli")
    app = create_app(
        ServeSettings(index_dir=tmp, model=tmp / "m.onnx", workers=2, threads=1), FakeArtifacts()
    )
    with serving(app) as url:
        yield url


def query(*args: str) -> str:
    result = CliRunner().invoke(cli, ["query", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_an_image_query_prints_the_predicted_class_and_the_gate(url, tmp_path: Path) -> None:
    image = tmp_path / "q.png"
    colour_image(4).save(image)
    out = query(url, "--image", str(image), "-k", "3", "--gate", "coarse", "--gate-min-prob", "0")
    assert f"query image {image}:" in out
    assert "predicted coarse " in out and "searched coarse " in out and "#3" in out
    out = query(url, "--image", str(image), "--gate", "coarse", "--gate-min-prob", "1")
    assert "not gated: predicted coarse" in out
    out = query(url, "--image", str(image))  # no gate: the three most probable classes
    assert out.count(" (p 0.") == 3


def test_filter_restricts_id_and_image_queries(url, tmp_path: Path) -> None:
    bags = json.dumps({"must": [{"key": "coarse", "match": {"value": "bags"}}]})
    out = query(url, "--id", "100", "-k", "5", "--filter", bags, "--json")
    neighbors = json.loads(out)["results"][0]["neighbors"]
    assert len(neighbors) == 5 and {n["metadata"]["coarse"] for n in neighbors} == {"bags"}
    image = tmp_path / "q.png"
    colour_image(4).save(image)
    out = query(url, "--image", str(image), "-k", "5", "--filter", bags, "--json")
    neighbors = json.loads(out)["results"][0]["neighbors"]
    assert {n["metadata"]["coarse"] for n in neighbors} == {"bags"}


def test_a_bad_filter_is_refused_naming_it(url) -> None:
    hue = json.dumps({"must": [{"key": "hue", "match": {"value": 1}}]})
    result = CliRunner().invoke(cli, ["query", url, "--id", "100", "--filter", hue])
    assert result.exit_code == 2
    assert "422" in result.output and "unknown field 'hue'" in result.output
    result = CliRunner().invoke(cli, ["query", url, "--id", "100", "--filter", "{"])
    assert result.exit_code == 2 and "--filter: not valid JSON" in result.output
