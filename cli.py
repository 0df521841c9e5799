"""The `coins` command line: each command parses its flags, makes one library call and prints.

Libraries load inside the commands, so every --help answers without torch. User errors (bad
values, missing files) print `error: message`, exit 2, in one place: `_Commands.invoke`.
"""

# typer's flag-as-default style (`x: int = typer.Option(1, help=...)`) keeps one line per flag
# ruff: noqa: B008

from __future__ import annotations

import inspect
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import typer
import typer.core

# Errors that carry a message for the user, besides ValueError and OSError, by the module that
# defines them: one that is not imported yet cannot have been raised, so none is imported here.
USER_ERRORS = {
    "coins.retrieval.onnx.export": "ExportError",
    "coins.train.loop": "TrainingDiverged",
    "coins.serve.client.http": "SearchServiceError",
    "httpx": "HTTPError",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    found = [getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules]
    return (ValueError, OSError, *found)


class _Commands(typer.core.TyperGroup):
    """The root group: the one place user-facing errors turn into `error: ...` and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:  # faiss or onnxruntime: say which extra installs it
            from coins.retrieval.extras import missing_extra

            hint = missing_extra(e.name)
            if os.environ.get("COINS_DEBUG") == "1" or hint is None:
                raise
            typer.secho(f"error: {hint}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from e
        except Exception as e:
            if os.environ.get("COINS_DEBUG") == "1" or not isinstance(e, _user_errors()):
                raise
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from e


class _IndexGroup(typer.core.TyperGroup):
    """`coins index MODEL.onnx ...` builds; `coins index remove DIR --ids ...` removes: any
    first argument that is not a sub-command name goes to `build`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


# plain click help (rich_markup_mode=None): no rich import, no truncated flag names at 80 columns
app = typer.Typer(
    cls=_Commands,
    help="Fine-grained image embeddings from coarse labels (CoIns), and search over them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Inspect the data sets coins knows.", no_args_is_help=True, rich_markup_mode=None
)
index_app = typer.Typer(
    cls=_IndexGroup,
    help="Build a FAISS index of a gallery (coins index MODEL ...); remove items, compact its "
    "log, snapshot or restore it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")


def Out(help: str, default: Any = ...) -> Any:
    return typer.Option(default, "--out", "-o", help=help)


ROOT = typer.Option(None, help="Data set location (default per data set).")
OPTION = typer.Option(None, "--option", metavar="KEY=VALUE", help="Data set option, repeatable.")
DATASET = typer.Option(None, help="Data set name.")
SPLIT = typer.Option(None, help="Split (needed if several).")
IMAGES = typer.Option(None, help="Folder of images.")
MANIFEST = typer.Option(None, help="CSV manifest (path,coarse,...).")
BATCH = typer.Option(64, help="Images per ONNX Runtime call.")
THREADS = typer.Option(None, help="ONNX Runtime threads.")
STRICT = typer.Option(False, help="Fail on an undecodable image.")
K = typer.Option(10, "-k", help="Neighbours per query.")
JSON = typer.Option(False, "--json", help="Print JSON.")
# a gallery without splits, cut as `coins train --test-fraction F --split-by B --seed S` cut it
TEST_FRACTION = typer.Option(0.0, help="Cut a gallery without splits as coins train did.")
SPLIT_BY = typer.Option("item", help="item or fine: how --test-fraction cuts.")
SPLIT_SEED = typer.Option(0, help="Seed of the --test-fraction cut: the run's --seed.")


def _options(pairs: list[str] | None) -> dict[str, Any] | None:
    """--option pairs as a mapping; None when none were given (a run's own options apply)."""
    from coins.retrieval.configs import parse_pairs

    return parse_pairs(pairs, "--option") if pairs else None


@data_app.command("list")
def data_list() -> None:
    """List the registered data sets and their splits."""
    from coins.retrieval.data import dataset_names, dataset_splits

    for name in dataset_names():
        typer.echo(f"{name:<20} splits: {', '.join(dataset_splits(name))}")


@data_app.command("show")
def data_show(name: str, root: Path | None = ROOT, option: list[str] | None = OPTION) -> None:
    """Counts per split: images, coarse and fine classes."""
    from coins.retrieval.data import describe_dataset

    for s in describe_dataset(name, root=root, **(_options(option) or {})):
        typer.echo(
            f"{s['split']:<6} images {s['images']:>8,}   coarse classes {s['coarse_classes']:>5}   "
            f"fine classes {s['fine_classes']!s:>6}   with fine label {s['images_with_fine']:>8,}"
        )


@app.command("eval")
def eval_cmd(
    checkpoint: Path | None = typer.Argument(None, help="Checkpoint; omit for a random init."),
    dataset: str = typer.Option("synthetic-patches", help="Data set name."),
    split: str = typer.Option("test", help="Split to evaluate."),
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    model_config: Path | None = typer.Option(None, help="YAML EmbedderConfig of a random init."),
    which: str = typer.Option("backbone", help="backbone or head embedding."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of a random init."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics here."),
    index: Path | None = typer.Option(None, help="Index directory: its gallery, by --model."),
    model: Path | None = typer.Option(None, help="ONNX model of --index."),
    test_fraction: float | None = typer.Option(
        None, help="Cut as coins train did (default: the checkpoint's own cut; 0: none)."
    ),
    split_by: str | None = typer.Option(None, help="item or fine (default: the checkpoint's)."),
    split_seed: int | None = typer.Option(
        None, help="Seed of the cut (default: the checkpoint's --seed, else --seed)."
    ),
) -> None:
    """Recall@1/2/4/8, MAP@R and kNN accuracy on fine and coarse labels (of a checkpoint on a
    data set split, or with --index and --model through the ONNX model and FAISS index).

    A checkpoint trained with --test-fraction on the --dataset and --root given is evaluated
    on the test images its run held out (said on stderr)."""
    import yaml

    from coins.retrieval.configs import EmbedderConfig
    from coins.retrieval.evaluate import evaluate_model_on, format_table

    if index is not None or model is not None:
        from coins.serve.index.evaluation import evaluate_index

        if index is None or model is None or checkpoint is not None:
            raise ValueError("--index and --model go together, without a checkpoint")
        if test_fraction is not None:
            raise ValueError("--test-fraction cuts --dataset; --index evaluates its own gallery")
        metrics = evaluate_index(index, model, json_path=json_out)
    else:
        config = yaml.safe_load(model_config.read_text()) if model_config else None
        metrics = evaluate_model_on(
            dataset, split=split, checkpoint=checkpoint, root=root, options=_options(option),
            model_config=EmbedderConfig.from_dict(config) if config is not None else None,
            which=which, batch_size=batch_size, device=device,  # type: ignore[arg-type]
            seed=seed, json_path=json_out, test_fraction=test_fraction, split_by=split_by,
            split_seed=split_seed,
        )  # fmt: skip
    typer.echo(format_table(metrics))
    if json_out is not None:
        typer.echo(f"wrote {json_out}")


PRETRAINED_HELP = (
    "Start from pretrained weights: a timm name with its tag (resnet18.a1_in1k; timm's hub "
    "cache) or a local .safetensors/.pth file; their preprocessing is used, and the "
    "pretrained-photos preset unless --preset."
)


def train_cmd(
    out: Path = Out("Run directory."),
    config: Path | None = typer.Option(None, help="YAML file of training options."),
    preset: str | None = typer.Option(None, help="Preset to start from (listed below)."),
    pretrained: str | None = typer.Option(None, help=PRETRAINED_HELP),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt."),
    nproc: int = typer.Option(1, min=1, help="Processes; more than 1 runs DDP (torchrun)."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any option (see below)."
    ),
    option: list[str] | None = OPTION,
    **flags: Any,
) -> None:
    """Learn an embedding from coarse labels; OUT ends with checkpoint.pt and eval.json.

    Options come from the preset (the data set's own unless --preset), then --config, then the
    flags and --set KEY=VALUE in order (any option, nested ones dotted: see below). A flag's
    default is the option's own; a preset may set another.
    """
    from coins.retrieval.configs import parse_pairs
    from coins.train.config import load_config

    overrides = {k: v for k, v in flags.items() if v is not None}
    if pretrained is not None:
        overrides["model.pretrained"] = pretrained
    if option:
        overrides["dataset_options"] = parse_pairs(option, "--option")
    if resume:  # what a time budget fitted when the run started stays (train/budget.py)
        from coins.train.budget import fitted_from_run

        overrides = {**fitted_from_run(out), **overrides}
    cfg = load_config(
        config, preset, budget=True, **{**overrides, **parse_pairs(set_ or [], "--set")}
    )
    if nproc > 1:
        from coins.train.launch import launch_training

        raise typer.Exit(launch_training(cfg, out, nproc, resume))
    from coins.retrieval.evaluate import format_table
    from coins.train import train

    metrics = train(cfg, out, resume=resume)
    if metrics:
        written = json.loads((out / "eval.json").read_text())
        if "val" in written:  # the held-out split apart from the test split, evaluated once
            typer.echo(f"val (held out of train):\n{format_table(written['val'])}")
            typer.echo(f"{cfg.eval_split} (evaluated once):")
        untrained = written.get("untrained")  # the starting embedder, on the same split
        if untrained:
            table = format_table({k: untrained[k] for k in ("fine", "coarse")})
            typer.echo(f"untrained (before the first step):\n{table}\ntrained:")
        typer.echo(format_table(metrics))
        if untrained:
            before, after = untrained["fine"]["recall@1"], written["fine"]["recall@1"]
            typer.echo(
                f"fine R@1 on {untrained['split']}: untrained {100 * before:.1f}, "
                f"trained {100 * after:.1f}"
            )
        s = written.get("selection")
        if s:
            typer.echo(f"selection score on {s['split']}: {s['criterion']} {s['score']:.4f}")
    typer.echo(f"run directory: {out}")


def _register_train() -> None:
    """`coins train` with one flag per plain option of TrainConfig, its help the comment on the
    option's line in train/config.py; the nested keys (for --set) and the presets listed after."""
    from coins.retrieval.presets import PRESETS
    from coins.train.config import field_docs

    kinds = {int: int, float: float, str: str, bool: bool, str | None: str}
    params = list(inspect.signature(train_cmd, eval_str=True).parameters.values())[:-1]
    more = ["More options, for --set KEY=VALUE or --config (KEY={} empties a mapping):"]
    for doc in field_docs():
        kind = kinds.get(doc.hint) if "." not in doc.key else None
        if kind is None:
            more.append(f"{doc.key} = {json.dumps(doc.default, default=str)}  {doc.comment}")
            continue
        flag = "--" + doc.key.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        flag_help = doc.comment + ("" if doc.default is None else f" (default {doc.default})")
        option = typer.Option(None, decl, help=flag_help)
        kw = inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(doc.key, kw, default=option, annotation=kind | None))
    presets = ["Presets (--preset NAME):", *(f"{p.name}  {p.about}" for p in PRESETS.values())]
    train_cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    app.command("train", epilog=_verbatim(more) + "\n\n" + _verbatim(presets))(train_cmd)


