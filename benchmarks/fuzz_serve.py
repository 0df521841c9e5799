"""Fuzz the whole search API from its OpenAPI document with schemathesis, longer than the tests.

In process (ASGI, no socket), every route including the admin ones (with the API key), in both
of schemathesis' generation modes (`positive` requests fit the document, `negative` ones break
it on purpose), then stateful scenarios following the links of tests/support/serve_fuzz.py (list ->
search, delete -> get, add -> get -> reload). The document is first told what the server
checks but does not publish (vector dimension, stored ids, one query kind): without that nearly
every search stops at validation.

Each route, and the scenarios, get a fresh copy of the index: deletes of one route would
otherwise leave the next nothing to find. By default that index is a real flat FAISS index and
metadata store of 30 items with the tests' stand-in embedder (`--index-key hnsw` for HNSW);
`--index-dir` and `--model` fuzz an exported model and a built index instead (on copies).

    python benchmarks/fuzz_serve.py --examples 200 --seed 0
    python benchmarks/fuzz_serve.py --index-dir runs/fm-index --model runs/fm.onnx --examples 50
    python benchmarks/fuzz_serve.py --examples 50 --strict   # also the documentation checks

Prints the requests sent per route with their status classes, then each distinct failure (route,
check, status; for an unhandled exception its type and the line that raised it) with the
smallest reproducing request Hypothesis shrinks it to. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

# The fuzz target and the stand-in embedder are the tests' (tests/support).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from serve_fakes import DIM
from serve_fuzz import (
    CHECKS,
    STATEFUL_CHECKS,
    IndexArtifacts,
    build_gallery_index,
    fuzz_settings,
    load_schema,
    restore,
    served_document,
    wait_ready,
)

from coins.serve.api.app import create_app
from coins.serve.api.loading import OnnxArtifacts

# With --strict, also what the document promises but does not describe for this API: the
# statuses the routes raise themselves, lax parsing, bodies that must be images.
STRICT = (
    "status_code_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CLASSES = ("2xx", "4xx", "5xx")


@dataclass(frozen=True)
class Failure:
    """One distinct failure: the route, the check, the status, and what the server said or
    raised (on a 5xx)."""

    route: str
    check: str
    status: int
    message: str


class Reproduced(Exception):
    """Raised to make Hypothesis shrink an example that fails in a given way."""


class Fuzzer:
    """Sends generated cases, counting requests per route and collecting distinct failures."""

    def __init__(self, schema: Any, new_app: Callable[[], Any], examples: int, seed: int) -> None:
        self.schema = schema
        self.new_app = new_app
        self.examples = examples
        self.seed = seed
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, str]] = Counter()  # (route, "2xx") while exploring
        self.shrink_sent = 0
        self.failures: dict[Failure, tuple[GenerationMode, Any]] = {}  # mode, first case seen

    def explore(self, operation: Any) -> None:
        """Both generation modes, on a fresh app."""
        app = self.new_app()
        for mode in MODES:
            self._run(operation, mode, self._recorder(app, mode), [Phase.generate])

    def _recorder(self, app: Any, mode: GenerationMode) -> Callable[[Any], None]:
        def one(case: Any) -> None:
            self.sent[case.operation.label] += 1
            for failure in self.failures_of(app, case, count=True):
                self.failures.setdefault(failure, (mode, case))

        return one

    def shrink(self, failure: Failure) -> Any | None:
        """Replay the exploration of the failure's route (same seed, fresh app) until it fails
        that way, then let Hypothesis shrink it; None if the replay does not fail so."""
        mode, _ = self.failures[failure]
        method, path = failure.route.split(" ", 1)
        app = self.new_app()
        smallest = None

        def one(case: Any) -> None:
            nonlocal smallest
            self.shrink_sent += 1
            if failure in self.failures_of(app, case):
                smallest = case  # Hypothesis replays the smallest failing example last
                raise Reproduced

        with contextlib.suppress(Reproduced, hypothesis.errors.FlakyFailure):
            self._run(self.schema[path][method], mode, one, [Phase.generate, Phase.shrink])
        return smallest

    def failures_of(self, app: Any, case: Any, count: bool = False) -> set[Failure]:
        route = case.operation.label
        try:
            response = case.call(app=app)
        except Exception as error:  # Starlette answers 500, then raises it again to the caller
            self.statuses[route, "5xx"] += count
            return {Failure(route, "unhandled exception", 500, _raised_at(error))}
        self.statuses[route, f"{response.status_code // 100}xx"] += count
        try:
            case.validate_response(response, transport_kwargs={"app": app})
        except FailureGroup as group:
            message = _server_message(response) if response.status_code >= 500 else ""
            return {
                Failure(route, f"{f.code} {f.kind_title}", response.status_code, message)
                for f in group.exceptions
            }
        return set()

    def _run(self, operation: Any, mode: GenerationMode, test: Any, phases: list[Phase]) -> None:
        test = hypothesis.given(case=operation.as_strategy(generation_mode=mode))(test)
        test = hypothesis.settings(_settings(self.examples), phases=phases)(test)
        try:
            hypothesis.seed(self.seed)(test)()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # a route without inputs has nothing to break


def scenarios(
    schema: Any, app: Any, pristine: Path, count: int, steps: int, seed: int
) -> tuple[Counter, str]:
    """Run `count` link-following scenarios, each from the pristine index; requests per route,
    and the shrunk failure."""
    sent: Counter[str] = Counter()
    if count == 0:
        return sent, ""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            restore(schema, app, pristine)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"app": app}

        def after_call(self, response: Any, case: Any) -> None:
            sent[case.operation.label] += 1
            super().after_call(response, case)

    settings = hypothesis.settings(
        _settings(count), stateful_step_count=steps, phases=[Phase.generate, Phase.shrink]
    )
    try:
        hypothesis.seed(seed)(Workflow).run(settings=settings)
    except (Exception, FailureGroup) as error:  # failed checks, or an exception of the app
        return sent, f"{type(error).__name__}: {error}"
    return sent, ""


def _settings(examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )


def _raised_at(error: BaseException) -> str:
    """The exception's type and the last line of this project in its traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "site-packages" not in f.filename] or frames
    return f"{type(error).__name__} at {ours[-1].filename}:{ours[-1].lineno} ({ours[-1].name})"


