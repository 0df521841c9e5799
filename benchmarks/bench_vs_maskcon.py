"""Training speed (images/s) of the `coins` step against MaskCon's released training step.

MaskCon (Feng & Patras, CVPR 2023; github.com/MrChenFeng/MaskCon_CVPR2023) is the peer whose
released code our CIFAR numbers are set against. This script times one training step of each,
doing the same work: full-width ResNet-18 with the small 3x3 stride-1 stem and no max-pool (their
CIFAR model), 3x32x32 inputs, batch 128, queue K 8192, projection 512-512-256 (their `--dim`
default), their default temperatures (T0 0.1, T 0.05, w 0.5) and momentum (0.99), SGD with
momentum 0.9 and weight decay 5e-4 on both sides. Inputs are synthetic random tensors (no data
loading); coarse labels are random over 20 classes (CIFAR-100's super-classes).

Why: on a CPU the `coins` step already matches theirs (1.06x, within noise; 93% of the step is
convolution). On a GPU the issue's target is >= 1.2x their images/s with what helps us (bf16
autocast, channels_last, torch.compile of the encoders) against their fp32 code as released.

Their side is their code, imported from the checkout given by `--maskcon` (nothing of it is
copied here): `models.model.MaskCon` built as their main.py builds it for CIFAR-100, one step
being `loss = net(im_k, im_q, coarse, args)` (their default `--mode maskcon`; the forward does
the momentum update, the shuffled key forward, the soft targets, the loss and the enqueue),
then `zero_grad`, `backward`, `step` and `loss.item()` as in their `train()`. Two shims, neither
touching their arithmetic: their ResNet is built with `pretrained=False` (they load ImageNet
weights, which needs a download; values do not change the speed), and on `--device cpu` only,
`Tensor.cuda` is the identity during their step (their forward calls `.cuda()` on new tensors).
Their per-step `adjust_learning_rate` (a scalar per param group) is left out of both sides.

Our side is `coins.train.builder.CoInsModel` with a `coins` config as `coins train` steps it
(train/loop.py: forward under autocast, `zero_grad`, `backward`, `step`, `loss.item()`).
Variants of ours (`--variants`, comma separated, `+` joined): `fp32` or `bf16` (autocast), then
optional `cl` (channels_last model and inputs) and `compile` (torch.compile of both encoders).
On cuda all four of fp32, bf16, bf16+cl, bf16+cl+compile run by default, on cpu fp32 alone;
`--amp/--channels-last/--compile` give one variant instead. `cudnn.benchmark` is on for both
sides (their main.py sets it); TF32 flags are left at torch's defaults and printed.

The runs take turns in blocks of steps after their warm-up, so that a shared machine's noise
hits all alike; each rate is the batch over the median step time (cuda synchronised around
each step). Prints a table of images/s and the ratio ours/theirs.

    # CPU (slow: a full-width ResNet-18; a few steps say enough)
    .venv/bin/python benchmarks/bench_vs_maskcon.py --maskcon /path/to/MaskCon_CVPR2023 \\
        --device cpu --steps 5 --warmup 2
    # GPU: every variant of ours against theirs in one run
    .venv/bin/python benchmarks/bench_vs_maskcon.py --maskcon /path/to/MaskCon_CVPR2023 \\
        --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import torch

from coins.train import load_config
from coins.train.builder import CoInsModel

# Their main.py's defaults (argparse) and its CIFAR-100 settings: what their step runs with.
THEIR_DEFAULTS = {"arch": "resnet18", "m": 0.99, "t0": 0.1, "t": 0.05, "w": 0.5, "dim": 256}
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 5e-4  # their main.py's SGD (lr is their default)
CIFAR_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of our step."""

    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, *rest = text.strip().split("+")
        if head not in ("fp32", "bf16") or not set(rest) <= {"cl", "compile"}:
            raise ValueError(
                f"variant {text!r}: expected fp32 or bf16, then optional +cl and +compile "
                f"(e.g. bf16+cl+compile)"
            )
        return cls(head == "bf16", "cl" in rest, "compile" in rest)

    @property
    def name(self) -> str:
        extras = ["channels_last"] * self.channels_last + ["compile"] * self.compile
        return "+".join(["bf16" if self.amp else "fp32", *extras])


DEFAULT_VARIANTS = {"cuda": "fp32,bf16,bf16+cl,bf16+cl+compile", "cpu": "fp32"}


