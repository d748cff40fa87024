"""Results of a compression grid (method x allocation x budget): the CSV, the markdown table and the plot.

Shared by :mod:`nlinit.experiments.compress_minilm` and :mod:`nlinit.experiments.compress_cnn`. Rows are
dicts with at least ``method``, ``allocate``, ``budget``, ``params_kept`` and the metrics; the uncompressed
model is the row with ``method == "original"``. Everything is written atomically, and a grid's files are
changed only under its lock (:data:`LOCK`), so several processes can fill one grid at once
(``--shard i/n``: :func:`run_grid`, :func:`merge_rows`).
"""

from __future__ import annotations

import csv
import inspect
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .._checks import check_int, check_module, check_shard  # noqa: E402
from .._paths import atomic_write, atomic_write_csv, exclusive  # noqa: E402
from ..calibration import LayerStats, collect_stats  # noqa: E402
from ..compress import compress  # noqa: E402
from . import machine  # noqa: E402

#: the columns every grid's results.csv starts with (the configuration and its size), and ends with
CONFIG_FIELDS = ["method", "allocate", "budget", "params_kept", "layer_params_after", "layer_params_before"]
SECONDS_FIELDS = ["seconds_statistics", "seconds_allocation", "seconds_solve"]
#: the last column: the machine a row was computed on (:func:`nlinit.experiments.machine.short`); a grid
#: filled over several sittings may mix machines, and float results depend on the CPU's kernels
MACHINE_FIELD = "machine"
#: the lock file in a grid's directory: commands.txt and results.csv (and what is drawn from it) are read,
#: changed and written under it (:func:`nlinit._paths.exclusive`)
LOCK = ".grid.lock"
#: the --shard option's help, the same in every grid's command line
SHARD_HELP = "i/n: run only every n-th configuration from the i-th, so that n processes fill one grid at once"

__all__ = [
    "CONFIG_FIELDS",
    "LOCK",
    "MACHINE_FIELD",
    "SECONDS_FIELDS",
    "SHARD_HELP",
    "check_budgets",
    "commands",
    "grid_stats",
    "merge_rows",
    "plot",
    "read_rows",
    "run_grid",
    "table",
    "write_rows",
]


def check_budgets(budgets: Sequence[float]) -> list[float]:
    """Every budget a finite fraction in (0, 1) (what :func:`nlinit.compress.compress` accepts), at least
    one, none twice: checked before a grid loads its model or data."""
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or not budgets:
        raise ValueError(f"--budgets must be one or more fractions in (0, 1), got {budgets!r}")
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < 1 or not math.isfinite(b):
            raise ValueError(f"budget must be a fraction in (0, 1) of the layers' parameters kept, got {b!r}")
    repeated = next((b for i, b in enumerate(budgets) if b in budgets[:i]), None)
    if repeated is not None:
        raise ValueError(f"--budgets has {repeated!r} more than once: {list(budgets)!r}")
    return list(budgets)