def _verbatim(lines: list[str]) -> str:
    """A help paragraph that click prints as it is (the \\b mark), wrapped to 78 columns here."""
    return "\b\n" + "\n".join(textwrap.fill(s, 78, subsequent_indent="      ") for s in lines)


_register_train()


@app.command("tune")
def tune_cmd(
    out: Path = Out("Search folder: best.yaml, trials.csv, trials.png and trials/."),
    dataset: str | None = typer.Option(None, help="Data set name (default: --config's)."),
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    trials: int = typer.Option(20, min=1, help="Configurations to train."),
    epochs: int = typer.Option(..., min=1, help="Epochs of every trial."),
    methods: str | None = typer.Option(
        None, help="Comma-separated methods to search (default: all that need no fine label)."
    ),
    val_fraction: float = typer.Option(0.2, help="Training images held out to select on."),
    eval_every: int = typer.Option(1, min=1, help="Epochs between scores (and pruning)."),
    seed: int = typer.Option(0, help="Seeds the held-out split, the trials and the search."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: --config's)."),
    config: Path | None = typer.Option(None, help="YAML file of the options not searched."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any training option not searched."
    ),
) -> None:
    """Choose the method, alpha, cos warm-up and the peers' w on held-out training images
    (Optuna), never on test; writes OUT/best.yaml for `coins train --config`.

    The score is fine R@1 on the held-out rows that have a fine label, else the label-free view
    R@1 within coarse class (docs/method.md, "Selecting without labels").
    """
    from coins.retrieval.configs import parse_pairs
    from coins.train.tune import COARSE_METHODS, tune

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else COARSE_METHODS
    result = tune(
        out, trials, epochs, dataset=dataset, root=root, dataset_options=_options(option),
        config=config, overrides=parse_pairs(set_ or [], "--set"), methods=chosen,
        val_fraction=val_fraction, eval_every=eval_every, seed=seed, device=device,
        progress=True,
    )  # fmt: skip
    typer.echo(result.trials_csv.read_text().rstrip())
    typer.echo(
        f"best: trial {result.best_trial}, {result.criterion} {result.best_score:.4f} on val\n"
        f"wrote {result.best_yaml}, {result.trials_csv}, {result.trials_png}\n"
        f"train it: coins train --config {result.best_yaml} --out RUN"
    )
    if result.caveat is not None:
        typer.echo(f"caution: {result.caveat}.", err=True)


@app.command("export")
def export_cmd(
    checkpoint: Path | None = typer.Argument(
        None, help="Checkpoint written by coins train (or --pretrained instead)."
    ),
    out: Path = Out("The .onnx file to write (.safetensors: the backbone's weights alone)."),
    pretrained: str | None = typer.Option(
        None, help="No checkpoint: an untrained pretrained backbone (timm name.tag or a file)."
    ),
    backbone: str | None = typer.Option(None, help="With a --pretrained file: its timm model."),
    which: str = typer.Option("backbone", help="backbone or head embedding."),
    opset: int = typer.Option(20, help="ONNX opset (>= 18)."),
    quantize: str | None = typer.Option(None, help="int8: static QDQ, kept if fine R@1 holds."),
    dataset: str | None = typer.Option(None, help="int8 calibration data (default: the run's)."),
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    calibration_images: int = typer.Option(256, help="Training images for int8."),
    max_drop: float = typer.Option(1.0, help="Allowed fine R@1 drop, points."),
) -> None:
    """Export a checkpoint (or untrained --pretrained weights) to ONNX and check it against
    PyTorch; optionally quantize to int8."""
    from coins.retrieval.onnx.export import export_checkpoint, export_pretrained
    from coins.retrieval.onnx.quantize import export_int8

    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"expected int8, got {quantize!r}", param_hint="--quantize")
    if (checkpoint is None) == (pretrained is None):
        raise typer.BadParameter("expected a CHECKPOINT or --pretrained, one of the two")
    if checkpoint is not None and out.suffix == ".safetensors":  # weights for --pretrained FILE
        from coins.retrieval.checkpoint import load_embedder
        from coins.retrieval.pretrained import save_backbone

        save_backbone(load_embedder(checkpoint), out)
        typer.echo(f"wrote {out}: the backbone of {checkpoint}, for --pretrained {out}")
        return
    if pretrained is not None:
        if quantize is not None or which != "backbone":
            raise typer.BadParameter("--pretrained exports the backbone feature, unquantized")
        report = export_pretrained(pretrained, out, backbone, opset)
    elif quantize is None:
        report = export_checkpoint(checkpoint, out, which, opset)  # type: ignore[arg-type]
    else:
        report = export_int8(
            checkpoint, out, which, opset, dataset, root, _options(option),  # type: ignore[arg-type]
            calibration_images=calibration_images, max_drop=max_drop,
        )  # fmt: skip
    shapes = ", ".join(f"{name} {shape}" for name, shape in report.outputs.items())
    typer.echo(f"wrote {report.path} (sha256 {report.sha256}): {shapes}")
    typer.echo(
        f"check: ONNX Runtime vs PyTorch max abs diff {report.max_abs_diff:.2e}, "
        f"min cosine {report.min_cosine:.6f}"
    )
    if report.quantization is not None:
        typer.echo(report.quantization.summary())


