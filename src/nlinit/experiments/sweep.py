"""Sweeps: train every (init, rank scale, seed) of a grid, then report mean +- standard error per cell.

Layout of ``results/sweep/<name>/``::

    sweep.json                        the grid and the shared training config
    runs/<init>-r<scale>-s<seed>/     one nlinit.train run each (metrics.jsonl, summary.json, checkpoint)
    runs/full-s<seed>/                full-rank runs
    table.md  results.csv  paired.csv                 (written by write_report)
    accuracy_vs_rank.png  paired_difference_vs_rank.png  init_error_vs_accuracy.png

The runs of one seed are paired: every init of seed s starts from the same fresh W and sees the same data
order. The report therefore also gives, per init and rank scale, the per-seed difference to a reference init
(default spectral) with a t-interval (:func:`paired_differences`), which is far tighter than comparing the
unpaired means when the seed-to-seed spread is larger than the effect of the init.

Each run resumes from its checkpoint and is skipped once finished, so a sweep can be stopped and restarted,
split over sittings, or run cell by cell on several machines that share the directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from .._checks import check_int, check_rank_scale, check_shard
from .._paths import atomic_write_csv, atomic_write_text, check_output, exclusive
from ..train import FULL_RANK, TrainConfig, train

__all__ = [
    "DEFAULT_REFERENCE",
    "DIVERGED",
    "PairedDifference",
    "cells",
    "collect",
    "markdown_table",
    "paired_differences",
    "paired_table",
    "run_dir",
    "run_sweep",
    "summarize",
    "write_csv",
    "write_report",
]

DEFAULT_REFERENCE = "spectral"  # the init every other init is paired against in the report
#: A run directory holding this file diverged (written by nlinit.experiments.evidence.run_grid): the report
#: lists it among the runs without a final result.
DIVERGED = "diverged.json"
_RESULT_KEYS = ("final_test_top1", "final_test_loss", "final_train_loss", "seconds", "params")


def run_dir(root: str | Path, init: str, rank_scale: float | None, seed: int) -> Path:
    """Where one run of the sweep lives."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ValueError(f"root must be a non-empty path, got {root!r}")
    if not isinstance(init, str) or not init or any(c.isspace() or c in "/\\" for c in init):
        raise ValueError(f"init must be an init name (no spaces or slashes), got {init!r}")
    check_int("seed", seed, low=0)
    if init != FULL_RANK:
        check_rank_scale(rank_scale)
    return Path(root) / "runs" / _tag(init, rank_scale, seed)


def _tag(init: str, rank_scale: float | None, seed: int) -> str:
    return f"{FULL_RANK}-s{seed}" if init == FULL_RANK else f"{init}-r{rank_scale:g}-s{seed}"


def _check_rows(rows: object, keys: Sequence[str], number: str | None = None) -> list[dict[str, Any]]:
    """A list of dicts (as :func:`collect` returns) that all have ``keys``; ``number``: a key whose values
    must be finite numbers."""
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of dicts (as collect returns), got {type(rows).__name__}")
    if number is not None and not isinstance(number, str):
        raise TypeError(f"key must be a str (a column of the rows), got {number!r}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [k for k in (*keys, *([number] if number else [])) if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] has no {missing[0]!r}; its keys are {', '.join(map(str, row))}")
        if number is not None:
            v = row[number]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"rows[{i}][{number!r}] must be a finite number, got {v!r}")
    return list(rows)


def _check_digits(digits: object) -> int:
    return check_int("digits", digits, low=0, high=15)