def commands(out: Path, command: str) -> str:
    """Every command that wrote rows into the grid ``out``, in order, ``command`` (this run's) last, as
    markdown: a grid filled by several runs (say, a fine-tuned subset, then the rest training-free) shows
    all of them. Kept in ``out/commands.txt`` (one per line, written atomically; a repeated command once).

    Raises:
        ValueError: ``command`` not a non-empty one-line string (it would break the one-per-line file);
            ``out`` not a directory. Nothing is written.
    """
    if not isinstance(command, str) or not command.strip() or "\n" in command or "\r" in command:
        raise ValueError(f"command must be a non-empty one-line string, got {command!r:.80}")
    if not Path(out).is_dir():
        raise ValueError(f"out must be an existing directory, got {str(out)!r}")
    path = Path(out) / "commands.txt"
    with exclusive(Path(out) / LOCK):  # shards of one grid start at once
        seen = path.read_text().splitlines() if path.is_file() else []
        if command not in seen:
            seen.append(command)
            atomic_write(path, lambda tmp: tmp.write_text("\n".join(seen) + "\n"))
    if len(seen) == 1:
        return f"Command: `{seen[0]}`"
    return "Commands (in order): " + "; ".join(f"`{c}`" for c in seen)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv, or [] when there is none yet (a fresh grid)."""
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    atomic_write_csv(path, rows, fields)


def _key(row: dict[str, Any]) -> tuple[str, str, float]:
    """A row's cell: (method, allocate, budget); the uncompressed model's is ("original", "", 1.0)."""
    missing = [k for k in ("method", "allocate", "budget") if k not in row]
    if missing:
        raise ValueError(
            f"a grid row needs method, allocate and budget, got one without {missing[0]}: {row!r:.80}"
        )
    return row["method"], row["allocate"], float(row["budget"])


def merge_rows(
    path: Path,
    new: Sequence[dict[str, Any]],
    fields: Sequence[str],
    render: Callable[[list[dict[str, Any]]], None] | None = None,
    *,
    keep: bool = False,
) -> list[dict[str, Any]]:
    """Merge ``new`` rows into the grid's results.csv ``path`` and return all its rows.

    Under the grid's lock (:data:`LOCK` beside ``path``): the file is read again, each new row replaces the
    row of its cell (method, allocate, budget) where it stands, or is appended; with ``keep``, a cell that
    has a row keeps it (the uncompressed model's row, computed once). The rows are written atomically and
    passed to ``render`` (the table and plots) before the lock is released, so processes filling one grid
    at once never drop each other's rows and the table always shows the CSV. ``new`` empty: re-render.

    Raises:
        ValueError: a new row without method, allocate or budget (before anything is written).
    """
    for row in new:
        _key(row)  # every new row checked before the file is touched
    with exclusive(path.parent / LOCK):
        rows: list[dict[str, Any]] = list(read_rows(path))
        at = {_key(r): i for i, r in enumerate(rows)}
        for row in new:
            i = at.get(_key(row))
            if i is None:
                at[_key(row)] = len(rows)
                rows.append(row)
            elif not keep:
                rows[i] = row
        if new:
            write_rows(path, rows, fields)
        if render is not None:
            render(rows)
    return rows


def grid_stats(model: nn.Module, calibration: Any, seed: int) -> dict[str, LayerStats]:
    """The calibration statistics of every Linear / Conv2d of ``model``, collected once for a whole grid:
    what :func:`nlinit.compress.compress` with ``seed`` and its default reservoir sizes would collect for its
    layers (``compress(..., stats=)``: the same result, without one statistics pass per configuration).

    Raises:
        TypeError: ``model`` not an nn.Module. ValueError: ``seed`` not an int >= 0, a model with no Linear
            or Conv2d, bad calibration data (:func:`nlinit.calibration.collect_stats`'s errors).
    """
    check_module("model", model)
    check_int("seed", seed, low=0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not layers:
        raise ValueError(
            f"model has no Linear or Conv2d layer to collect statistics for ({type(model).__name__})"
        )
    sizes = inspect.signature(compress).parameters
    was_training = model.training
    model.eval()  # as compress collects them
    try:
        return collect_stats(
            model,
            layers,
            calibration,
            samples=sizes["calibration_samples"].default,
            heldout=sizes["calibration_heldout"].default,
            generator=torch.Generator().manual_seed(seed),
        )
    finally:
        model.train(was_training)


def run_grid(
    rows: list[dict[str, Any]],
    budgets: Sequence[float],
    methods: Sequence[str],
    allocations: Sequence[str],
    run: Callable[[float, str, str], dict[str, Any]],
    save: Callable[[dict[str, Any]], object],
    suffix: str = "",
    require: str | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[dict[str, Any]]:
    """Every budget x method x allocation (budgets outermost) not yet in ``rows``: ``run(budget, method,
    allocate)`` gives its row, which is put in ``rows``, printed and saved (``save(row)``, e.g.
    :func:`merge_rows` into results.csv) before the next; a rerun after an interruption skips what is done.
    ``suffix`` is appended to the method in the rows (e.g. ``"+sequential"``: a variant that sits beside the
    plain method in one results.csv). ``require``: a column a done row must have a value in (e.g.
    ``"top1_finetuned"`` for a fine-tuning run); a row without one is run again and replaced where it stands
    (its other columns recomputed). ``shard=(i, n)``: only the cells i, i + n, i + 2n, ... of that order
    (n processes fill one grid, each with its own i). Each new row records the machine it was computed on
    (column :data:`MACHINE_FIELD`). Returns ``rows``.

    Raises:
        ValueError: a bad ``shard`` (before anything runs).
    """
    index, count = check_shard(shard)
    cells = [(b, m, a) for b in budgets for m in methods for a in allocations]
    for budget, method, allocate in cells[index::count]:
        key = (method + suffix, allocate, float(budget))
        at = next((i for i, r in enumerate(rows) if _key(r) == key), None)
        if at is not None and (require is None or rows[at].get(require) not in (None, "")):
            continue
        row = {"method": method + suffix, "allocate": allocate, "budget": budget}
        row |= run(budget, method, allocate) | {MACHINE_FIELD: machine.short()}
        if at is None:
            rows.append(row)
        else:
            rows[at] = row
        print(row, flush=True)
        save(row)
    return rows


def table(rows: Sequence[dict[str, Any]], header: str, metrics: Sequence[str]) -> str:
    """Markdown: the header, the uncompressed model's metrics, then per metric one table of method x
    allocation rows and budget columns. A metric named ``<name>_finetuned`` is titled fine-tuned (measured
    after the recovery fine-tune), any other training-free; a cell without a value stays empty."""
    budgets = sorted({str(r["budget"]) for r in rows if r["method"] != "original"}, key=float)
    base = next((r for r in rows if r["method"] == "original"), None)
    lines = [header, ""]
    if base is not None:
        known = [m for m in metrics if _value(base, m) is not None]
        lines.append("Uncompressed: " + ", ".join(f"{m} {_value(base, m):.4f}" for m in known) + ".\n")
    keys = sorted({(r["method"], r["allocate"]) for r in rows if r["method"] != "original"})
    for metric in metrics:
        kind = "fine-tuned" if metric.endswith("_finetuned") else "training-free"
        lines += [
            f"### {metric} ({kind}) vs budget (fraction of the compressed layers' parameters kept)",
            "",
        ]
        lines += [
            "| method | allocation | " + " | ".join(budgets) + " |",
            "|---|---|" + "---|" * len(budgets),
        ]
        for method, allocate in keys:
            cells = []
            for b in budgets:
                key = (method, allocate, b)
                hit = [
                    _value(r, metric) for r in rows if (r["method"], r["allocate"], str(r["budget"])) == key
                ]
                cells.append(f"{hit[0]:.4f}" if hit and hit[0] is not None else "")
            lines.append(f"| {method} | {allocate} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _value(row: dict[str, Any], metric: str) -> float | None:
    """``row[metric]`` as a float; None when it is missing or empty (a CSV's blank cell)."""
    value = row.get(metric)
    return None if value is None or value == "" else float(value)


#: line style and marker of each allocation in :func:`plot` (colour: the method)
ALLOCATION_STYLES = {
    "energy": ("-", "o"),
    "sensitivity": ("--", "s"),
    "uniform": (":", "v"),
    "stable-rank": ("-.", "^"),
}


def plot(
    rows: Sequence[dict[str, Any]],
    path: Path,
    metric: str,
    ylabel: str,
    title: str,
    reference: str | None = None,
) -> None:
    """``metric`` vs the fraction of the whole model's parameters kept, one line per method x allocation
    over the rows that have a value of it (colour: the method; line style and marker: the allocation,
    :data:`ALLOCATION_STYLES`), the uncompressed model's ``reference`` (default ``metric``; e.g. its top-1
    for a fine-tuned metric) dashed black; the legend beside the axes, in as many columns of at most 20
    entries as it needs (the figure widened to keep them)."""
    curves = [r for r in rows if r["method"] != "original" and r.get(metric) not in (None, "")]
    keys = sorted({(r["method"], r["allocate"]) for r in curves})
    columns = 1 + len(keys) // 20  # the uncompressed line is one entry more
    fig, ax = plt.subplots(figsize=(9 + 2.6 * (columns - 1), 4.8))
    base = next((r for r in rows if r["method"] == "original"), None)
    if base is not None:
        ax.axhline(float(base[reference or metric]), color="k", ls="--", lw=1, label="uncompressed")
    methods = list(dict.fromkeys(m for m, _ in keys))
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    for method, allocate in keys:
        pts = sorted(
            (float(r["params_kept"]), float(r[metric]))
            for r in curves
            if (r["method"], r["allocate"]) == (method, allocate)
        )
        line, marker = ALLOCATION_STYLES.get(allocate, ("-", "x"))
        ax.plot(
            *zip(*pts, strict=True),
            line,
            marker=marker,
            markersize=4,
            color=colours(methods.index(method)),
            label=f"{method} / {allocate}",
        )
    ax.set(xlabel="fraction of the model's parameters kept", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