@app.command("embed")
def embed_cmd(
    model: Path = typer.Argument(..., help="ONNX model written by coins export."),
    out: Path = Out("The job's folder: embedding.json and chunk-NNNNNN.{npy,parquet,json}."),
    dataset: str | None = DATASET,
    split: str | None = SPLIT,
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    images: Path | None = IMAGES,
    manifest: Path | None = MANIFEST,
    test_fraction: float = TEST_FRACTION,
    split_by: str = SPLIT_BY,
    split_seed: int = SPLIT_SEED,
    nproc: int = typer.Option(1, help="Local processes (torchrun --standalone when > 1)."),
    chunk_size: int = typer.Option(4096, help="Items per chunk: the unit of memory and resume."),
    batch_size: int = BATCH,
    workers: int | None = typer.Option(None, help="Decoding workers per process (cores/procs)."),
    threads: int | None = THREADS,
    strict: bool = STRICT,
    verify: str = typer.Option("fast", help="Check of finished chunks: fast (sizes) or full."),
) -> None:
    """Embed a gallery into OUT as a resumable job: a re-run skips the finished chunks.

    Under torchrun (RANK, WORLD_SIZE set) each process embeds chunks c % WORLD_SIZE == RANK:
    on several machines, run this command through torchrun --nnodes N --node_rank R.

    The photos a run of coins train --test-fraction F --seed S held out: --split test
    --test-fraction F --split-seed S (and its --split-by)."""
    from coins.retrieval.embed_job import EmbedJob, Rank, embed_job, launch_embed_job

    if verify not in ("fast", "full"):
        raise typer.BadParameter(f"expected fast or full, got {verify!r}", param_hint="--verify")
    job = EmbedJob(
        model, out, dataset, split, root, _options(option) or {}, images, manifest,
        test_fraction=test_fraction, split_by=split_by, split_seed=split_seed,
        chunk_size=chunk_size, batch_size=batch_size, workers=workers, threads=threads,
        strict=strict, verify=verify,  # type: ignore[arg-type]
    )  # fmt: skip
    if nproc > 1:
        if "RANK" in os.environ:
            raise ValueError("--nproc under torchrun: give torchrun --nproc_per_node instead")
        raise typer.Exit(code=launch_embed_job(nproc, job, option or []))
    done = embed_job(job, Rank.from_env(), log=lambda line: typer.echo(line, err=True))
    typer.echo(
        f"rank {done['rank']}/{done['world_size']}: {done['written']} chunks written, "
        f"{done['resumed']} already done; {done['embedded']} items embedded, "
        f"{done['skipped']} skipped, {done['images_per_s']:.1f} images/s -> {out}"
    )


