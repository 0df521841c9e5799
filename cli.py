"""The `coins` command line: it parses flags and dispatches to library functions, nothing more."""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
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
) -> None:
    """Recall@1/2/4/8, MAP@R and kNN accuracy on fine and coarse labels."""
    from coins.retrieval.data import DatasetError
    from coins.retrieval.evaluate import evaluate_model_on, format_table
    from coins.retrieval.models import EmbedderConfig

    try:
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
