"""``make demo``: the main job, small. Factorize, then train.

1. Factorize ResNet-18 at three rank scales with the paper's inits and relu-svd (``DEMO_INITS``) and
   compare the layers' function errors.
2. Train a CIFAR-style ResNet-20 at rank scale 0.1 on a Fashion-MNIST subset for a few epochs from spectral
   and from the nonlinear inits (:mod:`nlinit.experiments.sweep`), and compare test accuracy.

Writes ``report.md`` (tables), ``results.json`` (every number of part 1), ``objective_vs_rank.png`` and
``train/`` (the runs, ``table.md`` and the sweep's plots).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from .._checks import check_choice, check_int, check_rank_scale  # noqa: E402
from .._paths import check_output  # noqa: E402
from ..inits import list_inits  # noqa: E402
from ..models import build_model  # noqa: E402
from ..train import TrainConfig  # noqa: E402
from .compare import InitSpec, Row, compare_inits, markdown_table  # noqa: E402
from .sweep import run_sweep  # noqa: E402

log = logging.getLogger(__name__)

DEMO_INITS = ("baseline", "spectral", "relu-svd", "lfai", "lfai-ws")
TRAIN_INITS = ("spectral", "relu-svd", "lfai-ws", "nlra-opt")


def plot_rows(rows: Sequence[Row], path: Path, title: str) -> Path:
    """Against rank scale, one line per init: mean R/R0, the same divided by spectral's, and seconds."""
    fig, (ax_obj, ax_rel, ax_sec) = plt.subplots(1, 3, figsize=(15, 4))
    for label in dict.fromkeys(r.label for r in rows):
        mine = [r for r in rows if r.label == label]
        xs = [r.rank_scale for r in mine]
        ax_obj.plot(xs, [r.mean_objective for r in mine], marker="o", label=label)
        if label != "baseline":  # about 2x spectral's error: it would flatten the others
            ax_rel.plot(
                xs, [r.mean_objective / r.mean_objective_spectral for r in mine], marker="o", label=label
            )
        ax_sec.plot(xs, [max(r.seconds, 1e-3) for r in mine], marker="o", label=label)
    ax_obj.set(xlabel="rank scale", ylabel="mean per-layer R(Y) / R(0)", title="function error at init")
    ax_rel.set(
        xlabel="rank scale", ylabel="mean R/R0 / spectral's", title="relative to spectral (lower is better)"
    )
    ax_sec.set(xlabel="rank scale", ylabel="seconds (all layers)", yscale="log", title="init cost")
    for ax in (ax_obj, ax_rel, ax_sec):
        ax.grid(alpha=0.3)
    ax_obj.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(
    out: str | Path = "results/demo",
    *,
    model: str = "resnet18",
    rank_scales: Sequence[float] = (0.05, 0.1, 0.2),
    inits: Sequence[str] = DEMO_INITS,
    seed: int = 0,
    lfai_max_epochs: int = 1,
    train: TrainConfig | None = None,
    train_inits: Sequence[str] = TRAIN_INITS,
) -> list[Row]:
    """Factorize ``model`` at each rank scale with each init, then train ``train`` from each of
    ``train_inits``; write the report and return part 1's rows.

    lfai and lfai-ws run the paper's settings but for at most ``lfai_max_epochs`` epochs of 128 Adam
    steps (paper: up to 6), so that part 1 fits in about 4 minutes on 2 CPU cores; benchmarks/ runs 6.
    ``train`` defaults to ResNet-20 on 4,000 Fashion-MNIST images for 3 epochs at rank scale 0.1
    (about 4 minutes here); ``train_inits=()`` skips part 2.
    """
    train = train or TrainConfig(
        model="resnet20", dataset="fashion-mnist", rank_scale=0.1, subset=4000, test_subset=2000, epochs=3
    )
    out = check_output(out, name="out", kind="dir")
    for name in inits:
        check_choice("init", name, list_inits())
    for name in train_inits:
        check_choice("init", name, list_inits())
    for scale in rank_scales:
        check_rank_scale(scale)
    check_int("seed", seed, low=0)
    check_int("lfai_max_epochs", lfai_max_epochs, low=1)
    if train_inits:
        dataclasses.replace(train, init=train_inits[0], seed=seed).check()
    build_model(model)  # an unknown model name fails here, before the progress bar and any file
    lfai = (("max_epochs", lfai_max_epochs),)
    specs = [InitSpec(i, lfai if i.startswith("lfai") else ()) for i in inits]
    bar = tqdm(total=len(rank_scales) * len(specs), desc="demo", unit="run")
    start = time.perf_counter()
    rows: list[Row] = []
    for s in rank_scales:
        for spec in specs:
            bar.set_postfix_str(f"rank scale {s}, {spec.name}")
            rows += compare_inits(lambda: build_model(model), [s], [spec], source="fresh", seed=seed)
            bar.update(1)
    bar.close()
    total = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad model name above leaves nothing behind
    title = f"{model}, fresh trunc-normal W, seed {seed}, activation auto"
    table = markdown_table(rows)
    (out / "results.json").write_text(
        json.dumps(
            {"model": model, "seed": seed, "seconds": total, "rows": [asdict(r) for r in rows]}, indent=1
        )
    )
    plot_rows(rows, out / "objective_vs_rank.png", title)
    trained = ""
    if train_inits:
        shutil.rmtree(out / "train", ignore_errors=True)  # a demo starts from scratch
        t0 = time.perf_counter()
        root = run_sweep(out / "train", train, train_inits, [train.rank_scale], [seed], full_rank=False)
        trained = (
            f"## 2. Training {train.model} on {train.dataset} from each init\n\n"
            f"{train.subset} training images, {train.epochs} epochs, rank scale {train.rank_scale}, "
            f"seed {seed}: "
            "far too short to rank the inits (see results/sweep/ for the sweeps with seeds and error bars), "
            "but it shows the whole pipeline.\n\n"
            + (root / "table.md").read_text().split("## Final test top-1 (%)", 1)[1].strip()
            + f"\n\nTraining wall time {time.perf_counter() - t0:.0f} s.\n"
        )
    (out / "report.md").write_text(
        f"# nlinit demo\n\n## 1. Factorizing {title}\n\n"
        "R(Y)/R(0) is the layer's exact NLRA objective (ReLU or identity, as found after each layer) "
        "relative to Y = 0, averaged over the factorized layers; seconds are the inits' own time, summed "
        "over layers. lfai and lfai-ws: the paper's sampled objective and settings, at most "
        f"{lfai_max_epochs} epoch(s) of 128 Adam steps (paper: up to 6; benchmarks/RESULTS.md runs 6). "
        "Layers followed by no nonlinearity (the last conv of each residual block, projections) have "
        "spectral as their exact optimum, so no init beats it there.\n\n"
        f"{table}\n![objective and time against rank scale](objective_vs_rank.png)\n\n"
        f"Total wall time {total:.0f} s.\n\n{trained}"
    )
    return rows