@app.command("explain")
def explain_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoints, one column each."),
    out: Path = Out("The PNG to write."),
    dataset: str | None = typer.Option(None, help="Data set (default: the first checkpoint's)."),
    split: str = typer.Option("test", help="Split to draw and measure."),
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    stage: int = typer.Option(-1, help="Backbone stage; negative counts from the last."),
    images: int = typer.Option(8, help="Images, one row each."),
    measure: bool = typer.Option(False, help="Attention share in the big/small patch."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the measure here."),
) -> None:
    """Spatial attention maps of checkpoints on the same images; --measure: mass per patch
    (synthetic-patches)."""
    from coins.train.report.explain import explain

    result = explain(
        checkpoints, out, dataset, split, root, _options(option), stage=stage, images=images,
        measure_mass=measure or json_out is not None, json_path=json_out,
    )  # fmt: skip
    if result is not None:
        typer.echo(result["table"])
    typer.echo(f"wrote {out}" + (f" and {json_out}" if json_out else ""))


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories written by coins train."),
    out: Path = Out("Folder for the PNGs and index.html."),
    dataset: str | None = typer.Option(None, help="Data set (default: each run's)."),
    split: str | None = typer.Option(None, help="Split (default: each run's eval split)."),
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    queries: int = typer.Option(8, help="Queries in each retrieval grid."),
    k: int = typer.Option(5, help="Neighbours shown per query."),
    max_points: int = typer.Option(2000, help="Most points in an embedding map."),
) -> None:
    """Training curves, Recall@K bars, embedding maps and retrieval grids; OUT/index.html."""
    from coins.train.report.runs import report

    page = report(
        runs, out, dataset, split, root, _options(option),
        queries=queries, k=k, max_points=max_points,
    )  # fmt: skip
    typer.echo(f"wrote {page}")


