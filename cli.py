"""The `coins` command line: it parses flags and dispatches to library functions, nothing more."""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import yaml

app = typer.Typer(
    help="Fine-grained image embeddings from coarse labels (CoIns), and search over them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect the data sets coins knows.", no_args_is_help=True)
app.add_typer(data_app, name="data")

RootOpt = Annotated[Path | None, typer.Option(help="Data set location (default per data set).")]
OptionsOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Data set option KEY=VALUE (YAML value), repeatable."),
]


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    return options


def _fail(error: Exception) -> typer.Exit:
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@data_app.command("list")
def data_list() -> None:
    """List the registered data sets and their splits."""
    from coins.retrieval.data import dataset_names, dataset_splits

    for name in dataset_names():
        typer.echo(f"{name:<20} splits: {', '.join(dataset_splits(name))}")


@data_app.command("show")
def data_show(name: str, root: RootOpt = None, option: OptionsOpt = None) -> None:
    """Counts per split: images, coarse and fine classes."""
    from coins.retrieval.data import DatasetError, describe_dataset

    try:
        summaries = describe_dataset(name, root=root, **_parse_options(option))
    except (DatasetError, FileNotFoundError) as e:
        raise _fail(e) from e
    for s in summaries:
        typer.echo(
            f"{s['split']:<6} images {s['images']:>8,}   coarse classes {s['coarse_classes']:>5}   "
            f"fine classes {s['fine_classes']!s:>6}   with fine label {s['images_with_fine']:>8,}"
        )


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="Checkpoint; omit for a random init.")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Data set name.")] = "synthetic-patches",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    root: RootOpt = None,
    option: OptionsOpt = None,
    model_config: Annotated[
        Path | None, typer.Option(help="YAML/JSON EmbedderConfig for a random init.")
    ] = None,
    which: Annotated[str, typer.Option(help="backbone or head embedding.")] = "backbone",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of a random init.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    index: Annotated[
        Path | None, typer.Option(help="Index directory: its gallery, embedded by --model.")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="ONNX model of --index.")] = None,
) -> None:
    """Recall@1/2/4/8, MAP@R and kNN accuracy on fine and coarse labels (of a checkpoint on a
    data set split, or with --index and --model through the ONNX model and FAISS index)."""
    from coins.retrieval.data import DatasetError
    from coins.retrieval.evaluate import evaluate_model_on, format_table
    from coins.retrieval.models import EmbedderConfig

    if (index is None) != (model is None) or (index is not None and checkpoint is not None):
        raise _fail(ValueError("--index and --model go together, without a checkpoint"))
    try:
        if index is not None and model is not None:
            from coins.serve.index.evaluation import evaluate_index

            typer.echo(format_table(evaluate_index(index, model, json_path=json_out)))
            return
        config = None
        if model_config is not None:
            config = EmbedderConfig.from_dict(yaml.safe_load(model_config.read_text()))
        metrics = evaluate_model_on(
            dataset,
            split=split,
            checkpoint=checkpoint,
            model_config=config,
            root=root,
            options=_parse_options(option),
            which=which,  # type: ignore[arg-type]
            batch_size=batch_size,
            device=device,
            seed=seed,
            json_path=json_out,
        )
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
    typer.echo(format_table(metrics))
    if json_out is not None:
        typer.echo(f"wrote {json_out}")


