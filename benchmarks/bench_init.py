"""Init cost and quality on torchvision ResNet-50 (issue: core). Writes benchmarks/RESULTS.md.

    python benchmarks/bench_init.py --out benchmarks/RESULTS.md            # full (about 30-60 min, 2 cores)
    python benchmarks/bench_init.py --rank-scales 0.1 --inits spectral relu-svd --out /tmp/r.md   # quick

Every init sees the same fresh trunc-normal W per layer (source="fresh", seed 0) and the ReLU activation
after every layer, as in the paper's ResNet-50 setup. Seconds are the inits' own time summed over layers.
spectral and relu-svd are timed ``--repeats`` times, interleaved, and each layer's fastest time counts, so
the ratio of the two comes from one run on one machine state.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from nlinit.experiments.compare import InitSpec, Row, compare_inits, markdown_table
from nlinit.models import build_model

SPECS = {
    "spectral": InitSpec("spectral"),
    "baseline": InitSpec("baseline"),
    "relu-svd": InitSpec("relu-svd"),
    "lfai": InitSpec("lfai", label="lfai (sampled)"),
    "lfai-exact": InitSpec("lfai", (("objective", "exact"),), "lfai (exact)"),
    "lfai-ws": InitSpec("lfai-ws", label="lfai-ws (sampled)"),
    "lfai-ws-exact": InitSpec("lfai-ws", (("objective", "exact"),), "lfai-ws (exact)"),
}
TIMED = ("spectral", "relu-svd")  # repeated and interleaved for the time ratio


def machine(device: str) -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )
    gpu = f"{torch.cuda.get_device_name()}, " if device == "cuda" else ""
    return (
        f"{gpu}{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--rank-scales", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--inits", nargs="+", default=list(SPECS), choices=list(SPECS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the model and the inits run")
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    args = p.parse_args()

    def build() -> torch.nn.Module:
        return build_model(args.model).to(args.device)

    common = {"source": "fresh", "seed": 0, "activation": "relu"}
    rows: list[Row] = []
    start = time.perf_counter()
    for s in args.rank_scales:
        timed = [k for k in TIMED if k in args.inits]
        runs: dict[str, list[Row]] = {k: [] for k in timed}
        for _ in range(args.repeats):
            for k in timed:
                runs[k] += compare_inits(build, [s], [SPECS[k]], **common)
        for k in timed:
            row = runs[k][0]  # per layer, the fastest of the repeats: robust to this machine's noise
            per_layer = zip(*([layer["seconds"] for layer in r.per_layer] for r in runs[k]))
            row.seconds = sum(min(times) for times in per_layer)
            rows.append(row)
        for k in args.inits:
            if k not in timed:
                print(f"rank scale {s}: {SPECS[k].name}", file=sys.stderr, flush=True)
                rows += compare_inits(build, [s], [SPECS[k]], **common)
                write(args, rows, time.perf_counter() - start)  # partial results survive an interruption
    print(write(args, rows, time.perf_counter() - start))
    return 0


def write(args: argparse.Namespace, rows: list[Row], total: float) -> str:
    """Write RESULTS.md: command, machine, the table (rank scale, then SPECS order) and the targets."""
    order = {spec.name: i for i, spec in enumerate(SPECS.values())}
    rows = sorted(rows, key=lambda r: (r.rank_scale, order[r.label]))
    verdicts = []
    for s in args.rank_scales:
        by = {r.label: r for r in rows if r.rank_scale == s}
        if "spectral" in by and "relu-svd" in by:
            ratio = by["relu-svd"].seconds / by["spectral"].seconds
            verdicts.append(
                f"- rank scale {s:g}: relu-svd time / spectral time = {ratio:.2f} "
                f"(target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})"
            )
        if "lfai-ws (exact)" in by and "relu-svd" in by:
            a, b = by["lfai-ws (exact)"].mean_objective, by["relu-svd"].mean_objective
            verdicts.append(
                f"- rank scale {s:g}: lfai-ws (exact) mean R/R0 {a:.5f} vs relu-svd {b:.5f} "
                f"(target no worse: {'met' if a <= b + 1e-9 else 'NOT met'})"
            )
        if "lfai-ws (sampled)" in by and "relu-svd" in by:
            a, b = by["lfai-ws (sampled)"].mean_objective, by["relu-svd"].mean_objective
            verdicts.append(
                f"- rank scale {s:g}: the paper's sampled lfai-ws mean R/R0 {a:.5f} vs relu-svd {b:.5f}: "
                f"{'beats' if a < b else 'does not beat'} relu-svd (a finding, not a target)"
            )
    text = (
        f"# bench_init: {args.model} on {args.device}, every init\n\n"
        f"Command: `python benchmarks/bench_init.py --model {args.model} --device {args.device} "
        f"--rank-scales {' '.join(map(str, args.rank_scales))} --repeats {args.repeats}"
        f"{'' if args.inits == list(SPECS) else ' --inits ' + ' '.join(args.inits)}`  \n"
        f"Machine: {machine(args.device)}  \n"
        f"Date: {datetime.date.today()}; wall time {total / 60:.1f} min.\n\n"
        "W per layer: fresh truncated normal N(0, 1/fan_in) at 2 sigma (seed 0, drawn on the CPU), the same "
        "for every init; activation ReLU after every factorized layer (stem and classifier kept full-rank). "
        "mean R/R0: the exact ReLU objective R(Y)/R(0) averaged over layers. seconds: init time summed over "
        f"layers (spectral and relu-svd: per layer the fastest of {args.repeats} interleaved runs).\n\n"
        f"{markdown_table(rows)}\n" + "\n".join(verdicts) + "\n"
    )
    Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