@app.command("serve")
def serve_cmd(
    index_dir: Path = typer.Argument(..., envvar="COINS_INDEX_DIR", help="Index folder."),
    model: Path = typer.Option(..., envvar="COINS_MODEL", help="ONNX model of the index."),
    host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000; 0 picks a free one)."),
    api_key: str | None = typer.Option(None, envvar="COINS_API_KEY", help="Guards admin routes."),
    report_dir: Path | None = typer.Option(None, help="A `coins report` folder to link."),
    workers: int | None = typer.Option(None, help="Search threads (default: cores)."),
    threads: int | None = typer.Option(None, help="ONNX Runtime threads (default: cores)."),
    faiss_threads: int | None = typer.Option(None, help="FAISS threads per search."),
    image_root: list[Path] | None = typer.Option(
        None, help="A folder whose images admin adds may name, repeatable."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    mmap: bool | None = typer.Option(
        None, "--mmap/--no-mmap", help="Memory-map the index (fast start, read-only)."
    ),
    verify: str | None = typer.Option(None, help="Index check: fast (default) or full."),
    gpu: str | None = typer.Option(None, help="Search on a GPU: auto (default), on, off."),
    follow: bool | None = typer.Option(
        None, "--follow/--no-follow", help="Read-only replica: swap in new index generations."
    ),
    follow_interval: float | None = typer.Option(
        None, help="Seconds between two looks at index.json with --follow (default 1)."
    ),
    processes: int | None = typer.Option(
        None, help="Server processes on one port sharing the index (default 1; >1 needs --mmap)."
    ),
) -> None:
    """Serve the search API and web page; every setting can also come from COINS_* variables."""
    from coins.serve.api.settings import ServeSettings

    flags: dict[str, Any] = {
        "host": host, "port": port, "api_key": api_key, "report_dir": report_dir,
        "workers": workers, "threads": threads, "faiss_threads": faiss_threads,
        "image_roots": image_root, "mmap": mmap, "verify": verify, "gpu": gpu,
        "follow": follow, "follow_interval_s": follow_interval, "processes": processes,
    }  # fmt: skip
    given = {k: v for k, v in flags.items() if v is not None}
    settings = ServeSettings.model_validate({"index_dir": index_dir, "model": model, **given})
    for path in (settings.model, settings.index_dir, settings.report_dir):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    if settings.processes > 1:  # a supervisor without FAISS or the model: see its module
        from coins.serve.api.processes import run_processes

        run_processes(settings, log_level=log_level)
        return
    from coins.serve.api.app import run

    run(settings, log_level=log_level)