def _set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """`a.b=VALUE` pairs (YAML values) as a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in _parse_options(pairs).items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _without_nproc(argv: list[str]) -> list[str]:
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return args


def _train(
    config: Path | None,
    out: Path,
    resume: bool,
    nproc: int,
    set_: list[str] | None,
    option: list[str] | None,
    **fields: Any,
) -> None:
    """Learn an embedding from coarse labels; OUT ends with checkpoint.pt and eval.json."""
    from coins.retrieval.data import DatasetError
    from coins.retrieval.evaluate import format_table
    from coins.train import TrainingDiverged, load_config, train
    from coins.train.launch import launch

    if nproc > 1:
        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[2:])))
    try:
        overrides = _set_pairs(set_)
        if option:
            overrides["dataset_options"] = _parse_options(option)
        cfg = load_config(config, **{**overrides, **fields})
        metrics = train(cfg, out, resume=resume)
    except (DatasetError, OSError, ValueError, TrainingDiverged) as e:
        raise _fail(e) from e
    if metrics:
        typer.echo(format_table(metrics))
    typer.echo(f"run directory: {out}")


def _train_flags() -> list[inspect.Parameter]:
    """One flag per scalar TrainConfig field (nested ones go through --set)."""
    from coins.train.config import TrainConfig

    scalar: dict[Any, type] = {int: int, float: float, str: str, bool: bool, str | None: str}
    params = []
    for name, hint in typing.get_type_hints(TrainConfig).items():
        if hint not in scalar:
            continue
        flag = "--" + name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if hint is bool else flag
        option = typer.Option(decl, help=_field_help(name))
        annotation = Annotated[scalar[hint] | None, option]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return params


def _field_help(name: str) -> str:
    from coins.train.config import TrainConfig

    return f"TrainConfig.{name} (default {getattr(TrainConfig, name, None)!r}, or the preset's)."


def _train_command() -> Callable[..., None]:
    base = [
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[Path, typer.Option("--out", help="Run directory.")],
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None, typer.Option(help="YAML file of TrainConfig options.")
            ],
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")],
        ),
        inspect.Parameter(
            "nproc",
            inspect.Parameter.KEYWORD_ONLY,
            default=1,
            annotation=Annotated[
                int, typer.Option(help="Processes: >1 runs DDP through torchrun.")
            ],
        ),
        inspect.Parameter(
            "set_",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option(
                    "--set", help="KEY=VALUE, nested keys dotted (model.backbone=resnet10t)."
                ),
            ],
        ),
        inspect.Parameter(
            "option", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OptionsOpt
        ),
    ]

    def command(**kwargs: Any) -> None:
        _train(**kwargs)

    command.__signature__ = inspect.Signature(base + _train_flags())  # type: ignore[attr-defined]
    command.__doc__ = _train.__doc__
    return command


app.command("train")(_train_command())


# --- export and embed (issue 4): ONNX models and embedding shards ---------------------------

DataOptionOpt = Annotated[
    list[str] | None, typer.Option("--option", help="Data set option KEY=VALUE, repeatable.")
]


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by coins train.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    which: Annotated[str, typer.Option(help="backbone or head embedding.")] = "backbone",
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 18).")] = 20,
    quantize: Annotated[
        str | None, typer.Option(help="int8: static QDQ, kept only if fine R@1 holds.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Data set for int8 calibration (default: the run's).")
    ] = None,
    root: RootOpt = None,
    option: DataOptionOpt = None,
    calibration_images: Annotated[int, typer.Option(help="Training images for int8.")] = 256,
    max_drop: Annotated[float, typer.Option(help="Allowed fine R@1 drop, points.")] = 1.0,
) -> None:
    """Export a checkpoint to ONNX and check it against PyTorch; optionally quantize to int8."""
    from coins.retrieval.data import DatasetError
    from coins.retrieval.onnx.export import ExportError, export_checkpoint
    from coins.retrieval.onnx.quantize import export_int8

    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"expected int8, got {quantize!r}", param_hint="--quantize")
    try:
        if quantize is None:
            report = export_checkpoint(checkpoint, out, which, opset)  # type: ignore[arg-type]
        else:
            options = _parse_options(option) if option else None
            report = export_int8(
                checkpoint, out, which, opset, dataset, root, options,  # type: ignore[arg-type]
                calibration_images=calibration_images, max_drop=max_drop,
            )  # fmt: skip
    except (DatasetError, ExportError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
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
    model: Annotated[Path, typer.Argument(help="ONNX model written by coins export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the shard files.")],
    dataset: Annotated[str | None, typer.Option(help="Data set name.")] = None,
    split: Annotated[str | None, typer.Option(help="Split (needed if several).")] = None,
    root: RootOpt = None,
    option: DataOptionOpt = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV manifest (path,coarse,...).")] = None,
    shard: Annotated[str, typer.Option(help="I/N: items i with i % N == I.")] = "0/1",
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call.")] = 64,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on an undecodable image.")] = False,
) -> None:
    """Embed one shard of a gallery: OUT/shard-IIIII-of-NNNNN.{npz,jsonl,json}."""
    from coins.retrieval.data import DatasetError
    from coins.retrieval.onnx.runner import OnnxEmbedder, gallery_source
    from coins.retrieval.shards import embed_gallery, parse_shard, shard_name

    try:
        index, count = parse_shard(shard)
        gallery = gallery_source(
            dataset, split, root, _parse_options(option), images=images, manifest=manifest
        )
        embedder = OnnxEmbedder(model, threads=threads)
        info = embed_gallery(embedder, gallery, out, (index, count), batch_size, strict)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
    for skipped in info["skipped"]:
        typer.secho(f"skipped {skipped['path']}: {skipped['reason']}", err=True)
    typer.echo(
        f"shard {index}/{count}: {info['count']} of {len(gallery)} items embedded "
        f"({len(info['skipped'])} skipped), dim {info['dim']} -> {out / shard_name(index, count)}"
    )


# --- explain and report (issue 6): attention maps, attention mass, run reports ---------------

FigureDataOpt = Annotated[
    list[str] | None, typer.Option("--option", help="Data set option KEY=VALUE, repeatable.")
]


@app.command("explain")
def explain_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints, one column each.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")],
    dataset: Annotated[
        str | None, typer.Option(help="Data set (default: the first checkpoint's).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split to draw and measure.")] = "test",
    root: RootOpt = None,
    option: FigureDataOpt = None,
    stage: Annotated[int, typer.Option(help="Backbone stage; negative counts from last.")] = -1,
    images: Annotated[int, typer.Option(help="Images, one row each.")] = 8,
    measure: Annotated[
        bool, typer.Option(help="Attention share in the big/small patch (synthetic-patches).")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the measure here.")] = None,
) -> None:
    """Spatial attention maps of checkpoints on the same images; --measure: mass per patch."""
    from coins.retrieval.data import DatasetError
    from coins.train.report.explain import explain

    try:
        result = explain(
            checkpoints, out, dataset, split, root, _parse_options(option) if option else None,
            stage=stage, images=images, measure_mass=measure or json_out is not None,
            json_path=json_out,
        )  # fmt: skip
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
    if result is not None:
        typer.echo(result["table"])
    typer.echo(f"wrote {out}" + (f" and {json_out}" if json_out else ""))


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by coins train.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs and index.html.")],
    dataset: Annotated[str | None, typer.Option(help="Data set (default: each run's).")] = None,
    split: Annotated[
        str | None, typer.Option(help="Split (default: each run's eval split).")
    ] = None,
    root: RootOpt = None,
    option: FigureDataOpt = None,
    queries: Annotated[int, typer.Option(help="Queries in each retrieval grid.")] = 8,
    k: Annotated[int, typer.Option(help="Neighbours shown per query.")] = 5,
    max_points: Annotated[int, typer.Option(help="Most points in an embedding map.")] = 2000,
) -> None:
    """Training curves, Recall@K bars, embedding maps and retrieval grids; OUT/index.html."""
    from coins.retrieval.data import DatasetError
    from coins.train.report.runs import report

    try:
        page = report(
            runs, out, dataset, split, root, _parse_options(option) if option else None,
            queries=queries, k=k, max_points=max_points,
        )  # fmt: skip
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
    typer.echo(f"wrote {page}")


@app.command("serve")
def serve_cmd(
    index_dir: Annotated[
        Path, typer.Argument(envvar="COINS_INDEX_DIR", help="Index folder built by `coins index`.")
    ],
    model: Annotated[
        Path,
        typer.Option(envvar="COINS_MODEL", help="ONNX model from `coins export` (the index's)."),
    ],
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8000; 0 picks a free one).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="COINS_API_KEY", help="Enables and guards the admin routes."),
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="A `coins report` folder to link.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Search threads (default: cores).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads (default: cores).")
    ] = None,
    faiss_threads: Annotated[int | None, typer.Option(help="FAISS threads per search.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the search API and web page; every setting can also come from COINS_* variables."""
    from pydantic import ValidationError

    from coins.serve.api.app import run
    from coins.serve.api.settings import ServeSettings

    flags: dict[str, Any] = {
        "host": host, "port": port, "api_key": api_key, "report_dir": report_dir,
        "workers": workers, "threads": threads, "faiss_threads": faiss_threads,
    }  # fmt: skip
    try:
        given = {k: v for k, v in flags.items() if v is not None}
        settings = ServeSettings.model_validate({"index_dir": index_dir, "model": model, **given})
    except ValidationError as e:
        raise _fail(e) from e
    for path in (settings.model, settings.index_dir, settings.report_dir):
        if path is not None and not path.exists():
            raise _fail(FileNotFoundError(f"{path} does not exist"))
    run(settings, log_level=log_level)