def _shortened(text: str, most: int = 1000) -> str:
    """A reproduction without the middle of a huge body (a deeply nested JSON text)."""
    if len(text) <= most:
        return text
    return f"{text[: most // 2]} ...[{len(text) - most} characters]... {text[-most // 2 :]}"


def _server_message(response: Any) -> str:
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return response.text[:80]


class Target:
    """Ready apps, each on a fresh copy of the pristine index; its dimension and some of its
    ids (asked of a first app when the index is not the stand-in gallery)."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.root = root
        self.model = args.model
        self.numbers = itertools.count()
        if args.index_dir is None:
            self.pristine, self.ids = build_gallery_index(root / "gallery", args.index_key)
            self.dim = DIM
            self.artifacts: Callable[[], Any] = IndexArtifacts
            return
        self.pristine, self.artifacts = args.index_dir, OnnxArtifacts
        app = self.new_app()
        plain = load_schema(app.openapi())
        self.dim = plain["/v1/index"]["GET"].Case().call(app=app).json()["dim"]
        page = plain["/v1/items"]["GET"].Case(query={"limit": 50}).call(app=app).json()
        self.ids = [item["id"] for item in page["items"]]

    def new_app(self) -> Any:
        index_dir = self.root / f"index-{next(self.numbers)}"
        shutil.copytree(self.pristine, index_dir)
        app = create_app(fuzz_settings(index_dir, self.model), self.artifacts())
        wait_ready(load_schema(app.openapi()), app, timeout=300)
        return app


def run(args: argparse.Namespace, root: Path) -> int:
    # Failures are reported below; the app's own log of each would bury them.
    logging.getLogger("coins.serve").setLevel(logging.CRITICAL)
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # malformed parts are the point
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # cut-short images too
    (root / "gallery").mkdir()
    target = Target(args, root)
    app = target.new_app()
    document = served_document(app.openapi(), target.dim, target.ids)
    checks = CHECKS + (STRICT if args.strict else ())
    schema = load_schema(document, checks)
    fuzzer = Fuzzer(schema, target.new_app, args.examples, args.seed)
    start = time.perf_counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        fuzzer.explore(operation)
    explored = time.perf_counter() - start
    start = time.perf_counter()
    stateful = load_schema(document, checks + STATEFUL_CHECKS)
    scenario_sent, scenario_failure = scenarios(
        stateful, app, target.pristine, args.scenarios, args.steps, args.seed
    )
    scenario_s = time.perf_counter() - start

    print(f"{sum(fuzzer.sent.values())} requests to {len(operations)} routes in {explored:.0f} s "
          f"(seed {args.seed}, up to {args.examples} examples per route and mode)")  # fmt: skip
    print(f"{sum(scenario_sent.values())} more in {args.scenarios} stateful scenarios of up to "
          f"{args.steps} steps in {scenario_s:.0f} s")  # fmt: skip
    print("requests per route: generated (positive + negative), their 2xx/4xx/5xx, in scenarios")
    for operation in operations:
        label = operation.label
        by_class = "/".join(str(fuzzer.statuses[label, c]) for c in CLASSES)
        print(f"  {fuzzer.sent[label]:6d} {by_class:>13} {scenario_sent[label]:6d}  {label}")
    print(f"{len(fuzzer.failures)} distinct failures")
    for failure, (mode, first) in sorted(fuzzer.failures.items(), key=lambda kv: str(kv[0])):
        shrunk = fuzzer.shrink(failure)
        note = "" if shrunk is not None else " (replay did not fail so: first seen, not shrunk)"
        print(f"\n[{failure.status}] {failure.route}: {failure.check} {failure.message}{note}")
        print(f"  mode: {mode.value}")
        print(f"  {_shortened((first if shrunk is None else shrunk).as_curl_command())}")
    print(f"\n{fuzzer.shrink_sent} more requests while shrinking")
    if scenario_failure:
        print(f"\nstateful scenario failed:\n{scenario_failure}")
    return 1 if fuzzer.failures or scenario_failure else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--examples", type=int, default=100, help="examples per route and mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenarios", type=int, default=50, help="stateful scenarios (0: none)")
    p.add_argument("--steps", type=int, default=10, help="most steps per scenario")
    p.add_argument("--strict", action="store_true", help="also the documentation checks")
    p.add_argument("--index-key", default="flat", help="FAISS index of the stand-in gallery")
    p.add_argument("--index-dir", type=Path, help="a built index (fuzzed on copies)")
    p.add_argument("--model", type=Path, help="the exported model of --index-dir")
    args = p.parse_args(argv)
    if (args.index_dir is None) != (args.model is None):
        p.error("give both --index-dir and --model, or neither")
    with tempfile.TemporaryDirectory(prefix="fuzz-serve-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    raise SystemExit(main())
