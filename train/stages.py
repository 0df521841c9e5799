"""A backbone's stem and stages, and freezing the first of them (`freeze_stages`).

A timm model names its layers in order through `group_matcher(coarse=True)`: a `stem` pattern,
then `blocks` patterns numbered by stage (ResNet: `conv1`/`bn1`, then `layer1` .. `layer4`;
ConvNeXt: `stem`, `stages.0` ..; EfficientNet: `conv_stem`/`bn1`, `blocks.0` ..). Group 0 is the
stem and group i the i-th stage; whatever no pattern names (a neck, a final norm) comes after.

Freezing the stem and the first N stages gives their parameters `requires_grad=False` and keeps
their modules (BatchNorm among them) in eval mode. With nothing below them learning, autograd
records no graph through them: the backward pass, and the activations kept for it, stop at
stage N + 1. That is the point on a CPU: the early stages run at the highest resolution.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class FrozenStages:
    """What `freeze_stages` N freezes in a backbone: names relative to it."""

    n: int  # stem and stages 1..n (0: nothing frozen)
    params: frozenset[str]  # parameters that keep their values
    modules: tuple[str, ...]  # modules kept in eval mode (BatchNorm keeps its statistics)


def stage_count(backbone: nn.Module) -> int:
    """The stages of `backbone` after its stem; a ValueError if timm does not name them."""
    return max(_groups(backbone)[1], default=0)


def frozen_stages(backbone: nn.Module, n: int) -> FrozenStages:
    """The parameters and modules of the stem and the first `n` stages of `backbone` (with `n`
    0, any backbone: nothing is frozen)."""
    if n == 0:
        return FrozenStages(0, frozenset(), ())
    group, stages = _groups(backbone)
    if not 0 <= n <= len(stages):
        raise ValueError(
            f"freeze_stages {n}: {type(backbone).__name__} has a stem and {len(stages)} stages; "
            f"expected 0 to {len(stages)}"
        )
    frozen = {name for name, g in group.items() if g <= n}
    params = frozenset(name for name, _ in backbone.named_parameters() if name in frozen)
    modules = tuple(name for name, _ in backbone.named_modules() if name in frozen)
    return FrozenStages(n, params, modules)


def freeze(backbone: nn.Module, frozen: FrozenStages) -> None:
    """Stop the frozen parameters' gradients (set before any copy of the backbone is made)."""
    for name, p in backbone.named_parameters():
        if name in frozen.params:
            p.requires_grad_(False)


def keep_eval(backbone: nn.Module, frozen: FrozenStages) -> None:
    """Eval mode for the frozen modules: BatchNorm normalises with its statistics, updates none."""
    for name in frozen.modules:
        backbone.get_submodule(name).eval()


def describe(n: int) -> str:
    """How a run says what `freeze_stages` n freezes."""
    if n == 0:
        return "no stage frozen"
    return f"stem and stage{'s 1-' if n > 1 else ' '}{n} frozen"


def _groups(backbone: nn.Module) -> tuple[dict[str, int], set[int]]:
    """{name: group} of every parameter, and every module holding parameters, of `backbone`
    (group 0: the stem), and the groups that are stages (those the `blocks` patterns name)."""
    from timm.models import group_modules, group_parameters

    matcher = _matcher(backbone)
    # timm numbers the groups the same way in both: the stem and every stage hold parameters
    group: dict[str, int] = {
        **group_parameters(backbone, matcher, reverse=True),
        **group_modules(backbone, matcher, reverse=True),
    }
    names = list(group)
    kinds = [(key, [re.compile(p) for p in _patterns(spec)]) for key, spec in matcher.items()]

    def kind(name: str) -> str | None:  # the first entry that names it, as timm matches
        return next((key for key, res in kinds if any(r.match(name) for r in res)), None)

    in_stem = {group[n] for n in names if kind(n) == "stem"}
    stages = {group[n] for n in names if kind(n) == "blocks"}
    if in_stem != {0} or stages != set(range(1, len(stages) + 1)):
        raise ValueError(_cannot_tell(backbone, "its stem and stages are not in order"))
    return group, stages


def _matcher(backbone: nn.Module) -> dict[str, Any]:
    make = getattr(backbone, "group_matcher", None)
    try:
        matcher = make(coarse=True) if callable(make) else None
    except (TypeError, NotImplementedError):
        matcher = None
    if not isinstance(matcher, dict) or not {"stem", "blocks"} <= matcher.keys():
        raise ValueError(_cannot_tell(backbone, "timm's group_matcher names no stem and blocks"))
    return matcher


def _patterns(spec: Any) -> Iterable[str]:
    """The regular expressions of a group_matcher entry: a string, or (regex, suffix) pairs."""
    if isinstance(spec, str):
        return [spec]
    return [s[0] for s in spec or []]


def _cannot_tell(backbone: nn.Module, why: str) -> str:
    return (
        f"freeze_stages: cannot tell the stages of {type(backbone).__name__} ({why}); "
        "expected a timm backbone with stages (ResNet, ConvNeXt, EfficientNet, ...), "
        "or freeze_stages 0"
    )


__all__ = ["FrozenStages", "describe", "freeze", "frozen_stages", "keep_eval", "stage_count"]
