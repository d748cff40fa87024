"""What factorize() did, per layer: a dataclass that prints as markdown and saves as JSON or CSV."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._checks import check_choice
from ._paths import atomic_write_csv, atomic_write_text, check_output

__all__ = ["FactorizeReport", "LayerReport", "markdown_table"]

#: the ``which`` of :meth:`FactorizeReport.mean_objective`
MEAN_OBJECTIVES = ("init", "spectral", "heldout_spectral", "heldout_whiten", "heldout_init")
#: the suffixes :meth:`FactorizeReport.save` writes
SAVE_SUFFIXES = (".json", ".csv", ".md")


def markdown_table(head: list[str], rows: list[list[str]], footer: str = "") -> str:
    """A markdown table (a header row, the rule, one line per row; a ``|`` in a cell escaped as ``\\|``),
    then ``footer`` after a blank line.

    Raises:
        TypeError / ValueError: ``head`` not a non-empty list of strings, a row not a list of ``len(head)``
            strings, or ``footer`` not a string.
    """
    if not isinstance(head, (list, tuple)) or not head or not all(isinstance(h, str) for h in head):
        raise TypeError(f"head must be a non-empty list of strings, got {head!r:.80}")
    if not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be a list of rows (lists of strings), got {type(rows).__name__}")
    for i, cells in enumerate(rows):
        if not isinstance(cells, (list, tuple)) or len(cells) != len(head):
            raise ValueError(
                f"rows[{i}] must be a list of {len(head)} strings (one per column), got {cells!r:.80}"
            )
        bad = next((c for c in cells if not isinstance(c, str)), None)
        if bad is not None:
            raise TypeError(f"rows[{i}] must hold strings, got {type(bad).__name__} {bad!r:.40}")
        if any("\n" in c or "\r" in c for c in cells):
            raise ValueError(f"rows[{i}] has a line break in a cell; a table row is one line")
    if not isinstance(footer, str):
        raise TypeError(f"footer must be a string, got {type(footer).__name__}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return "\n".join(lines) + ("\n\n" + footer + "\n" if footer else "\n")


@dataclass
class LayerReport:
    """One Linear / Conv2d layer: factorized (rank and objectives set) or skipped (reason set).

    objective_spectral / objective_init are relative NLRA objectives R(Y) / R(0) under the layer's
    activation (``objective_method``: "exact" closed form or "mc" Monte Carlo) on the layer's function view;
    for a layer whose post-op normalizes it (BatchNorm in training mode) they are the scale-free objective
    (objective_method "exact, normalized"). post_op says what lies between the layer and its activation
    (e.g. "BatchNorm2d bn1 (train: normalized)"), with "bias" first when the layer has one.
    With ``factorize(..., calibration=...)``: heldout_spectral / heldout_whiten / heldout_init are the
    layer's objective on held-out calibration inputs (with its bias and eval-mode BatchNorm; each init's
    own bias), relative to the all-zero approximant, for spectral (the weights-only SVD), whiten (the linear
    data-aware optimum) and the chosen init; None for normalized (training-mode BatchNorm) layers.
    With ``factorize(..., certify=True)``: objective_lower_bound is a certified L / R(0) with L <= R(Y) for
    every rank-r Y, and certified_gap = (R(Y_init) - L) / R(0) >= how far the init is from the rank-r
    optimum, in units of R(0) (:func:`nlinit.bounds.certify`; leaky-ReLU family and "channel" layout only,
    otherwise None).
    """

    name: str
    kind: str  # "linear" | "conv"
    shape: tuple[int, int]  # matrix view (rows, cols)
    status: str  # "factorized" | "skipped"
    params_before: int
    params_after: int
    activation: str = ""
    activation_note: str = ""
    post_op: str = ""
    rank: int | None = None
    init: str = ""
    objective_spectral: float | None = None
    objective_init: float | None = None
    objective_method: str = ""
    objective_lower_bound: float | None = None
    certified_gap: float | None = None
    heldout_spectral: float | None = None
    heldout_whiten: float | None = None
    heldout_init: float | None = None
    seconds: float = 0.0
    reason: str = ""

    @property
    def factorized(self) -> bool:
        return self.status == "factorized"


@dataclass
class FactorizeReport:
    """All layers in execution order, the settings used, and totals."""

    layers: list[LayerReport] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_stats: float = 0.0  # of ``seconds``: collecting calibration statistics (0 without calibration)

    @property
    def factorized(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.factorized]

    @property
    def skipped(self) -> list[LayerReport]:
        return [layer for layer in self.layers if not layer.factorized]

    @property
    def params_before(self) -> int:
        return sum(layer.params_before for layer in self.layers)

    @property
    def params_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    def mean_objective(self, which: str = "init") -> float:
        """Mean per-layer relative objective over factorized layers (``which``: "init", "spectral", or
        "heldout_spectral" / "heldout_whiten" / "heldout_init"); NaN if no factorized layer has it."""
        check_choice("which", which, MEAN_OBJECTIVES, what="objective")
        attr = which if which.startswith("heldout_") else f"objective_{which}"
        values = [getattr(layer, attr) for layer in self.factorized]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> str:
        n, b, a = len(self.factorized), self.params_before, self.params_after
        return (
            f"factorized {n} of {len(self.layers)} layers with init={self.config.get('init')!r}: "
            f"layer params {b:,} -> {a:,} ({a / max(b, 1):.1%}); mean relative objective "
            f"spectral {self.mean_objective('spectral'):.4f}, init {self.mean_objective('init'):.4f}; "
            + (
                f"held-out spectral {self.mean_objective('heldout_spectral'):.4f}, "
                f"whiten {self.mean_objective('heldout_whiten'):.4f}, "
                f"init {self.mean_objective('heldout_init'):.4f}; "
                if any(x.heldout_init is not None for x in self.layers)
                else ""
            )
            + f"{self.seconds:.1f} s"
            + (f" ({self.seconds_stats:.1f} s statistics)" if self.seconds_stats else "")
        )

    def to_markdown(self) -> str:
        """A table, one row per layer, then the summary line. Reports made with ``certify=True`` get a
        column "gap to optimal": the certified (R(init) - L) / R(0); reports made with calibration data three
        "held-out" columns (spectral, whiten, init)."""

        def fmt(x: float | None, spec: str = ".4f") -> str:
            return "" if x is None else f"{x:{spec}}"

        extra: list[tuple[str, Any]] = []
        if any(layer.certified_gap is not None for layer in self.layers):
            extra.append(("gap to optimal", lambda x: fmt(x.certified_gap, ".2e")))
        if any(layer.heldout_init is not None for layer in self.layers):
            for which in ("spectral", "whiten", "init"):
                extra.append((f"held-out {which}", lambda x, w=which: fmt(getattr(x, f"heldout_{w}"))))
        names = ["layer", "matrix", "rank", "params before", "params after", "activation"]
        names += ["R/R0 spectral", "R/R0 init", *(name for name, _ in extra), "seconds", "note"]
        rows = [
            [
                layer.name,
                f"{layer.shape[0]}x{layer.shape[1]}",
                str(layer.rank or ""),
                f"{layer.params_before:,}",
                f"{layer.params_after:,}",
                layer.activation,
                fmt(layer.objective_spectral),
                fmt(layer.objective_init),
                *(cell(layer) for _, cell in extra),
                f"{layer.seconds:.3f}",
                "; ".join(x for x in (layer.reason or layer.activation_note, layer.post_op) if x),
            ]
            for layer in self.layers
        ]
        return markdown_table(names, rows, self.summary())

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "seconds": self.seconds,
            "seconds_stats": self.seconds_stats,
            "layers": [asdict(x) for x in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorizeReport:
        layers = [LayerReport(**{**x, "shape": tuple(x["shape"])}) for x in data["layers"]]
        return cls(
            layers=layers,
            config=data.get("config", {}),
            seconds=data.get("seconds", 0.0),
            seconds_stats=data.get("seconds_stats", 0.0),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON (``.json``), CSV (``.csv``) or markdown (``.md``) to ``path``, atomically (a
        temporary file moved into place: an error leaves no partial file).

        Raises:
            ValueError: another suffix. IsADirectoryError / NotADirectoryError / PermissionError: ``path`` is
                a directory, lies under a file, or is not writable (before anything is created).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = Path(path)
        if path.suffix not in SAVE_SUFFIXES:
            raise ValueError(f"path must end in {', '.join(SAVE_SUFFIXES)}, got {str(path)!r}")
        check_output(path, name="path", kind="file")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        if path.suffix == ".csv":
            return atomic_write_csv(path, [asdict(x) for x in self.layers])
        return atomic_write_text(path, self.to_markdown())  # .md