def import_maskcon(path: Path) -> ModuleType:
    """Their models/model.py, imported from checkout `path` (put on sys.path).

    Only `models` is imported: its __init__ imports model.py alone, which needs torch and
    torchvision. Their main.py (wandb, tqdm, datasets) and utils are never imported, so
    nothing has to be stubbed.
    """
    path = path.expanduser().resolve()
    model_file = path / "models" / "model.py"
    if not model_file.is_file():
        raise SystemExit(
            f"--maskcon {path}: expected a checkout of MrChenFeng/MaskCon_CVPR2023 holding "
            f"models/model.py (with class MaskCon); {model_file} does not exist"
        )
    sys.path.insert(0, str(path))
    module = importlib.import_module("models.model")
    if Path(module.__file__ or "").resolve() != model_file:
        raise SystemExit(
            f"--maskcon {path}: `models.model` was imported from {module.__file__}, not "
            f"{model_file} (another `models` package came first on sys.path)"
        )
    return module


@contextlib.contextmanager
def without_pretrained(arch: str) -> Iterator[None]:
    """torchvision's `arch` builds with random weights while their model is constructed.

    Their ModelBase calls `resnet.<arch>(pretrained=True)`, a download of ImageNet weights;
    the values do not change the step's speed.
    """
    from torchvision.models import resnet

    original = getattr(resnet, arch)

    def build(*args: object, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        kwargs.pop("weights", None)
        return original(*args, weights=None, **kwargs)

    setattr(resnet, arch, build)
    try:
        yield
    finally:
        setattr(resnet, arch, original)


@contextlib.contextmanager
def cuda_calls_stay_on(device: torch.device) -> Iterator[None]:
    """On cpu, `Tensor.cuda()` returns the tensor itself (their forward moves new tensors with
    `.cuda()`); on cuda nothing changes, so those host-to-device copies stay in their step."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def their_step(
    maskcon: ModuleType, device: torch.device, batch: int, K: int, classes: int
) -> Callable[[], float]:
    """One training step of their code (fp32, as released); returns the loss."""
    d = THEIR_DEFAULTS
    torch.manual_seed(0)
    with without_pretrained(str(d["arch"])):
        # as their main.py: MaskCon(num_classes_coarse=args.num_classes, dim=args.dim, K=args.K,
        # m=args.m, T1=args.t0, arch=args.arch, size=args.size, T2=args.t, mode=args.mode)
        net = maskcon.MaskCon(
            num_classes_coarse=classes,
            dim=d["dim"],
            K=K,
            m=d["m"],
            T1=d["t0"],
            arch=d["arch"],
            size=CIFAR_SIZE,
            T2=d["t"],
            mode="maskcon",
        ).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM)
    args = SimpleNamespace(w=d["w"], mode="maskcon")
    im_k, im_q = (torch.randn(batch, 3, CIFAR_SIZE, CIFAR_SIZE, device=device) for _ in "kq")
    coarse = torch.randint(0, classes, (batch,), device=device)

    def step() -> float:
        with cuda_calls_stay_on(device):
            loss = net(im_k, im_q, coarse, args)  # their train(): mode maskcon
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def our_step(
    variant: Variant,
    device: torch.device,
    batch: int,
    K: int,
    classes: int,
    bn_splits: int | None,
) -> tuple[Callable[[], float], int]:
    """One `coins` training step as train/loop.py runs it; returns (step, bn_splits used)."""
    d = THEIR_DEFAULTS
    model_cfg = {  # full-width ResNet-18, small stem, 32 px RGB, their head sizes
        "backbone": d["arch"],
        "backbone_kwargs": {},  # {} replaces the preset's narrow widths
        "small_stem": True,
        "head_hidden": 512,
        "head_dim": d["dim"],
        "preprocess": {"input_size": CIFAR_SIZE, "in_chans": 3},
    }
    cfg = load_config(
        method="coins",
        dataset="cifar100",
        batch_size=batch,
        K=K,
        m=d["m"],
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        lr=LR,
        optimizer="sgd",
        bn_splits=bn_splits,
        model=model_cfg,
    )
    torch.manual_seed(0)
    model = CoInsModel(cfg, classes, np.zeros(K, dtype=np.int64)).to(device)
    assert model.queue is not None
    model.queue.coarse.random_(0, classes)  # a full queue, as theirs (random labels)
    memory = torch.channels_last if variant.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    if variant.compile:
        assert model.encoder_k is not None
        model.encoder_q.compile()
        model.encoder_k.compile()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    size = cfg.model.preprocess.input_size
    im_q, im_k = (
        torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory)
        for _ in "qk"
    )
    coarse = torch.randint(0, classes, (batch,), device=device)
    index = torch.arange(batch, device=device)
    count = [0]

    def step() -> float:
        generator = torch.Generator().manual_seed(count[0])
        count[0] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.amp):
            loss, _ = model(im_q, im_k, coarse, coarse, index, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step, cfg.bn_splits


def median_rates(
    runs: dict[str, Callable[[], float]],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    block: int = 5,
) -> dict[str, float]:
    """Images/s of each run: batch / median step time; the runs take turns in blocks."""

    def timed(run: Callable[[], float]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        loss = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not np.isfinite(loss):
            raise RuntimeError(f"loss {loss}: the benchmark's step diverged")
        return time.perf_counter() - tic

    for name, run in runs.items():
        tic = time.perf_counter()
        for _ in range(warmup):
            timed(run)
        print(f"  warm-up {name}: {warmup} steps in {time.perf_counter() - tic:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    while any(len(t) < steps for t in times.values()):
        for name, run in runs.items():
            for _ in range(min(block, steps - len(times[name]))):
                times[name].append(timed(run))
    return {name: batch / float(np.median(t)) for name, t in times.items()}


def parse_variants(args: argparse.Namespace, device: torch.device) -> list[Variant]:
    single = args.amp is not None or args.channels_last or args.compile
    if single and args.variants is not None:
        raise SystemExit("give either --variants or --amp/--channels-last/--compile, not both")
    if single:
        return [Variant(args.amp == "bf16", args.channels_last, args.compile)]
    try:
        text = args.variants or DEFAULT_VARIANTS[device.type]
        return [Variant.parse(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"--variants: {e}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maskcon", type=Path, required=True, help="a MaskCon_CVPR2023 checkout")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="cuda if present")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--K", type=int, default=8192, help="queue length (a multiple of batch)")
    parser.add_argument("--classes", type=int, default=20, help="coarse classes of the labels")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per run first")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"ours to run, e.g. {DEFAULT_VARIANTS['cuda']} (default on cuda; fp32 on cpu)",
    )
    parser.add_argument("--amp", choices=("bf16", "off"), default=None, help="one variant: amp")
    parser.add_argument("--channels-last", action="store_true", help="one variant: channels_last")
    parser.add_argument("--compile", action="store_true", help="one variant: torch.compile")
    parser.add_argument(
        "--bn-splits", type=int, default=None, help="our BN groups (default: the config's)"
    )
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.K % args.batch:
        raise SystemExit(f"--K {args.K} must be a multiple of --batch {args.batch} (both queues)")
    variants = parse_variants(args, device)
    maskcon = import_maskcon(args.maskcon)
    torch.backends.cudnn.benchmark = True  # their main.py sets it

    import torchvision

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}  torchvision {torchvision.__version__}")
    if device.type == "cuda":
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        print(f"device: cuda, {torch.cuda.get_device_name(device)}  (tf32 matmul/cudnn: {tf32})")
    else:
        cpu = platform.processor() or platform.machine()
        print(f"device: cpu, {cpu}, {torch.get_num_threads()} threads")
    print(f"maskcon: {maskcon.__file__}")

    runs: dict[str, Callable[[], float]] = {
        "MaskCon (theirs, fp32)": their_step(maskcon, device, args.batch, args.K, args.classes)
    }
    splits = set()
    for v in variants:
        runs[f"coins {v.name}"], used = our_step(
            v, device, args.batch, args.K, args.classes, args.bn_splits
        )
        splits.add(used)
    print(
        f"batch {args.batch}  K {args.K}  3x{CIFAR_SIZE}x{CIFAR_SIZE}  full-width resnet18, "
        f"small stem  dim {THEIR_DEFAULTS['dim']}  coarse classes {args.classes}  "
        f"our bn_splits {sorted(splits)}  steps {args.steps} (+{args.warmup} warm-up)",
        flush=True,
    )
    rates = median_rates(runs, args.batch, args.steps, args.warmup, device)
    theirs = next(iter(rates.values()))
    width = max(len(name) for name in rates)
    print(f"\n{'configuration':<{width}}  {'images/s':>9}  {'ours/theirs':>11}")
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:9.1f}  {rate / theirs:11.3f}")


if __name__ == "__main__":
    main()
