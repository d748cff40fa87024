"""The data-aware inits against spectral: cost on ResNet-50, quality on ResNet-20 / Fashion-MNIST.

    python benchmarks/bench_layer_function.py --out benchmarks/LAYER_FUNCTION.md      # a few minutes, 2 cores
    python benchmarks/bench_layer_function.py --checkpoint runs/r20/checkpoint.safetensors ...   # trained

Part 1, cost.
ResNet-50 (torchvision, random weights from seed 0, eval mode: every BatchNorm an affine map), 64 random
N(0, 1) 224 x 224 inputs as calibration data, rank scale 0.1. One ``nlinit.factorize`` call per init on a
fresh copy of the model:

- spectral: no calibration (today's data-free init);
- whiten, relu-svd: ``calibration=`` the inputs, so each layer is fitted on its input mean and covariance,
  with its bias and eval-mode BatchNorm (nlinit.layer_function).

Reported per init: the solve time (the sum over layers of LayerReport.seconds: the init, with its SVD and
its whitening), the statistics time (FactorizeReport.seconds_stats, separately) and the whole call; then
--repeats more solves per init, interleaved, on statistics collected once as factorize collects them
(``factorize(..., stats=)``): the ratio of the medians to spectral's and the median of the repeats'
ratios (each init's solve over spectral's in the same repeat; spectral's own solve varies by +-20 %
between runs on this machine, so one run's ratio is not enough). The issue's target: whiten and relu-svd
solve in at most 2x spectral's time, statistics excluded. Also the mean held-out objective (relative to
the zero approximant) of spectral, whiten and the init on held-out calibration vectors.

Part 2, quality: ResNet-20 (random weights from seed 0, or ``--checkpoint``: a model trained by
``nlinit train``), eval mode, calibration on 2,048 Fashion-MNIST training images, rank scale 0.25; per init
the mean over layers of the held-out objective R/R0 (512 held-out input vectors per layer, the layer's bias
and BatchNorm included) and the test top-1 of the factorized model when a checkpoint is given
(training-free).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
from pathlib import Path

import torch

from nlinit import factorize
from nlinit.calibration import collect_stats
from nlinit.checkpoint import load_model
from nlinit.data import build_datasets
from nlinit.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_init import machine  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rank-scale", type=float, default=0.1)
    p.add_argument("--checkpoint", default=None, help="part 2 on this trained ResNet-20 (nlinit train)")
    p.add_argument("--calibration-images", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5, help="interleaved solves per init on shared statistics")
    p.add_argument("--out", default="benchmarks/LAYER_FUNCTION.md")
    p.add_argument("--note", default="", help="what else ran on the machine, written under the machine line")
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    # warm-up, untimed: the first factorize of a process pays one-time costs (thread pools, LAPACK
    # workspaces, lazy imports) that would otherwise land on spectral, measured first
    factorize(copy.deepcopy(model), rank_scale=args.rank_scale, init="spectral", progress=False)
    rows = []
    for init in ("spectral", "whiten", "relu-svd"):
        kwargs = {} if init == "spectral" else {"calibration": x.split(16), "calibration_samples": 0}
        report = factorize(
            copy.deepcopy(model), rank_scale=args.rank_scale, init=init, progress=False, **kwargs
        )
        solve = sum(layer.seconds for layer in report.factorized)
        rows.append((init, solve, report.seconds_stats, report.seconds, report))
        print(init, f"solve {solve:.2f} s, stats {report.seconds_stats:.2f} s, call {report.seconds:.2f} s")
    base = rows[0][1]
    # the solves again, on statistics collected once the way factorize collects them for these inits
    # (input_cov=False: whiten and relu-svd read W Sigma W^T only), interleaved
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    shared = collect_stats(
        model, layers, x.split(16), heldout=512, generator=torch.Generator().manual_seed(0), input_cov=False
    )
    solves: dict[str, list[float]] = {init: [] for init, *_ in rows}
    for _ in range(args.repeats):
        for init in solves:
            kwargs = {} if init == "spectral" else {"stats": shared}
            report = factorize(
                copy.deepcopy(model), rank_scale=args.rank_scale, init=init, progress=False, **kwargs
            )
            solves[init].append(sum(layer.seconds for layer in report.factorized))
    median = {init: statistics.median(ts) for init, ts in solves.items()}
    lines = [
        "# Data-aware inits vs spectral on ResNet-50",
        "",
        f"Command: `python benchmarks/bench_layer_function.py --images {args.images} --size {args.size} "
        f"--rank-scale {args.rank_scale} --repeats {args.repeats}"
        + (f" --checkpoint {args.checkpoint}`" if args.checkpoint else "`"),
        f"Machine: {machine('cpu')}. Run: {datetime.datetime.now().isoformat(timespec='minutes')}."
        + (f" {args.note}" if args.note else ""),
        "",
        "| init | solve (s) | solve / spectral's | statistics (s) | whole call (s) | held-out R/R0: spectral "
        "| whiten | init |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for init, solve, stats, call, report in rows:
        held = [report.mean_objective(f"heldout_{w}") for w in ("spectral", "whiten", "init")]
        cells = " | ".join("" if v != v else f"{v:.4f}" for v in held)
        lines.append(f"| {init} | {solve:.2f} | {solve / base:.2f}x | {stats:.2f} | {call:.2f} | {cells} |")
    lines += [
        "",
        "Solve: the sum over the factorized layers of the init's time (with its SVD and, for the data-aware",
        "inits, the whitening); statistics: collecting every layer's input and output moments in float64;",
        "whole call: factorize from start to end, including the report's measurements. Ratios from this one",
        "run.",
        "",
        f"Solve again, {args.repeats} times per init, interleaved, on statistics collected once as factorize "
        "collects them (stats=; the outputs' covariance where d_out < d_in):",
        "",
        "| init | solve, median (s) | / spectral's median | median of the repeats' ratios "
        "| every solve (s) |",
        "|---|---|---|---|---|",
        *(
            f"| {init} | {median[init]:.2f} | {median[init] / median['spectral']:.2f}x | "
            f"{statistics.median(t / s for t, s in zip(ts, solves['spectral'])):.2f}x | "
            f"{', '.join(f'{t:.2f}' for t in ts)} |"
            for init, ts in solves.items()
        ),
        "",
        *arithmetic(model),
        "",
    ]
    lines += part2(args)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def arithmetic(model: torch.nn.Module) -> list[str]:
    """The multiply-adds of each route to the whitened problem, counted on the layers factorize chooses."""
    gram = products = measured = 0
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Conv2d) and name != "conv1":  # the layers factorize chooses
            m, n = layer.out_channels, layer.weight[0].numel()
            gram += min(m, n) ** 2 * max(m, n)  # spectral: the Gram matrix of W
            # from Sigma: n > m: Sigma W^T (n^2 m) and K = W Sigma W^T (m^2 n); n <= m: W L (m n^2)
            products += n * n * m + (m * m * n if n > m else 0)
            # from the measured output covariance (n > m): the 2 probes (2 n^2), nothing of size n^2 m
            measured += 2 * n * n if n > m else n * n * m
    return [
        "Arithmetic (multiply-adds counted on these layers): spectral's Gram matrix of W costs "
        f"{gram / 1e9:.1f} G. The whitened problem from Sigma needs Sigma W^T and W Sigma W^T (or W L where "
        f"d_in <= d_out): {products / 1e9:.1f} G, {products / gram:.1f}x spectral's, before any "
        "eigendecomposition, so no float64 solve from Sigma alone comes within 2x of spectral on ResNet-50, "
        "whose 3 x 3 convs have d_in = 9 d_out. With the covariance of the layer's outputs measured during "
        "calibration (LayerStats.out_cov, N d_out^2 per layer there instead of N d_in^2), K = W Sigma W^T "
        f"is read, not computed: {measured / 1e9:.1f} G ({measured / gram:.2f}x), the rest being an "
        "eigendecomposition of size d_out like spectral's.",
    ]


@torch.no_grad()
def top1(model: torch.nn.Module, data: torch.utils.data.Dataset) -> float:
    loader = torch.utils.data.DataLoader(data, batch_size=500)
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return 100.0 * hits / len(data)


def part2(args: argparse.Namespace) -> list[str]:
    spec = build_datasets("fashion-mnist")
    if args.checkpoint:
        model = load_model(args.checkpoint).eval()
    else:
        torch.manual_seed(0)
        model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    picks = torch.randperm(len(spec.train), generator=torch.Generator().manual_seed(0))
    images = torch.stack([spec.train[int(i)][0] for i in picks[: args.calibration_images]])
    base = top1(model, spec.test) if args.checkpoint else float("nan")
    lines = [
        "## Part 2: quality on ResNet-20, Fashion-MNIST calibration images",
        "",
        f"Model: {'trained, ' + args.checkpoint if args.checkpoint else 'random weights (seed 0)'}; "
        "eval mode; "
        f"{args.calibration_images} calibration images (every 5th held out); rank scale 0.25."
        + (f" Test top-1 of the dense model: {base:.2f}%." if args.checkpoint else ""),
        "",
        "| init | held-out R/R0 (mean over layers) | held-out R/R0 of spectral | of whiten | test top-1 (%) "
        "| seconds |",
        "|---|---|---|---|---|---|",
    ]
    for init in ("spectral", "whiten", "relu-svd", "nlra-opt", "lfai-data"):
        m = copy.deepcopy(model)
        report = factorize(m, rank_scale=0.25, init=init, calibration=images.split(256), progress=False)
        acc = f"{top1(m, spec.test):.2f}" if args.checkpoint else ""
        held = [report.mean_objective(f"heldout_{w}") for w in ("init", "spectral", "whiten")]
        lines.append(
            f"| {init} | " + " | ".join(f"{v:.4f}" for v in held) + f" | {acc} | {report.seconds:.1f} |"
        )
        print(lines[-1])
    return [*lines, ""]


if __name__ == "__main__":
    raise SystemExit(main())
