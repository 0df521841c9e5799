"""`coins serve` and `coins query` fail with a clear message before anything starts."""

from __future__ import annotations

from serve_real import free_port
from typer.testing import CliRunner

from coins.cli import app

runner = CliRunner()


def test_serve_needs_existing_model_and_index(tmp_path) -> None:
    result = runner.invoke(app, ["serve", str(tmp_path / "none"), "--model", str(tmp_path / "m")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_serve_reads_paths_and_settings_from_the_environment(tmp_path) -> None:
    env = {"COINS_INDEX_DIR": str(tmp_path / "idx"), "COINS_MODEL": str(tmp_path / "m.onnx")}
    result = runner.invoke(app, ["serve"], env=env)
    assert result.exit_code == 2 and "m.onnx does not exist" in result.output
    result = runner.invoke(app, ["serve", "--workers", "0"], env=env)
    assert result.exit_code == 2 and "workers" in result.output


def test_query_needs_an_image_an_id_or_recall() -> None:
    result = runner.invoke(app, ["query", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "expected query images or ids" in result.output


def test_query_of_a_server_that_is_not_there(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["query", url, "--id", "3"])
    assert result.exit_code == 2 and "error:" in result.output
    result = runner.invoke(app, ["query", url, "--id", "3", "--wait", "0.5"])
    assert result.exit_code == 2 and "not ready after" in result.output