@app.command("query")
def query_cmd(
    url: Annotated[str, typer.Argument(help="Server address, e.g. http://127.0.0.1:8000.")],
    image: Annotated[list[Path] | None, typer.Option(help="Query image file, repeatable.")] = None,
    id_: Annotated[
        list[int] | None, typer.Option("--id", help="Query by stored id, repeatable.")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    gate: Annotated[
        str, typer.Option(help="none, or coarse: search the predicted class.")
    ] = "none",
    recall: Annotated[bool, typer.Option(help="Recall@1/2/4/8 through the API instead.")] = False,
    dataset: Annotated[
        str | None, typer.Option(help="With --recall: send this data set's images.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of --dataset.")] = "test",
    root: RootOpt = None,
    option: OptionsOpt = None,
    limit: Annotated[
        int | None, typer.Option(help="With --recall: at most this many queries.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the server to be ready.")] = 0,
) -> None:
    """Ask a running server: neighbours of images or stored ids, or Recall@K of the gallery."""
    import json

    import httpx

    from coins.retrieval.data import DatasetError, build_dataset
    from coins.serve.client.http import ApiError, SearchClient
    from coins.serve.client.recall import format_results, recall_by_ids, recall_by_images

    if not recall and bool(image) == bool(id_):
        raise _fail(ValueError("give --image FILE or --id N (or --recall)"))
    try:
        with SearchClient(url) as client:
            if wait > 0:
                client.wait_ready(wait)
            if recall and dataset is not None:
                data = build_dataset(dataset, split, root, **_parse_options(option))
                metrics, shown = recall_by_images(client, data, limit=limit, gate=gate)
            elif recall:
                metrics, shown = recall_by_ids(client, limit=limit)
            elif image:
                metrics, shown = {}, client.search_images(image, k=k, gate=gate)
            else:
                metrics, shown = {}, client.search_ids(id_ or [], k=k)
    except (ApiError, DatasetError, OSError, TimeoutError, httpx.HTTPError) as e:
        raise _fail(e) from e
    if json_out:
        typer.echo(json.dumps({"metrics": metrics, "results": shown}, indent=1))
        return
    for key, value in metrics.items():
        typer.echo(f"{key:<10} {value:.4f}" if key != "queries" else f"queries    {int(value)}")
    queries: list[dict[str, Any]] = [{"id": i} for i in id_ or []] or [
        {"id": str(p)} for p in image or []
    ]
    named = shown if recall else [{"query": q, **r} for q, r in zip(queries, shown, strict=True)]
    typer.echo(format_results(named))


# --- index and search (issue 4): FAISS index directories, `coins search` -------------------


class _IndexGroup(typer.core.TyperGroup):
    """`coins index MODEL.onnx ...` builds; `coins index remove DIR --ids ...` removes: any
    first argument that is not a sub-command name goes to `build`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


GalleryOptionOpt = Annotated[
    list[str] | None, typer.Option("--option", help="Data set option KEY=VALUE, repeatable.")
]
index_app = typer.Typer(
    cls=_IndexGroup,
    no_args_is_help=True,
    help="Build a FAISS index of a gallery (coins index MODEL ...), or remove items from one.",
)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build_cmd(
    model: Annotated[
        Path | None, typer.Argument(help="ONNX model (not with --from-embeddings).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory.")] = Path("index"),
    dataset: Annotated[str | None, typer.Option(help="Data set name.")] = None,
    split: Annotated[str | None, typer.Option(help="Split (needed if several).")] = None,
    root: RootOpt = None,
    option: GalleryOptionOpt = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV manifest (path,coarse,...).")] = None,
    from_embeddings: Annotated[
        list[Path] | None, typer.Option(help="Shard folder of coins embed, repeatable.")
    ] = None,
    index_type: Annotated[
        str, typer.Option("--type", help="auto, flat, hnsw, ivf, ivfpq or a FAISS factory string.")
    ] = "auto",
    target_recall: Annotated[float, typer.Option(help="10-recall@10 to tune to.")] = 0.95,
    max_memory_gb: Annotated[
        float | None, typer.Option(help="Index memory budget of auto.")
    ] = None,
    append: Annotated[bool, typer.Option(help="Add to the index in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the index in --out.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call.")] = 64,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on an undecodable image.")] = False,
) -> None:
    """Embed a gallery with MODEL (or read shards) and build, tune and save an index."""
    from coins.retrieval.data import DatasetError
    from coins.serve.index.build import build_index_from_embeddings, build_index_from_model

    options: dict[str, Any] = {"append": append}
    if not append:
        memory = None if max_memory_gb is None else int(max_memory_gb * 2**30)
        options |= {"index_key": index_type, "target_recall": target_recall}
        options |= {"max_memory": memory, "overwrite": overwrite}
    failed: list[tuple[Path, str]] = []
    try:
        if (model is None) == (not from_embeddings):
            raise ValueError("give MODEL (with a gallery) or --from-embeddings DIR, not both")
        if from_embeddings:
            index = build_index_from_embeddings(from_embeddings, out, **options)
        else:
            assert model is not None
            index, failed = build_index_from_model(
                model, out, dataset, split, root, _parse_options(option), images, manifest,
                batch_size=batch_size, strict=strict, threads=threads, **options,
            )  # fmt: skip
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
    for path, reason in failed:
        typer.secho(f"skipped {path}: {reason}", err=True)
    m = index.manifest
    typer.echo(
        f"{out}: {m.count:,} vectors of dimension {m.dim}, {m.index_key} ({m.choice_reason})"
    )
    if m.tuning is not None:
        t, params = m.tuning, ", ".join(f"{k}={v}" for k, v in m.index_params.items())
        typer.echo(
            f"{params or 'exact'}: {t.k}-recall@{t.k} {t.recall:.4f} on {t.queries} held-out "
            f"queries, p50 {t.p50_ms:.3f} ms, p99 {t.p99_ms:.3f} ms"
        )
        if not t.reached:
            typer.secho(f"warning: target recall {t.target_recall} not reached", err=True)


@index_app.command("remove")
def index_remove_cmd(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    ids: Annotated[list[str], typer.Option("--ids", help="Ids, comma-separated, repeatable.")],
) -> None:
    """Remove items by id (flat and IVF indexes; HNSW graphs cannot remove)."""
    import numpy as np

    from coins.serve.index.build import remove_from_index

    try:
        wanted = [int(i) for part in ids for i in part.split(",") if i.strip()]
        index = remove_from_index(index_dir, np.array(wanted, dtype=np.int64))
    except ValueError as e:
        raise _fail(e) from e
    typer.echo(f"{index_dir}: removed {len(wanted)}, {index.ntotal:,} left")


@app.command("search")
def search_cmd(
    index_dir: Annotated[Path, typer.Argument(help="Index directory of coins index.")],
    image: Annotated[Path | None, typer.Option(help="Query image (needs --model).")] = None,
    id_: Annotated[int | None, typer.Option("--id", help="Query by stored id.")] = None,
    vector_file: Annotated[Path | None, typer.Option(help=".npy query vector(s).")] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    model: Annotated[Path | None, typer.Option(help="ONNX model of the index.")] = None,
    coarse: Annotated[str | None, typer.Option(help="Only items of this coarse class.")] = None,
    fine: Annotated[str | None, typer.Option(help="Only items of this fine class.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Nearest neighbours in an index, with scores and metadata; --id never returns itself."""
    import json

    from coins.retrieval.data import DatasetError
    from coins.serve.index.query import format_neighbours, neighbours_json, search_index

    try:
        results = search_index(index_dir, k, image, id_, vector_file, model, coarse, fine)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from e
    if json_out:
        typer.echo(json.dumps(neighbours_json(results), indent=1))
    else:
        typer.echo(format_neighbours(results))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
