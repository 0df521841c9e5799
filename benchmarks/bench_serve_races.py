"""Admin writes racing reloads against a real `coins serve` process: adds, deletes and reloads at
once under searching clients, over HTTP (the check of tests/test_serve_races.py, at full size).

    python benchmarks/bench_serve_races.py --adds 300 --reloads 300 --deletes 100 --searchers 8

It exports a tiny randomly initialised model, indexes a folder of generated images with it
(flat), starts `coins serve` on them with an API key, and prints what was sent and what went
wrong: 5xx answers, valid requests refused, acknowledged adds not found right after their 200,
acknowledged deletes still found. The exit status is 1 unless all four are zero.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from races import race
from serve_fakes import colour_image
from train_fixtures import TINY_MODEL

from coins.retrieval.models import Embedder, EmbedderConfig
from coins.retrieval.onnx.export import export_model
from coins.serve.client.background import start_server, stop_server
from coins.serve.index.build import build_index_from_model
from coins.serve.index.store import SearchIndex

KEY = "bench-races"


def build(root: Path, n: int) -> tuple[Path, Path, Path]:
    """A tiny ONNX model, n images in root/gallery, and a flat index of them."""
    torch.manual_seed(0)
    model = root / "tiny.onnx"
    export_model(Embedder(EmbedderConfig.from_dict(TINY_MODEL)).eval(), model)
    gallery = root / "gallery"
    gallery.mkdir()
    for i in range(n):
        colour_image(i, size=16).save(gallery / f"{i:05d}.png")
    index_dir = root / "index"
    build_index_from_model(model, index_dir, images=gallery, index_key="flat", progress=False)
    return model, gallery, index_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adds", type=int, default=300)
    parser.add_argument("--reloads", type=int, default=300)
    parser.add_argument("--deletes", type=int, default=100)
    parser.add_argument("--searchers", type=int, default=8)
    parser.add_argument("--gallery", type=int, default=200, help="items indexed at the start")
    parser.add_argument("--workers", type=int, default=4, help="the server's search threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-races-") as tmp:
        model, gallery, index_dir = build(Path(tmp), args.gallery)
        proc, url = start_server(
            index_dir, model, "--api-key", KEY, "--workers", str(args.workers), "--threads", "1"
        )
        try:
            limits = httpx.Limits(max_connections=args.searchers + 8)
            with httpx.Client(base_url=url, timeout=120, limits=limits) as client:
                dim = client.get("/v1/index").json()["dim"]
                counts = race(
                    client, adds=args.adds, reloads=args.reloads, deletes=args.deletes,
                    searchers=args.searchers, gallery_ids=list(range(args.gallery)), dim=dim,
                    image_path=lambda i: str(gallery / f"{i % args.gallery:05d}.png"),
                    seed=args.seed, headers={"X-API-Key": KEY},
                )  # fmt: skip
                served = client.get("/v1/index").json()["ntotal"]
        finally:
            stop_server(proc)
        on_disk = SearchIndex.load(index_dir).ntotal
    print(counts.summary())
    expected = args.gallery + counts.adds - counts.deletes
    print(f"items: {served} served, {on_disk} on disk, {expected} expected")
    for line in (counts.server_errors + counts.refused)[:10]:
        print("  ", line)
    return 0 if counts.ok and served == on_disk == expected else 1


if __name__ == "__main__":
    sys.exit(main())