def _check_list(name: str, values: object) -> list[Any]:
    """A list or tuple (not a string) without repeated values."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {values!r}")
    repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if repeated is not None:
        raise ValueError(f"{name} has {repeated!r} more than once: {list(values)!r}")
    return list(values)


def cells(
    inits: Sequence[str], rank_scales: Sequence[float], seeds: Sequence[int], full_rank: bool
) -> list[tuple[str, float | None, int]]:
    """The grid in run order: seed-major, so an interrupted sweep has whole seeds of every cell first.

    Raises:
        ValueError / TypeError: an init that is not a non-empty string (or is ``"full"``: use full_rank), a
            rank scale outside (0, 1], a seed that is not an int >= 0, a repeated value, two rank scales
            with the same run directory (equal to 6 significant digits), or an empty grid.
    """
    for init in _check_list("inits", inits):
        if not isinstance(init, str) or not init or init == FULL_RANK:
            raise ValueError(f"inits must be init names (full-rank runs: full_rank=True), got {init!r}")
    for scale in _check_list("rank_scales", rank_scales):
        try:
            check_rank_scale(scale)
        except ValueError:
            raise ValueError(f"rank_scales must be numbers in (0, 1], got {scale!r}") from None
    tags = [f"{s:g}" for s in rank_scales]
    clash = next((i for i, t in enumerate(tags) if t in tags[:i]), None)
    if clash is not None:
        first = rank_scales[tags.index(tags[clash])]
        raise ValueError(
            f"rank_scales {first!r} and {rank_scales[clash]!r} would share the run directory tag "
            f"r{tags[clash]}; give rank scales that differ in 6 significant digits"
        )
    for seed in _check_list("seeds", seeds):
        try:
            check_int("seeds", seed, low=0, high=2**63 - 1)
        except ValueError:
            raise ValueError(f"seeds must be ints >= 0, got {seed!r}") from None
    if not isinstance(full_rank, bool):
        raise TypeError(f"full_rank must be a bool, got {full_rank!r}")
    if bool(inits) != bool(rank_scales):
        given, empty = ("inits", "rank_scales") if inits else ("rank_scales", "inits")
        raise ValueError(f"{given} are given but {empty} is empty: the grid would ignore them")
    if not seeds or not (inits or full_rank):
        raise ValueError("the grid is empty: give seeds, and inits with rank_scales or full_rank=True")
    grid: list[tuple[str, float | None, int]] = []
    for seed in seeds:
        grid += [(FULL_RANK, None, seed)] if full_rank else []
        grid += [(init, s, seed) for s in rank_scales for init in inits]
    return grid


def _cell_config(base: TrainConfig, root: Path, init: str, scale: float | None, seed: int) -> TrainConfig:
    """One cell's config: full-rank cells keep rank_scale 1.0 (as every sweep has recorded them)."""
    return dataclasses.replace(
        base,
        init=init,
        rank_scale=1.0 if scale is None else scale,
        seed=seed,
        out=str(run_dir(root, init, scale, seed)),
        resume=True,
    )


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not JSON ({err}); fix or delete it") from None
    keys = ("inits", "rank_scales", "seeds", "full_rank", "config")
    if not isinstance(spec, dict) or any(k not in spec for k in keys):
        raise ValueError(f"{str(path)!r} is not a sweep spec (a JSON object with {', '.join(keys)})")
    return spec


def run_sweep(
    root: str | Path,
    base: TrainConfig,
    inits: Sequence[str],
    rank_scales: Sequence[float],
    seeds: Sequence[int],
    full_rank: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> Path:
    """Train every cell not yet finished (resuming unfinished ones), then write the report. Returns root.

    ``base`` gives everything but init, rank_scale, seed and out. A root that already holds a sweep must
    have been started with the same config (so cells stay comparable); its grid may grow. (A sweep none of
    whose runs has started yet takes the new config.) ``shard=(i, n)`` trains only cells i, i + n, i + 2n,
    ...: n processes (or machines sharing the directory) split the grid between them. Each cell holds its
    run directory's lock while it trains (see :func:`nlinit.train.train`).

    Raises:
        ValueError / TypeError: a bad grid value (see :func:`cells`), shard or config; nothing is written.
        OSError: ``root`` cannot be written (checked before anything is).
    """
    check_shard(shard)
    index, count = shard
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}")
    root = check_output(root, name="sweep directory", kind="dir")
    grid = cells(inits, rank_scales, seeds, full_rank)
    for init, scale, seed in grid:  # check every cell's config before training any
        _cell_config(base, root, init, scale, seed).check()
    recorded = _record_grid(root, base, inits, rank_scales, seeds, full_rank)
    for i, (init, scale, seed) in enumerate(grid):
        cfg = _cell_config(base, root, init, scale, seed)
        if i % count != index or (Path(cfg.out) / "summary.json").exists():
            continue
        print(f"[{i + 1}/{len(grid)}] {Path(cfg.out).name}", flush=True)
        train(cfg)
    write_report(root, reference=DEFAULT_REFERENCE if DEFAULT_REFERENCE in recorded["inits"] else None)
    return root