def _verify(mode: str) -> Literal["fast", "full"]:
    if mode not in ("fast", "full"):
        raise typer.BadParameter(f"--verify must be fast or full, got {mode!r}")
    return "fast" if mode == "fast" else "full"


@app.command("query")
def query_cmd(
    url: str = typer.Argument(..., help="Server address, e.g. http://127.0.0.1:8000."),
    image: list[Path] | None = typer.Option(None, help="Query image file, repeatable."),
    id_: list[int] | None = typer.Option(None, "--id", help="Query by stored id, repeatable."),
    k: int = K,
    gate: str = typer.Option("none", help="none, or coarse: search the predicted class."),
    gate_min_prob: float | None = typer.Option(
        None, help="With --gate coarse: gate only above this probability (server default)."
    ),
    filter_: str | None = typer.Option(
        None, "--filter", help='JSON filter: {"must": [{"key": "brand", "match": {...}}]}.'
    ),
    recall: bool = typer.Option(False, help="Recall@1/2/4/8 through the API instead."),
    dataset: str | None = typer.Option(None, help="With --recall: send its images."),
    split: str = typer.Option("test", help="Split of --dataset."),
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    limit: int | None = typer.Option(None, help="With --recall: at most this many queries."),
    json_out: bool = JSON,
    wait: float = typer.Option(0, help="Seconds to wait for the server to be ready."),
) -> None:
    """Ask a running server: neighbours of images or stored ids, or Recall@K of the gallery."""
    from coins.serve.client.query import format_answer, query_server

    metrics, results = query_server(
        url, images=image or [], ids=id_ or [], k=k, gate=gate, recall=recall, dataset=dataset,
        split=split, root=root, dataset_options=_options(option), limit=limit, wait=wait,
        filter=filter_, gate_min_prob=gate_min_prob,
    )  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"metrics": metrics, "results": results}, indent=1))
    else:
        typer.echo(format_answer(metrics, results))


