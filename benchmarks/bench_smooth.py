"""relu-svd for a smooth activation (SiLU) against spectral: the whole factorize call on efficientnet_b0.

    python benchmarks/bench_smooth.py --out benchmarks/SMOOTH.md      # about a minute on 2 cores

torchvision efficientnet_b0 (10 classes, random weights from seed 0, eval mode: each conv fitted on the
paper's objective with its traced activation, SiLU for most), rank scale 0.25, init "relu-svd" (each row's
norm by a golden-section search on a 20 x 20 Gauss-Hermite rule: nlinit.subspace.best_row_norms) and
"spectral"; the report's exact objectives included. Interleaved, median of 3; prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

import nlinit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/SMOOTH.md")
    args = p.parse_args()
    torch.manual_seed(0)
    base = torchvision.models.efficientnet_b0(num_classes=10).eval()
    times: dict[str, list[float]] = {"relu-svd": [], "spectral": []}
    objective = {}
    for _ in range(3):
        for init in times:
            model = copy.deepcopy(base)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the depthwise convs are skipped, as the report says
                t0 = time.perf_counter()
                report = nlinit.factorize(model, rank_scale=0.25, init=init, seed=0, progress=False)
                times[init].append(time.perf_counter() - t0)
            objective[init] = report.mean_objective()
    med = {k: statistics.median(v) for k, v in times.items()}
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_init import machine

    lines = [
        "# relu-svd on a smooth activation: efficientnet_b0 (SiLU), the whole factorize call",
        "",
        "Command: `python benchmarks/bench_smooth.py`  ",
        f"Machine: {machine('cpu')}  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "| init | seconds (median of 3) | x spectral | mean R/R0 |",
        "|---|---|---|---|",
        *(f"| {i} | {t:.1f} | {t / med['spectral']:.2f} | {objective[i]:.4f} |" for i, t in med.items()),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