def _record_grid(
    root: Path,
    base: TrainConfig,
    inits: Sequence[str],
    rank_scales: Sequence[float],
    seeds: Sequence[int],
    full_rank: bool,
) -> dict[str, Any]:
    """Record a grid in ``root/sweep.json`` before any of it trains, and return what the file then holds.

    The file keeps the union of every grid recorded in ``root`` with one config (a grid may grow), so the
    report knows which inits a sweep is waiting for (its reference among them) while their runs are still to
    come. Under ``root/.sweep.lock``: shards starting at once read and write it one at a time.

    Raises:
        ValueError: ``root`` holds a started sweep with another config (the message names the first key that
            differs), or its sweep.json is not a sweep spec.
    """
    spec: dict[str, Any] = {
        "inits": list(inits),
        "rank_scales": list(rank_scales),
        "seeds": list(seeds),
        "full_rank": full_rank,
        "config": {k: v for k, v in base.identity().items() if k not in ("init", "rank_scale", "seed")},
    }
    spec_path = root / "sweep.json"
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / ".sweep.lock"):  # shards may start at once: one read-modify-write at a time
        if spec_path.exists():
            old = _read_spec(spec_path)
            started = any(root.glob("runs/*/metrics.jsonl"))
            if old["config"] != spec["config"] and started:
                key = next(k for k in spec["config"] if old["config"].get(k) != spec["config"][k])
                raise ValueError(
                    f"{str(root)!r} holds a sweep with {key}={old['config'].get(key)!r}, this one has "
                    f"{key}={spec['config'][key]!r}; use another name or the same settings"
                )
            if old["config"] == spec["config"]:
                for key in ("inits", "rank_scales", "seeds"):  # a grid may grow; its union is recorded
                    spec[key] = old[key] + [v for v in spec[key] if v not in old[key]]
                spec["full_rank"] = old["full_rank"] or full_rank
        atomic_write_text(spec_path, json.dumps(spec, indent=2) + "\n")
    return spec


def collect(root: str | Path) -> list[dict[str, Any]]:
    """One row per finished run: its cell, final metrics and the init's objectives (from metrics.jsonl).

    Raises:
        ValueError: root not a path; a run whose summary.json or metrics.jsonl is not what ``nlinit train``
            writes (the message names the file). OSError: a file that cannot be read.
    """
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ValueError(f"root must be a non-empty path, got {root!r}")
    rows = []
    for summary_path in sorted(Path(root).glob("runs/*/summary.json")):
        metrics_path = summary_path.parent / "metrics.jsonl"
        try:
            summary = json.loads(summary_path.read_text())
            records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
            init = next(r for r in records if r["event"] == "init")
            missing = [k for k in ("init", "rank_scale", "seed", "epochs", *_RESULT_KEYS) if k not in summary]
        except (json.JSONDecodeError, StopIteration, KeyError, TypeError) as err:
            raise ValueError(
                f"run {str(summary_path.parent)!r} is corrupt: {type(err).__name__} reading summary.json / "
                "metrics.jsonl (no init record?); delete the run to redo it"
            ) from None
        if missing:
            raise ValueError(f"{str(summary_path)!r} has no {missing[0]!r}; delete the run to redo it")
        rows.append(
            {
                "run": summary_path.parent.name,
                "init": summary["init"],
                "rank_scale": None if summary["init"] == FULL_RANK else summary["rank_scale"],
                "seed": summary["seed"],
                "epochs": summary["epochs"],
                **{k: summary[k] for k in _RESULT_KEYS},
                "init_objective": init.get("mean_objective"),
                "init_objective_spectral": init.get("mean_objective_spectral"),
                "function_error": init.get("function_error"),
            }
        )
    return rows