@index_app.command("build")
def index_build_cmd(
    model: Path | None = typer.Argument(None, help="ONNX model (not with --from-embeddings)."),
    out: Path = Out("Index directory.", Path("index")),
    dataset: str | None = DATASET,
    split: str | None = SPLIT,
    root: Path | None = ROOT,
    option: list[str] | None = OPTION,
    images: Path | None = IMAGES,
    manifest: Path | None = MANIFEST,
    from_embeddings: list[Path] | None = typer.Option(None, help="Shard folder, repeatable."),
    index_type: str = typer.Option(
        "auto", "--type", help="auto, flat, hnsw, ivf, ivfpq or a FAISS factory string."
    ),
    target_recall: float = typer.Option(0.95, help="10-recall@10 to tune to."),
    max_memory_gb: float | None = typer.Option(None, help="Index memory budget of auto."),
    append: bool = typer.Option(False, help="Add to the index in --out."),
    replace: bool = typer.Option(False, help="With --append: re-embed ids already there."),
    overwrite: bool = typer.Option(False, help="Replace the index in --out."),
    batch_size: int = BATCH,
    threads: int | None = THREADS,
    strict: bool = STRICT,
    on_disk: bool = typer.Option(
        False, help="With --from-embeddings: IVF lists in a file, paged in by the OS."
    ),
    verify: str = typer.Option("fast", help="Shard check: fast (sizes) or full (sha256)."),
    field: list[str] | None = typer.Option(
        None, help="NAME:TYPE (int, float, bool, string, timestamp), repeatable; else inferred."
    ),
    test_fraction: float = TEST_FRACTION,
    split_by: str = SPLIT_BY,
    split_seed: int = SPLIT_SEED,
) -> None:
    """Embed a gallery with MODEL (or read `coins embed` shards) and build, tune and save an
    index."""
    from coins.serve.index.build import build_gallery_index, build_summary
    from coins.serve.index.fields import parse_declared
    from coins.serve.index.manifest import IndexManifest

    before = IndexManifest.load(out).count if append else None
    index, failed = build_gallery_index(
        out, model=model, from_embeddings=from_embeddings, dataset=dataset, split=split,
        root=root, dataset_options=_options(option), images=images, manifest=manifest,
        index_key=index_type, target_recall=target_recall, max_memory_gb=max_memory_gb,
        append=append, replace=replace, overwrite=overwrite, batch_size=batch_size,
        threads=threads, strict=strict, on_disk=on_disk, verify=_verify(verify),
        log=lambda line: typer.secho(line, err=True), fields=parse_declared(field or []),
        test_fraction=test_fraction, split_by=split_by, split_seed=split_seed,
    )  # fmt: skip
    for path, reason in failed:
        typer.secho(f"skipped {path}: {reason}", err=True)
    if failed:
        typer.secho(f"skipped {len(failed):,} undecodable images", err=True)
    summary, warnings = build_summary(index, before)
    typer.echo(f"{out}: {summary}")
    if index.schema is not None:
        typer.echo(f"fields: {index.schema.describe()}")
    for warning in warnings:
        typer.secho(f"warning: {warning}", err=True)


