"""Write a gallery of generated photo-like JPEG files.

Two layouts. `--layout csv` (the default): retrieval/data/photos.py, square photos
DIR/<shape>/<pattern>/NNNNNN.jpg and DIR/manifest.csv with columns path, coarse, fine, split
(about 80/20 train/test), which `--dataset csv --root DIR` reads. `--layout folder`:
retrieval/data/product_photos.py, products (a shape, a pattern and colours of their own)
photographed at sizes drawn in --min-size..--max-size, DIR/<shape>/<product>/NNNNNN.jpg without
split folders, which `--dataset folder --root DIR --test-fraction 0.2` reads. Photo i depends on
the seed and i only (and, for products, on the class counts and sizes), so galleries of
different counts share their first photos.

    .venv/bin/python benchmarks/make_photos.py --out /tmp/photos --count 20000
    .venv/bin/python benchmarks/make_photos.py --layout folder --out runs/photos --count 2400 \
        --products 48 --coarse 8 --min-size 128 --max-size 224
"""

from __future__ import annotations

import argparse
import time

from coins.retrieval.data.photos import write_photos
from coins.retrieval.data.product_photos import write_product_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="gallery folder (created)")
    parser.add_argument("--count", type=int, required=True, help="number of photos")
    parser.add_argument("--layout", choices=["csv", "folder"], default="csv")
    parser.add_argument("--size", type=int, default=224, help="csv: side of the square photos, px")
    parser.add_argument("--min-size", type=int, default=128, help="folder: least side, px")
    parser.add_argument("--max-size", type=int, default=224, help="folder: largest side, px")
    parser.add_argument("--products", type=int, default=48, help="folder: fine classes")
    parser.add_argument("--coarse", type=int, default=8, help="folder: coarse classes (shapes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    parser.add_argument("--ext", choices=["jpg", "png"], default="jpg", help="csv: file format")
    args = parser.parse_args()
    tic = time.perf_counter()
    if args.layout == "folder":
        written = write_product_photos(
            args.out, args.count, args.products, args.coarse, (args.min_size, args.max_size),
            args.seed, args.workers,
        )  # fmt: skip
        what = f"{args.products} products of {args.coarse} shapes in {written}"
    else:
        written = write_photos(args.out, args.count, args.size, args.seed, args.workers, args.ext)
        what = f"manifest {written}"
    seconds = time.perf_counter() - tic
    print(f"{args.count} photos in {seconds:.1f} s ({args.count / seconds:.0f} photos/s); {what}")


if __name__ == "__main__":
    main()