def summarize(
    rows: Sequence[dict[str, Any]], key: str = "final_test_top1"
) -> dict[tuple[str, Any], tuple[float, float, int]]:
    """{(init, rank_scale): (mean, standard error, n)} of ``key``; s.e. = std (ddof 1) / sqrt(n), or nan.

    Raises:
        TypeError / ValueError: rows not a list of dicts with init, rank_scale and ``key``, or a value of
            ``key`` that is not a finite number.
    """
    _check_rows(rows, ("init", "rank_scale"), key)
    groups: dict[tuple[str, Any], list[float]] = {}
    for row in rows:
        groups.setdefault((row["init"], row["rank_scale"]), []).append(row[key])
    out = {}
    for cell, values in groups.items():
        v = np.asarray(values, dtype=float)
        se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
        out[cell] = (float(v.mean()), se, len(v))
    return out


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """One (init, rank scale) cell against the reference init, paired by seed.

    differences[k] = value(init, seed_k) - value(reference, seed_k) over the seeds where both runs exist
    (``seeds``, ascending). mean, se (std with ddof 1 / sqrt(n); nan for n = 1) and the two-sided t-interval
    [ci_low, ci_high] = mean -+ t_{n-1, (1 + level) / 2} se (nan for n = 1).
    """

    init: str
    rank_scale: float | None
    reference: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    se: float
    ci_low: float
    ci_high: float
    level: float

    @property
    def pairs(self) -> int:
        return len(self.seeds)

    @property
    def half_width(self) -> float:
        """Half the interval's width: mean +- half_width."""
        return (self.ci_high - self.ci_low) / 2