@index_app.command("remove")
def index_remove_cmd(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    ids: list[str] = typer.Option(..., "--ids", help="Ids, comma-separated, repeatable."),
) -> None:
    """Remove items by id (flat and IVF indexes; HNSW graphs cannot remove)."""
    import numpy as np

    from coins.serve.index.build import remove_from_index

    wanted = [int(i) for part in ids for i in part.split(",") if i.strip()]
    index = remove_from_index(index_dir, np.array(wanted, dtype=np.int64))
    typer.echo(f"{index_dir}: removed {len(wanted)}, {index.ntotal:,} left")


@index_app.command("compact")
def index_compact_cmd(
    index_dir: Path = typer.Argument(..., help="Index directory (no server writing to it)."),
    verify: str = typer.Option("fast", help="Index check: fast (sizes) or full (sha256)."),
) -> None:
    """Fold the write-ahead log of admin adds and deletes into a new generation. Holds the
    directory's writer lock: refused, naming its pid, while a server with admin routes runs."""
    from coins.serve.index.live import compact

    r = compact(index_dir, verify=_verify(verify))
    typer.echo(
        f"{index_dir}: folded {r.changes} logged changes, generation {r.before} -> {r.after}, "
        f"{r.ntotal:,} items"
    )


@index_app.command("snapshot")
def index_snapshot_cmd(
    index_dir: Path = typer.Argument(..., help="Index directory, served or not."),
    out: Path = typer.Argument(..., help="New folder for the snapshot."),
) -> None:
    """A consistent copy of an index: its generation's files (hard links where possible) and
    its write-ahead log, every checksum verified."""
    from coins.serve.index.snapshot import snapshot

    r = snapshot(index_dir, out)
    typer.echo(
        f"{out}: generation {r.generation}, {r.files} files ({r.linked} hard links), "
        f"{r.log_records} logged changes"
    )


@index_app.command("restore")
def index_restore_cmd(
    snapshot_dir: Path = typer.Argument(..., help="Folder written by coins index snapshot."),
    index_dir: Path = typer.Argument(..., help="Index directory to restore into."),
    force: bool = typer.Option(False, help="Replace the index already in INDEX_DIR."),
) -> None:
    """Restore a snapshot (checksums verified) and check that the index loads. Refused while
    a server with admin routes writes to INDEX_DIR (its writer lock)."""
    from coins.serve.index.snapshot import restore

    r = restore(snapshot_dir, index_dir, force=force)
    typer.echo(f"{index_dir}: restored generation {r.generation}, {r.files} files, loads")


@app.command("search")
def search_cmd(
    index_dir: Path = typer.Argument(..., help="Index directory of coins index."),
    image: Path | None = typer.Option(None, help="Query image (needs --model)."),
    id_: int | None = typer.Option(None, "--id", help="Query by stored id."),
    vector_file: Path | None = typer.Option(None, help=".npy query vector(s)."),
    k: int = K,
    model: Path | None = typer.Option(None, help="ONNX model of the index."),
    coarse: str | None = typer.Option(None, help="Only items of this coarse class."),
    fine: str | None = typer.Option(None, help="Only items of this fine class."),
    filter_: str | None = typer.Option(
        None, "--filter", help='JSON filter: {"must": [{"key": "brand", "match": {...}}]}.'
    ),
    json_out: bool = JSON,
) -> None:
    """Nearest neighbours in an index, with scores and metadata; --id never returns itself."""
    from coins.serve.index.query import format_neighbours, neighbours_json, search_index

    results = search_index(
        index_dir, k, image, id_, vector_file, model, coarse, fine, filter=filter_
    )
    if json_out:
        typer.echo(json.dumps(neighbours_json(results), indent=1))
    else:
        typer.echo(format_neighbours(results))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
