"""What factorize() did, per layer: a dataclass that prints as markdown and saves as JSON or CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FactorizeReport", "LayerReport"]


@dataclass
class LayerReport:
    """One Linear / Conv2d layer: factorized (rank and objectives set) or skipped (reason set).

    objective_spectral / objective_init are relative NLRA objectives R(Y) / R(0) under the layer's
    activation (``objective_method``: "exact" closed form or "mc" Monte Carlo) on the layer's function view;
    for a layer whose post-op normalizes it (BatchNorm in training mode) they are the scale-free objective
    (objective_method "exact, normalized"). post_op says what lies between the layer and its activation
    (e.g. "BatchNorm2d bn1 (train: normalized)"), with "bias" first when the layer has one.
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
        """Mean per-layer relative objective over factorized layers (``which``: "init" or "spectral")."""
        values = [getattr(layer, f"objective_{which}") for layer in self.factorized]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> str:
        n, b, a = len(self.factorized), self.params_before, self.params_after
        return (
            f"factorized {n} of {len(self.layers)} layers with init={self.config.get('init')!r}: "
            f"layer params {b:,} -> {a:,} ({a / max(b, 1):.1%}); mean relative objective "
            f"spectral {self.mean_objective('spectral'):.4f}, init {self.mean_objective('init'):.4f}; "
            f"{self.seconds:.1f} s"
        )

    def to_markdown(self) -> str:
        """A table, one row per layer, then the summary line. Reports made with ``certify=True`` get a
        column "gap to optimal": the certified (R(init) - L) / R(0)."""
        certified = any(layer.certified_gap is not None for layer in self.layers)
        head = (
            "| layer | matrix | rank | params before | params after | activation | "
            "R/R0 spectral | R/R0 init | " + ("gap to optimal | " if certified else "") + "seconds | note |"
        )
        rows = [head, "|" + "---|" * (11 if certified else 10)]
        for layer in self.layers:

            def fmt(x: float | None, spec: str = ".4f") -> str:
                return "" if x is None else f"{x:{spec}}"

            gap = f"{fmt(layer.certified_gap, '.2e')} | " if certified else ""
            rows.append(
                f"| {layer.name} | {layer.shape[0]}x{layer.shape[1]} | {layer.rank or ''} | "
                f"{layer.params_before:,} | {layer.params_after:,} | {layer.activation} | "
                f"{fmt(layer.objective_spectral)} | {fmt(layer.objective_init)} | {gap}{layer.seconds:.3f} | "
                f"{'; '.join(x for x in (layer.reason or layer.activation_note, layer.post_op) if x)} |"
            )
        return "\n".join(rows) + "\n\n" + self.summary() + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "seconds": self.seconds, "layers": [asdict(x) for x in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorizeReport:
        layers = [LayerReport(**{**x, "shape": tuple(x["shape"])}) for x in data["layers"]]
        return cls(layers=layers, config=data.get("config", {}), seconds=data.get("seconds", 0.0))

    def save(self, path: str | Path) -> Path:
        """Write JSON (``.json``), CSV (``.csv``) or markdown (anything else) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        elif path.suffix == ".csv":
            with path.open("w", newline="") as f:
                rows = [asdict(x) for x in self.layers]
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["name"])
                writer.writeheader()
                writer.writerows(rows)
        else:
            path.write_text(self.to_markdown())
        return path