def paired_differences(
    rows: Sequence[dict[str, Any]],
    reference: str = DEFAULT_REFERENCE,
    key: str = "final_test_top1",
    level: float = 0.95,
) -> list[PairedDifference]:
    r"""Per-seed differences of ``key`` to the ``reference`` init, one :class:`PairedDifference` per cell.

    For a cell (init, s) and the seeds S where both it and (reference, s) have a run,

    .. math::
        d_k = x_{init, s, k} - x_{ref, s, k}, \quad \bar d = \frac{1}{n} \sum_k d_k, \quad
        \mathrm{se} = \frac{\mathrm{std}(d)}{\sqrt n}, \quad \bar d \pm t_{n-1, (1 + level)/2}\, \mathrm{se}.

    Cells are sorted by rank scale, then init; the reference and full-rank runs get none, and neither does a
    cell without a single paired seed (rows of full-rank runs only give an empty list). Args: rows as
    :func:`collect` returns them (keys init, rank_scale, seed and ``key``); level in (0, 1).

    Raises:
        ValueError: level outside (0, 1); low-rank runs but none of ``reference`` (the message lists the
            inits present); two runs of one (init, rank scale, seed).
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not isinstance(reference, str) or not reference:
        raise ValueError(f"reference must be an init name, got {reference!r}")
    _check_rows(rows, ("init", "rank_scale", "seed"), key)
    values: dict[tuple[str, Any], dict[int, float]] = {}
    for row in rows:
        cell = values.setdefault((row["init"], row["rank_scale"]), {})
        if row["seed"] in cell:
            raise ValueError(
                f"two runs of init {row['init']!r}, rank scale {row['rank_scale']!r}, seed {row['seed']!r}"
            )
        cell[row["seed"]] = float(row[key])
    inits = sorted({init for init, _ in values})
    if inits == [FULL_RANK]:  # a full-rank-only sweep: nothing to pair
        return []
    if reference not in inits:
        raise ValueError(f"reference init {reference!r} has no runs; inits present: {', '.join(inits)}")
    out = []
    for (init, scale), by_seed in sorted(values.items(), key=lambda kv: (kv[0][1] or 0.0, kv[0][0])):
        ref = values.get((reference, scale), {})
        seeds = sorted(set(by_seed) & set(ref))
        if init in (reference, FULL_RANK) or not seeds:
            continue
        d = np.array([by_seed[k] - ref[k] for k in seeds])
        n, mean = len(d), float(d.mean())
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        t = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) if n > 1 else math.nan
        out.append(
            PairedDifference(
                init, scale, reference, tuple(seeds), tuple(d.tolist()), mean, se, mean - t * se,
                mean + t * se, level,
            )
        )  # fmt: skip
    return out


def paired_table(pairs: Sequence[PairedDifference], digits: int = 2) -> str:
    """One row per rank scale, one column per init: mean ± s.e. [t-interval] (n pairs); an interval that
    excludes 0 in bold."""
    _check_digits(digits)
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of PairedDifference, got {type(pairs).__name__}")
    bad = next((x for x in pairs if not isinstance(x, PairedDifference)), None)
    if bad is not None:
        raise TypeError(
            f"pairs must hold PairedDifference (from paired_differences), got {type(bad).__name__}"
        )
    if not pairs:
        return "No init has a run paired (same seed, same rank scale) with the reference."
    inits = sorted({p.init for p in pairs})
    scales = sorted({p.rank_scale for p in pairs}, key=lambda s: s or 0.0)
    by_cell = {(p.init, p.rank_scale): p for p in pairs}
    lines = ["| rank scale | " + " | ".join(inits) + " |", "|---" * (len(inits) + 1) + "|"]
    for scale in scales:
        texts = []
        for init in inits:
            p = by_cell.get((init, scale))
            if p is None:
                texts.append("")
                continue
            if math.isnan(p.se):
                texts.append(f"{p.mean:+.{digits}f} (n=1)")
                continue
            text = (
                f"{p.mean:+.{digits}f} ± {p.se:.{digits}f} [{p.ci_low:+.{digits}f}, {p.ci_high:+.{digits}f}]"
            )
            texts.append((f"**{text}**" if p.ci_low > 0 or p.ci_high < 0 else text) + f" (n={p.pairs})")
        lines.append(f"| {scale:g} | " + " | ".join(texts) + " |")
    level = pairs[0].level
    lines += [
        "",
        f"Per-seed difference init − {pairs[0].reference} (same seed: same fresh W and data order): mean ± "
        f"standard error [{100 * level:g}% t-interval], n = number of seeds with both runs; bold: the "
        "interval excludes 0.",
    ]
    return "\n".join(lines)


def _fmt(mean: float, se: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def markdown_table(
    rows: Sequence[dict[str, Any]],
    key: str = "final_test_top1",
    higher_is_better: bool = True,
    digits: int = 2,
) -> str:
    """The paper's layout: one row per rank scale, one column per init, mean ± s.e.; the best mean per row in
    bold (every init that ties it at the printed precision)."""
    _check_digits(digits)
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better must be a bool, got {higher_is_better!r}")
    stats = summarize(rows, key)
    inits = sorted({i for i, s in stats if i != FULL_RANK})
    scales = sorted({s for i, s in stats if i != FULL_RANK})
    lines = ["| rank scale | " + " | ".join(inits) + " |", "|---" * (len(inits) + 1) + "|"]
    for scale in scales:
        present = {i: stats[(i, scale)] for i in inits if (i, scale) in stats}
        pick = max if higher_is_better else min
        best = round(pick(m for m, _, _ in present.values()), digits) if present else None
        cells_ = []
        for i in inits:
            if i not in present:
                cells_.append("")
                continue
            mean, se, _ = present[i]
            text = _fmt(mean, se, digits)
            cells_.append(f"**{text}**" if round(present[i][0], digits) == best else text)
        lines.append(f"| {scale:g} | " + " | ".join(cells_) + " |")
    if (FULL_RANK, None) in stats:
        mean, se, n = stats[(FULL_RANK, None)]
        lines.append(f"| full rank | {_fmt(mean, se, digits)} (n={n})" + " |" * len(inits))
    counts = sorted({n for _, _, n in stats.values()})
    lines.append("")
    if counts == [1]:
        lines.append("One run (seed) per cell, so no standard error; best per row in bold.")
    else:
        seeds = "/".join(map(str, counts))
        lines.append(
            f"Mean ± standard error over the seeds of each cell ({seeds} seeds; a cell of one run has no "
            "± part); best per row in bold."
        )
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """rows (dicts with the same keys, at least one) as CSV, written atomically (no partial file).

    Raises:
        ValueError / TypeError: no rows, a row that is not a dict or has other keys than the first;
        OSError: path cannot be written.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a non-empty path, got {path!r}")
    rows = _check_rows(rows, ())
    if not rows:
        raise ValueError("rows must hold at least one row (a dict)")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if set(row) != set(keys):
            raise ValueError(f"rows[{i}] has keys {', '.join(map(str, row))}; rows[0] has {', '.join(keys)}")
    atomic_write_csv(path, rows)


