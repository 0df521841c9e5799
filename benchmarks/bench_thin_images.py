"""Hostile inputs: CPU time and peak memory of a 1 x 100,000 and a 1 x 2,000,000 PNG.

For each image, in a fresh process each (so that the peak resident set is this work's own):
  refused  - the server's decoder with its default limits (`decode_image`, aspect <= 32:1);
  bounded  - decoded without the aspect limit, then `eval_transform` (the offline path, and the
             server's with the limit raised): only the centre crop is resized;
  long     - with --long: torchvision's Resize then CenterCrop on the whole image, the path
             before the fix (1 x 100,000 only: the 1 x 2,000,000 one asks for gigabytes).
Prints CPU ms (time.process_time) and the peak resident set's growth (ru_maxrss) per case.

    .venv/bin/python benchmarks/bench_thin_images.py --size 32 --long
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time

HEIGHTS = (100_000, 2_000_000)


def thin_png(height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (1, height), 200).save(out, format="PNG")
    return out.getvalue()


def measure(case: str, height: int, size: int) -> dict[str, object]:
    """One case in this process: CPU ms and peak-RSS growth in MiB, and what came out."""
    from torchvision.transforms import v2

    from coins.retrieval.data import Preprocess, eval_transform
    from coins.serve.api.decode import decode_image
    from coins.serve.api.errors import ApiError
    from coins.serve.api.settings import ServeSettings

    limits = ServeSettings.model_fields
    max_pixels = limits["max_image_pixels"].default
    max_aspect = limits["max_image_aspect"].default
    data = thin_png(height)
    transform = eval_transform(Preprocess(input_size=size))
    long_path = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    try:
        if case == "refused":
            decode_image(data, max_pixels=max_pixels, max_aspect=max_aspect)
            outcome = "decoded"
        elif case == "bounded":
            x = transform(decode_image(data, max_pixels=max_pixels))
            outcome = f"tensor {list(x.shape)}"
        else:
            img = long_path(decode_image(data, max_pixels=max_pixels))
            outcome = f"image {img.size[0]}x{img.size[1]}"
    except ApiError as err:
        outcome = f"{err.status}: {err.message}"
    cpu_ms = 1000 * (time.process_time() - start)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"png_bytes": len(data), "cpu_ms": cpu_ms, "peak_mib": (rss1 - rss0) / 1024,
            "outcome": outcome}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="The model's input_size.")
    parser.add_argument("--long", action="store_true", help="Also the unbounded path (1x100k).")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "HEIGHT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.long and args.size > 64:
        parser.error("--long resizes 1 x 100,000 to size x size*100,000: keep --size <= 64")
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.size)))
        return
    cases = [("refused", h) for h in HEIGHTS] + [("bounded", h) for h in HEIGHTS]
    if args.long:
        cases.append(("long", HEIGHTS[0]))
    print(f"input_size {args.size}")
    print("| image | PNG bytes | case | CPU ms | peak RSS growth MiB | outcome |")
    print("|---|---|---|---|---|---|")
    for case, height in cases:
        cmd = [sys.executable, __file__, "--size", str(args.size), "--child", case, str(height)]
        row = json.loads(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout)
        print(
            f"| 1 x {height:,} | {row['png_bytes']:,} | {case} | {row['cpu_ms']:.1f} | "
            f"{row['peak_mib']:.1f} | {str(row['outcome'])[:70]} |"
        )


if __name__ == "__main__":
    main()
