"""Which FAISS index to build: the named kinds, and `auto` from the size and the memory.

`auto`, after autofaiss (`get_optimal_index_keys_v2`; the FAISS wiki "Guidelines to choose an
index"): exact search while it is cheap, then the best index that fits the memory budget.

- n <= 100,000: `IDMap2,Flat`, exact (one query scans 100k x d floats: ~1 ms at d = 128).
- An IVF with flat (uncompressed) lists if it fits: `IVF{nlist},Flat`, nlist the power of two
  nearest 4 sqrt(n). **[design]** autofaiss tries HNSW first; we put IVF first because it
  supports removal and trains on a sample in minutes on a few cores, and HNSW remains a named
  kind. autofaiss moves to 16k-64k lists beyond 1M vectors; on CPU-only machines that k-means
  costs tens of minutes, so we keep 4 sqrt(n), capped at 65,536.
- Else a product-quantised IVF, `IVF{nlist},PQ{m}x8`, with the largest m (bytes per vector)
  whose codes fit, as autofaiss's compression-ratio rule; with an OPQ rotation in front,
  `OPQ{m}_{d},IVF{nlist},PQ{m}x8`, when the codes are small (m <= d / 4, a 16x or greater
  compression of float32): there the rotation that balances variance across the m sub-vectors
  buys the most recall for a training cost of seconds on the sample. This is the 10M+ case
  under a memory budget (10M x 128-d IVF-Flat needs 5 GB; `--max-memory-gb 0.5` gives
  `OPQ32_128,IVF16384,PQ32x8`).
- Else nothing fits: IndexChoiceError.
- On-disk inverted lists (`on_disk`): the lists live in a file the OS pages in, so the budget
  bounds only what stays in memory (centroids, ids' direct map) and IVF-Flat is kept at any
  size; under FLAT_MAX vectors an IVF is built too, as the lists need one (autofaiss's
  `should_be_memory_mappable` does the same).

**[design]** Where `auto` differs from autofaiss, and why:
- autofaiss always puts OPQ in front of PQ and expands it (`OPQ{m}_{y}`, y = (min(d / m, 6) +
  1) m > d); we rotate only for small codes and keep y = d, as expanding costs search time on
  every query for a gain measured in autofaiss on CLIP vectors, not ours.
- autofaiss uses an HNSW coarse quantizer (`IVF{nlist}_HNSW32`) from 1,000 lists; we keep a
  flat one: at our cap of 65,536 lists it costs ~1 ms a query, and it needs no extra graph in
  memory or in the file, nor a second knob to tune.
- autofaiss picks 2^16-2^18 lists for 10M+ vectors; we keep 4 sqrt(n) (16,384 at 10M), as
  the k-means of 2^16 centroids takes hours on the few CPU cores we target.
- autofaiss searches many candidate keys and keeps the best under a speed budget; we choose
  one key by rule and tune only its search knob (`tuning.tune`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

FLAT_MAX = 100_000  # exact search up to this many vectors
HNSW_M = 32  # links per node of the `hnsw` kind
PQ_BYTES = (64, 48, 32, 24, 16, 12, 8, 4)  # candidate code sizes of `ivfpq` / `auto`, largest first
ID_BYTES = 8  # an int64 id per vector in an inverted list or an IDMap
MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below this many training points per centroid
TRAIN_POINTS_PER_LIST = 64  # training sample: this many points per centroid (FAISS caps at 256)
KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")


class IndexChoiceError(ValueError):
    """An index kind or factory string that cannot be built for these vectors."""


@dataclass(frozen=True)
class IndexChoice:
    """A FAISS factory string and why it was chosen."""

    key: str
    reason: str


def choose_index(
    kind: str, n: int, d: int, max_memory: int | None = None, on_disk: bool = False
) -> IndexChoice:
    """The factory string for `kind` (one of KINDS, or any FAISS factory string) and n x d vectors.

    `max_memory` (bytes) bounds the index `auto` picks; default half the physical memory.
    `on_disk`: the inverted lists will be on disk (an IVF is required, and chosen by `auto`).
    """
    if n < 1 or d < 1:
        raise IndexChoiceError(f"expected at least one vector of dimension >= 1, got {n} x {d}")
    if kind == "auto" and on_disk:
        nlist = nlist_for(n)
        return IndexChoice(f"IVF{nlist},Flat", f"{n:,} vectors; IVF-Flat with lists on disk")
    if kind == "auto":
        return choose_auto(n, d, default_memory() if max_memory is None else max_memory)
    if kind == "flat":
        return IndexChoice("IDMap2,Flat", "exact search")
    if kind == "hnsw":
        return IndexChoice(f"IDMap2,HNSW{HNSW_M}", f"HNSW graph, {HNSW_M} links per node")
    if kind == "ivf":
        return IndexChoice(f"IVF{nlist_for(n)},Flat", "inverted lists, 4 sqrt(n) of them")
    if kind == "ivfpq":
        m = pq_bytes_for(d, budget=None)
        return IndexChoice(f"IVF{nlist_for(n)},PQ{m}x8", f"inverted lists, {m}-byte PQ codes")
    if kind.lower() in KINDS:
        raise IndexChoiceError(f"index kinds are lower case: {KINDS}, got {kind!r}")
    return IndexChoice(kind, "FAISS factory string given")


def choose_auto(n: int, d: int, max_memory: int) -> IndexChoice:
    """Exact up to FLAT_MAX vectors, then IVF-Flat if it fits `max_memory`, then IVF-PQ."""
    flat_bytes = n * (4 * d + ID_BYTES)
    if n <= FLAT_MAX:
        return IndexChoice("IDMap2,Flat", f"{n:,} <= {FLAT_MAX:,} vectors: exact search")
    nlist = nlist_for(n)
    ivf_bytes = flat_bytes + nlist * 4 * d  # codes and ids, plus the centroids
    if ivf_bytes <= max_memory:
        return IndexChoice(
            f"IVF{nlist},Flat",
            f"{n:,} vectors; IVF-Flat needs {_mib(ivf_bytes)} <= budget {_mib(max_memory)}",
        )
    m = pq_bytes_for(d, budget=max_memory / n - ID_BYTES)
    opq = f"OPQ{m}_{d}," if m <= d / 4 else ""
    return IndexChoice(
        f"{opq}IVF{nlist},PQ{m}x8",
        f"{n:,} vectors; IVF-Flat needs {_mib(ivf_bytes)} > budget {_mib(max_memory)}: "
        f"{m}-byte PQ codes" + (", OPQ rotation" if opq else ""),
    )


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 4 sqrt(n), within [1, 65536],
    and at most n / 39 so that k-means has enough points per centroid."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    nlist = min(nlist, 65536)
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n:
        nlist //= 2
    return nlist


def pq_bytes_for(d: int, budget: float | None) -> int:
    """PQ code size m: m divides d; with a budget, the largest m <= budget, else d / 4 or less."""
    target = d / 4 if budget is None else budget
    for m in PQ_BYTES:
        if m <= target and d % m == 0:
            return m
    raise IndexChoiceError(
        f"no PQ code size of {PQ_BYTES} divides d = {d} within {target:.0f} bytes per vector; "
        "give a factory string (e.g. 'OPQ16_64,IVF1024,PQ16x8') or more memory"
    )


def train_size(key: str, n: int) -> int:
    """Vectors to train `key` on: TRAIN_POINTS_PER_LIST per inverted list (and >= 256 * 39 for
    PQ codebooks), at most n. 0 for indexes that need no training."""
    match = re.search(r"IVF(\d+)", key)
    if match is None:
        return n if re.search(r"PQ|SQ|LSH|OPQ|PCA", key) else 0
    size = int(match.group(1)) * TRAIN_POINTS_PER_LIST
    if "PQ" in key:
        size = max(size, 256 * MIN_POINTS_PER_LIST)
    return min(size, n)


def default_memory() -> int:
    """Half of the physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"