def _unfinished(root: Path) -> str:
    """One line naming the started runs without a final result (diverged, or unfinished), or saying none."""
    started = sorted(
        p.parent for p in root.glob("runs/*/metrics.jsonl") if not (p.parent / "summary.json").exists()
    )
    if not started:
        return "Every started run has finished."
    names = [f"{r.name} ({'diverged' if (r / DIVERGED).exists() else 'unfinished'})" for r in started]
    return f"Started runs without a final result (not in the tables): {', '.join(names)}."


def _paired_rows(pairs: Sequence[PairedDifference]) -> list[dict[str, Any]]:
    """paired.csv: one row per cell; seeds and differences as space-separated lists in seed order."""
    return [
        {
            "init": p.init,
            "rank_scale": p.rank_scale,
            "reference": p.reference,
            "pairs": p.pairs,
            "mean_difference": p.mean,
            "se": p.se,
            "ci_low": p.ci_low,
            "ci_high": p.ci_high,
            "level": p.level,
            "seeds": " ".join(map(str, p.seeds)),
            "differences": " ".join(f"{d:.6g}" for d in p.differences),
        }
        for p in pairs
    ]


def _draw_paired(ax: Any, pairs: Sequence[PairedDifference], title: str) -> None:
    """On the matplotlib axes ``ax``: the mean paired difference with its t-interval against rank scale
    (logarithmic), one series per init (nudged apart so the intervals do not overlap), a line at 0; with no
    pairs, a note saying so."""
    ax.set_title(title)
    if not pairs:
        ax.text(0.5, 0.5, "no pairs yet", ha="center", va="center", transform=ax.transAxes)
        return
    inits = sorted({p.init for p in pairs})
    for k, init in enumerate(inits):
        cell = [p for p in pairs if p.init == init]
        nudge = 1 + 0.04 * (k - (len(inits) - 1) / 2)  # multiplicative: the x axis is logarithmic
        xs = [p.rank_scale * nudge for p in cell]  # type: ignore[operator]
        ms = [p.mean for p in cell]
        err = [0.0 if math.isnan(p.se) else p.half_width for p in cell]
        ax.errorbar(xs, ms, yerr=err, marker="o", capsize=3, label=init, color=f"C{k}")
    ax.axhline(0, color="k", lw=1)
    ax.set_xscale("log")
    scales = sorted({p.rank_scale for p in pairs})  # type: ignore[type-var]
    ax.set_xticks(scales, [f"{x:g}" for x in scales], minor=False)
    ax.set_xticks([], minor=True)
    ax.set(xlabel="rank scale", ylabel=f"test top-1 − {pairs[0].reference} (points)")
    ax.legend(fontsize=8)


