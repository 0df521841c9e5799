"""Write a gallery of generated photo-like JPEG files and its manifest (retrieval/data/photos.py).

DIR/<shape>/<pattern>/NNNNNN.jpg, and DIR/manifest.csv with columns path, coarse, fine, split
(about 80/20 train/test), which `--dataset csv --root DIR` reads. Photo i depends on the seed
and i only, so galleries of different counts share their first photos.

    .venv/bin/python benchmarks/make_photos.py --out /tmp/photos --count 20000
"""

from __future__ import annotations

import argparse
import time

from coins.retrieval.data.photos import write_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="gallery folder (created)")
    parser.add_argument("--count", type=int, required=True, help="number of photos")
    parser.add_argument("--size", type=int, default=224, help="side of the square photos, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    parser.add_argument("--ext", choices=["jpg", "png"], default="jpg", help="file format")
    args = parser.parse_args()
    tic = time.perf_counter()
    manifest = write_photos(args.out, args.count, args.size, args.seed, args.workers, args.ext)
    seconds = time.perf_counter() - tic
    print(
        f"{args.count} photos of {args.size} px in {seconds:.1f} s "
        f"({args.count / seconds:.0f} photos/s); manifest {manifest}"
    )


if __name__ == "__main__":
    main()