def _plot_paired(pairs: Sequence[PairedDifference], path: Path, title: str) -> None:
    """:func:`_draw_paired` alone in a figure saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    level = pairs[0].level if pairs else 0.95
    _draw_paired(ax, pairs, f"{title}: paired difference, {100 * level:g}% t-interval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(root: str | Path, reference: str | None = DEFAULT_REFERENCE) -> Path:
    """table.md, results.csv, paired.csv and three plots in ``root`` from the finished runs. Returns
    table.md's path. ``reference``: the init the paired differences are taken against; None: no pairs (a
    sweep without the default reference among its inits, as :func:`run_sweep` reports one).

    A partial sweep (still running, or interrupted) is reported as far as it got: when ``reference`` is
    one of the sweep's inits (sweep.json) but none of its runs has finished yet, the paired section says so.

    Raises:
        ValueError: no finished run under ``root``, or ``reference`` neither among the sweep's inits nor
            among the finished runs (:func:`paired_differences`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    rows = collect(root)
    if not rows:
        raise ValueError(f"no finished runs under {str(root)!r} (expected runs/*/summary.json)")
    spec = json.loads((root / "sweep.json").read_text()) if (root / "sweep.json").exists() else {}
    waiting = reference in spec.get("inits", ()) and all(r["init"] != reference for r in rows)
    # checks the reference before anything is written
    pairs = [] if waiting or reference is None else paired_differences(rows, reference)
    write_csv(root / "results.csv", rows)
    if pairs:
        write_csv(root / "paired.csv", _paired_rows(pairs))

    if reference is None:
        paired_section = [
            "## Paired differences",
            "",
            f"None: {DEFAULT_REFERENCE} is not among this sweep's inits; `nlinit report {root} --reference "
            "INIT` pairs every init with one of them.",
        ]
    else:
        paired_section = [
            f"## Paired difference to {reference}, final test top-1 (points)",
            "",
            f"No finished {reference} run yet, so no pairs." if waiting else paired_table(pairs),
        ]
    config = spec.get("config", {})
    test = config.get("test_subset") or "all"
    head = [
        f"# Sweep {root.name}",
        "",
        f"{config.get('model', '?')} on {config.get('dataset', '?')}: {config.get('epochs', '?')} epochs, "
        f"batch {config.get('batch_size', '?')}, subset {config.get('subset')}, "
        f"test images {test}, reg {config.get('reg', '?')}. "
        f"{len(rows)} finished runs, {sum(r['seconds'] for r in rows) / 3600:.2f} h of training in total.",
        "",
        "## Final test top-1 (%)",
        "",
        markdown_table(rows),
        "",
        _unfinished(root),
        "",
        *paired_section,
        "",
        "## Mean per-layer init objective R/R(0) (lower is better)",
        "",
        markdown_table([r for r in rows if r["init_objective"] is not None], "init_objective", False, 4),
        "",
        "## Network function error at init ||f_lr - f||^2 / ||f||^2 on a test batch (lower is better)",
        "",
        markdown_table([r for r in rows if r["function_error"] is not None], "function_error", False, 4),
        "",
    ]
    atomic_write_text(root / "table.md", "\n".join(head))
    if pairs:
        _plot_paired(pairs, root / "paired_difference_vs_rank.png", root.name)
    stats = summarize(rows)
    inits = sorted({i for i, _ in stats if i != FULL_RANK})
    fig, ax = plt.subplots(figsize=(6, 4))
    for init in inits:
        pts = sorted((s, m, se) for (i, s), (m, se, _) in stats.items() if i == init)
        xs, ms, ses = zip(*pts, strict=True)
        ax.errorbar(xs, ms, yerr=[0 if math.isnan(e) else e for e in ses], marker="o", capsize=3, label=init)
    if (FULL_RANK, None) in stats:
        ax.axhline(stats[(FULL_RANK, None)][0], color="k", ls="--", lw=1, label="full rank")
    ax.set(xlabel="rank scale", ylabel="test top-1 (%)", title=f"{root.name}: accuracy vs rank (mean ± s.e.)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(root / "accuracy_vs_rank.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    scales = sorted({r["rank_scale"] for r in rows if r["rank_scale"] is not None})
    markers = dict(zip(scales, "osD^v<>", strict=False))
    for k, init in enumerate(inits):
        for r in rows:
            if r["init"] == init and r["init_objective"] is not None:
                ax.scatter(
                    r["init_objective"], r["final_test_top1"], color=f"C{k}", marker=markers[r["rank_scale"]]
                )
        ax.scatter([], [], color=f"C{k}", label=init)
    for scale, m in markers.items():
        ax.scatter([], [], color="gray", marker=m, label=f"rank scale {scale:g}")
    ax.set(
        xlabel="mean per-layer init objective R/R(0)",
        ylabel="final test top-1 (%)",
        title="init error vs accuracy (one point per run)",
    )
    if ax.get_legend_handles_labels()[0]:  # a full-rank-only sweep has nothing to label
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "init_error_vs_accuracy.png", dpi=120)
    plt.close(fig)
    return root / "table.md"
