r"""The files of ``nlinit gap``: CSV per section, Markdown tables, and report.md.

Every number in report.md is a cell of a table built here from the rows. The text around the tables is
fixed: it says what each column means and what the theory predicts (docs/theory.md section 6), and it only
cites numbers from those tables, so it cannot change its claims with the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..._paths import atomic_write_csv, atomic_write_text
from .rows import EXACT, SAMPLED, CorollaryRow, Fig32Row, GapResults, ObjectiveRow, RemarkRow

__all__ = [
    "corollary_section",
    "fig32_section",
    "markdown_table",
    "objective_section",
    "remark_section",
    "report_markdown",
    "write_csv",
    "write_text",
]

#: tolerances of the checks that theorems say must hold: float64 rounding of per-unit values ~1e-2
THEOREM_TOL = 1e-9
#: two objectives closer than this (in units of R(0)) count as equal in the paired comparisons
EQUAL_TOL = 1e-9

# Fixed text. Each paragraph says what a table means and what the theory predicts; placeholders take the
# run's configuration and numbers that also appear in a table, never a claim that depends on the data.

FIG32_TEXT = """
The paper describes the quantity as rising with n and as the rank falls; the first table counts the rank
scales and the values of n at which this grid agrees. Why it grows with n (docs/theory.md G.4): for unit
rows the sum over the m units is about m L(rho)/pi^2 with rho near sqrt(r/d), so dividing by d leaves a
factor m/d = 5 sqrt(n). The second table compares the growth at the smallest rank scale with that factor's
ratio; they differ because rho moves towards sqrt(r/d) as m/d grows and r = max(1, round(s d)) is rounded.
"""

COROLLARY_CHECKS_TEXT = """
Rows 2 to 5 are proven for every W (Theorem 3.3.9 once R({best}) <= R(relu-svd), Theorem G.2, the top-r
singular values' share of the energy, and L <= min R; docs/theory.md G.1, G.2 and section 7), so they must
hold in every instance up to float64 rounding. Row 1 compares with the corollary's value, which is a limit
as m/d -> infinity: at finite m the SVD subspace captures more than r/d of the energy (column 'captured
energy'; by Marchenko-Pastur the excess is of order sqrt(d/m) and does not shrink with d at fixed m/d), so
rho is larger and the gap smaller than in the limit, and a negative margin contradicts nothing.
"""

COROLLARY_GROUPS_TEXT = """
Every instance with a negative margin is solved again with {best} and options {recheck} (more random starts,
tighter tolerance; None: no re-solve configured for this init): the fourth column counts those whose margin
stays negative. The fifth counts those whose certified max gap, R(spectral) minus
nlinit.bounds.nlra_lower_bound (an upper bound on the true gap), is below the limit value: there no rank-r
solution reaches it. The true gap R(spectral) - R(opt) lies between the measured gap and the certified max
gap; the last rows below give the width of that interval.
"""

REMARK_ANCHOR_TEXT = """
sqrt({s0:g}) = {sqrt_s0:.3f}. The paper's anchors, at rank scale 0.1, are about 0.55 at m/d = 1 and
sqrt(0.1) = 0.32 for large m/d. A bound of this form is the square root of a bound on the expected mean of
rho^2, so it is at least the expected root mean square of rho (docs/theory.md G.3): 0.55 can be a valid
bound at d = {d} only if it is at least the measured root mean square at m/d = 1 in the table above.
"""

REMARK_FAILURES_TEXT = """
In those cells the "net" union term d r log(d/r) is smaller than the r (d - r) log(1/eps) that an eps-net of
the Grassmannian needs (for r -> d, d log(d/r) -> d - r), so that reading is a heuristic, not a theorem.
The "per-unit" reading (the printed r log(d/r) divided by m) is a union over only about (d/r)^r subspaces,
too few to cover the SVD subspace. Both readings tend to sqrt(rank scale) as m/d grows.
"""

OBJECTIVE_TEXT = """
Paired differences are over the same W draws; 'equal' means within {tol!r} of R(0). The paper's sampled
lfai-ws keeps its spectral start unless its improvement holds on held-out samples (its keep-best rule,
docs/theory.md section 5), so its 'equal' count against spectral is the number of draws where it returned
the start unchanged. Standard errors are over independent draws of W; the inits' own randomness is seeded.
"""


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    return ";".join(repr(x) for x in v) if isinstance(v, list) else v


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary name, then move it into place (no partial file)."""
    return atomic_write_text(path, text)


def write_csv(rows: Sequence[Any], path: Path) -> Path:
    """One dataclass row per line, floats in full precision, lists joined by ";"; header from the fields.

    Written to a temporary name and moved into place.
    """
    names = [f.name for f in fields(rows[0])]
    atomic_write_csv(path, [{k: _cell(v) for k, v in asdict(row).items()} for row in rows], names)
    return path


def _paragraph(text: str, **numbers: object) -> str:
    """A fixed paragraph (one of the module constants above) with its placeholders filled, on one line."""
    return " ".join(text.split()).format(**numbers) + "\n"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ Fig 3.2


def fig32_section(rows: Sequence[Fig32Row]) -> str:
    """Two tables (the paper's description checked per rank scale and per n; range and growth in n) and the
    fixed text that reads them."""
    ns = sorted({r.n for r in rows})
    scales = sorted({r.rank_scale for r in rows})
    value = {(r.n, r.rank_scale): r.value for r in rows}
    up_n = sum(all(value[(a, s)] < value[(b, s)] for a, b in zip(ns, ns[1:])) for s in scales)
    down_r = sum(all(value[(n, a)] >= value[(n, b)] for a, b in zip(scales, scales[1:])) for n in ns)
    n0, n1, s0 = ns[0], ns[-1], scales[0]
    growth = value[(n1, s0)] / value[(n0, s0)]
    checks = markdown_table(
        ["check", "holds at", "of"],
        [
            ("rises strictly with n (rank scales)", up_n, len(scales)),
            ("does not increase with the rank scale (values of n)", down_r, len(ns)),
        ],
    )
    numbers = markdown_table(
        ["quantity", "value"],
        [
            ("smallest value on the grid", f"{min(value.values()):.3g}"),
            ("largest value on the grid", f"{max(value.values()):.3g}"),
            (f"growth from n = {n0} to n = {n1} at rank scale {s0:g}", f"{growth:.2f}x"),
            (f"sqrt({n1} / {n0})", f"{math.sqrt(n1 / n0):.2f}x"),
        ],
    )
    return f"{checks}\n{numbers}\n" + _paragraph(FIG32_TEXT)


# ---------------------------------------------------------------------------------------- Corollary 3.3.11


def corollary_table(rows: Sequence[CorollaryRow], best: str) -> str:
    """One line per instance, with the re-solved and certified columns when any row has them."""
    extra = [
        (title, attr)
        for title, attr in (("gap, re-solved", "gap_recheck"), ("certified max gap", "certified_gap_max"))
        if any(getattr(r, attr) is not None for r in rows)
    ]
    head = [
        "d",
        "m",
        "r",
        "r/d",
        "captured energy",
        f"gap R(spectral)-R({best})",
        "Thm 3.3.9",
        "finite form",
        "L(sqrt(r/d))/(2pi^2)",
        "margin",
        "margin over Thm 3.3.9",
        *(t for t, _ in extra),
    ]
    lines = []
    for r in rows:
        line = [
            r.d,
            r.m,
            r.rank,
            f"{r.r_over_d:.3f}",
            f"{r.energy_captured:.4f}",
            f"{r.gap:.6f}",
            f"{r.theorem_339:.6f}",
            f"{r.energy_form:.6f}",
            f"{r.corollary:.6f}",
            f"{r.margin:+.6f}",
            f"{r.margin_theorem:+.2e}",
        ]
        line += ["" if getattr(r, a) is None else f"{getattr(r, a):.6f}" for _, a in extra]
        lines.append(line)
    return markdown_table(head, lines)


def corollary_section(rows: Sequence[CorollaryRow], best: str, recheck: dict[str, Any] | None) -> str:
    """The instance table, the checks (four of them theorems), the negative margins per (d, m/d), the
    extreme values, and the fixed text that reads them."""
    neg = [r for r in rows if r.margin < 0]
    certified = [r for r in rows if r.certified_gap_max is not None]
    rechecked = [r for r in neg if r.gap_recheck is not None]
    captured = sum(r.energy_captured >= r.r_over_d - 1e-12 for r in rows)
    checks = markdown_table(
        ["", "check", "holds in", "of"],
        [
            ("1", "gap >= L(sqrt(r/d))/(2 pi^2) (margin >= 0)", len(rows) - len(neg), len(rows)),
            (
                "2",
                f"Thm 3.3.9 <= gap ({best} no worse than relu-svd), up to {THEOREM_TOL:g}",
                sum(r.margin_theorem >= -THEOREM_TOL * max(1.0, abs(r.theorem_339)) for r in rows),
                len(rows),
            ),
            (
                "3",
                "finite form <= Thm 3.3.9 (Theorem G.2)",
                sum(r.energy_form <= r.theorem_339 + 1e-12 for r in rows),
                len(rows),
            ),
            ("4", "captured energy >= r/d", captured, len(rows)),
            (
                "5",
                "certified max gap >= gap",
                sum(r.certified_gap_max >= r.gap - 1e-12 for r in certified),  # type: ignore[operator]
                len(certified),
            ),
        ],
    )
    groups = sorted({(r.d, r.m // r.d) for r in rows})
    per_group = markdown_table(
        ["d", "m/d", "margin < 0", "re-solved, still < 0", "certified max gap < limit", "instances"],
        [
            (
                d,
                k,
                sum(r.d == d and r.m == k * d for r in neg),
                sum(
                    r.d == d and r.m == k * d and r.gap_recheck < r.corollary  # type: ignore[operator]
                    for r in rechecked
                ),
                sum(
                    r.d == d and r.m == k * d and r.certified_gap_max < r.corollary  # type: ignore[operator]
                    for r in neg
                    if r.certified_gap_max is not None
                ),
                sum(r.d == d and r.m == k * d for r in rows),
            )
            for d, k in groups
        ],
    )
    lo = min(rows, key=lambda r: r.margin)
    hi = max(rows, key=lambda r: r.margin)
    width = np.array([r.certified_gap_max - r.gap for r in certified])  # type: ignore[operator]
    change = [r.gap_recheck - r.gap for r in rechecked]  # type: ignore[operator]
    numbers = markdown_table(
        ["quantity (per unit)", "value", "at (d, m, r)"],
        [
            ("smallest margin", f"{lo.margin:+.2e}", f"({lo.d}, {lo.m}, {lo.rank})"),
            ("largest margin", f"{hi.margin:+.2e}", f"({hi.d}, {hi.m}, {hi.rank})"),
            (f"largest gain of {best} over relu-svd", f"{max(r.margin_theorem for r in rows):.2e}", ""),
            ("largest change of the gap by the re-solve", f"{max(change):.2e}" if change else "-", ""),
            ("median width, certified max gap - gap", f"{np.median(width):.2e}" if width.size else "-", ""),
            ("largest width, certified max gap - gap", f"{width.max():.2e}" if width.size else "-", ""),
        ],
    )
    return (
        f"{corollary_table(rows, best)}\n{checks}\n"
        + _paragraph(COROLLARY_CHECKS_TEXT, best=best)
        + f"\n{per_group}\n"
        + _paragraph(COROLLARY_GROUPS_TEXT, best=best, recheck=recheck)
        + f"\n{numbers}"
    )


# ------------------------------------------------------------------------------------------ Remark 3.3.12


def remark_section(rows: Sequence[RemarkRow]) -> str:
    """The anchors (smallest rank scale, smallest and largest m/d), the checks, the cells where the "net"
    bound is below the measured mean rho, and the fixed text that reads them."""
    ratios = sorted({r.m_over_d for r in rows})
    scales = sorted({r.rank_scale for r in rows})
    cell = {(r.m_over_d, r.rank_scale): r for r in rows}
    s0, d = scales[0], rows[0].d
    anchors = markdown_table(
        ["m/d", "rank scale", '"net" bound', '"per-unit" reading', "measured mean rho", "measured rms rho"],
        [
            (
                k,
                f"{s0:g}",
                f"{cell[(k, s0)].bound:.3f}",
                f"{cell[(k, s0)].bound_per_unit_reading:.3f}",
                f"{cell[(k, s0)].measured_mean_rho:.3f}",
                f"{cell[(k, s0)].measured_rms_rho:.3f}",
            )
            for k in dict.fromkeys((ratios[0], ratios[-1]))
        ],
    )
    below = [r for r in rows if r.bound < r.measured_mean_rho]
    monotone = sum(
        all(cell[(a, s)].bound >= cell[(b, s)].bound - 1e-12 for a, b in zip(ratios, ratios[1:]))
        for s in scales
    )
    checks = markdown_table(
        ["check", "holds in", "of"],
        [
            ('"net" bound >= measured mean rho (cells)', len(rows) - len(below), len(rows)),
            (
                '"per-unit" reading >= measured mean rho (cells)',
                sum(r.bound_per_unit_reading >= r.measured_mean_rho for r in rows),
                len(rows),
            ),
            ('"net" bound does not increase with m/d (rank scales)', monotone, len(scales)),
        ],
    )
    failures = markdown_table(
        ["m/d", "rank scale", '"net" bound', "measured mean rho"],
        [(r.m_over_d, f"{r.rank_scale:g}", f"{r.bound:.4f}", f"{r.measured_mean_rho:.4f}") for r in below],
    )
    return (
        f"{anchors}\n"
        + _paragraph(REMARK_ANCHOR_TEXT, s0=s0, sqrt_s0=math.sqrt(s0), d=d)
        + f"\n{checks}\n"
        + 'Cells where the "net" bound is below the measured mean rho:\n\n'
        + f"{failures}\n"
        + _paragraph(REMARK_FAILURES_TEXT)
    )


# ------------------------------------------------------------------------------------------ objective table


def objective_table(rows: Sequence[ObjectiveRow]) -> str:
    """Mean ± standard error of R/R(0) per shape and init (bold: lowest mean), then mean init seconds."""
    labels = list(dict.fromkeys(r.init for r in rows))
    shapes = list(dict.fromkeys((r.d_out, r.d_in, r.rank) for r in rows))
    lines: list[list[object]] = []
    for shape in shapes:
        mine = {r.init: r for r in rows if (r.d_out, r.d_in, r.rank) == shape}
        low = min(r.mean for r in mine.values())
        cells = [f"{mine[x].mean:.5f} ± {mine[x].sem:.5f}" for x in labels]
        lines.append([*shape, *(f"**{c}**" if mine[x].mean == low else c for c, x in zip(cells, labels))])
    secs = {x: np.mean([r.seconds for r in rows if r.init == x]) for x in labels}
    lines.append(["mean init seconds", "", "", *(f"{secs[x]:.3f}" for x in labels)])
    return markdown_table(["d_out (m)", "d_in (d)", "r", *labels], lines)


def objective_section(rows: Sequence[ObjectiveRow], best: str) -> str:
    """The R/R(0) table, the inits ranked by their mean over shapes, paired differences over the same W
    draws, and the fixed text that reads them."""
    shapes = list(dict.fromkeys((r.d_out, r.d_in, r.rank) for r in rows))
    cell = {(r.d_out, r.d_in, r.rank, r.init): r for r in rows}
    labels = list(dict.fromkeys(r.init for r in rows))
    avg = {x: float(np.mean([cell[(*s, x)].mean for s in shapes])) for x in labels}
    wins = {x: sum(min(labels, key=lambda y: cell[(*s, y)].mean) == x for s in shapes) for x in labels}
    secs = {x: float(np.mean([r.seconds for r in rows if r.init == x])) for x in labels}
    ranking = markdown_table(
        ["init", "mean R/R(0) over shapes", "lowest mean on (shapes)", "mean init seconds"],
        [
            (x, f"{avg[x]:.5f}", f"{wins[x]} of {len(shapes)}", f"{secs[x]:.3f}")
            for x in sorted(labels, key=lambda x: avg[x])
        ],
    )
    pairs = [("relu-svd", "spectral"), (best, "relu-svd"), (best, EXACT), ("spectral", SAMPLED)]
    lines = []
    for a, b in dict.fromkeys(p for p in pairs if p[0] != p[1] and p[0] in labels and p[1] in labels):
        diff = np.concatenate([np.subtract(cell[(*s, b)].values, cell[(*s, a)].values) for s in shapes])
        lines.append(
            (
                f"{b} - {a}",
                f"{diff.mean():+.2e}",
                f"{diff.min():+.2e}",
                f"{diff.max():+.2e}",
                int((diff > EQUAL_TOL).sum()),
                int((diff < -EQUAL_TOL).sum()),
                int((np.abs(diff) <= EQUAL_TOL).sum()),
                diff.size,
            )
        )
    paired = markdown_table(
        ["b - a (R/R(0), same W)", "mean", "min", "max", "a lower", "b lower", "equal", "W draws"], lines
    )
    return f"{objective_table(rows)}\n{ranking}\n{paired}\n" + _paragraph(OBJECTIVE_TEXT, tol=EQUAL_TOL)


# --------------------------------------------------------------------------------------------- report.md


def report_markdown(
    res: GapResults,
    *,
    best: str,
    recheck: dict[str, Any] | None,
    lfai_options: dict[str, Any],
    cor_seeds: int,
    remark_seeds: int,
    table_seeds: int,
    seed: int,
    command: str,
    machine: str,
) -> str:
    """report.md: a header (command, machine, runtimes), then one section per figure or table."""
    sec = {k: f"{v:.1f} s" for k, v in res.seconds.items()}
    ns = sorted({r.n for r in res.fig32})
    lfai = lfai_options or "the paper's (lfai's defaults)"
    return f"""# The gap between parameter and function approximation: the paper's theory figures

Regenerated by nlinit from scratch (the paper's section 5; formulas in nlinit.theory, derivations in
docs/theory.md section 6). Torch orientation: W is (m, d) with the m units as rows in R^d (the paper's W is
d x m). ReLU throughout; R is the exact (closed-form) NLRA objective in float64; rho_i is the cosine between
w_i and the SVD subspace (top-r right singular vectors, what spectral and relu-svd use); "{best}" stands for
the optimum. Every number below is in a table; the text says what the tables mean and does not depend on them.

- Command: `{command}`
- Machine: {machine}
- Runtime: {sum(res.seconds.values()):.0f} s in total (Fig 3.2 {sec.get("fig32")}, Corollary 3.3.11
  {sec.get("corollary")}, Remark 3.3.12 {sec.get("remark")}, objective table {sec.get("objectives")});
  base seed {seed}.

## Fig 3.2: (1/(2d)) ||g(rho) - rho||^2 against n and rank scale

m = round(n^1.5) units with i.i.d. N(0, 1) entries scaled to unit norm, d = round(0.2 n), one draw per n,
n in {ns}, r = max(1, round(s d)). Data: [fig32.csv](fig32.csv).

![Fig 3.2](fig32.png)

{fig32_section(res.fig32)}
## Corollary 3.3.11: per-unit gap against L(sqrt(r/d)) / (2 pi^2)

Unit rows uniform on the sphere, m = (m/d) d, {cor_seeds} draw(s) per (d, m/d). "gap" is the measured
(1/m)(R(spectral) - R({best})); "Thm 3.3.9" is (1/(2m)) sum_i (g(rho_i) - rho_i)^2, which equals
(1/m)(R(spectral) - R(relu-svd)) exactly; "finite form" is nlinit's
(1/m) ||W||_F^2 L(||W_r||_F/||W||_F)/(2 pi^2), a lower bound on Thm 3.3.9's for every W; "captured energy"
is ||W_r||_F^2/||W||_F^2 (r/d in the limit); margin = gap - L(sqrt(r/d))/(2 pi^2); "certified max gap" is
(1/m)(R(spectral) - L) with L = nlinit.bounds.nlra_lower_bound. Data: [corollary.csv](corollary.csv).

![Corollary 3.3.11](corollary.png)

{corollary_section(res.corollary, best, recheck)}
## Remark 3.3.12 / Fig 3.3: the bound on mean rho against rank scale

Bound sqrt( inf_lambda [ c + log 1F1(r/2; d/2; lambda) ] / lambda ), 1F1 summed as a power series in log
space, infimum by a bounded scalar search over log lambda. The paper's notes print c = r log(d/r), which has
no m in it; the figure (left) uses c = (d/m) r log(d/r) (the "net" reading), the right panel the other
reading c = r log(d/r) / m ("per-unit"; docs/theory.md G.3 says why). d = {res.remark[0].d}; dots:
measured mean rho of the SVD subspace of m = (m/d) d unit rows, {remark_seeds} draw(s) each.
Data: [remark.csv](remark.csv).

![Remark 3.3.12](remark.png)

{remark_section(res.remark)}
## R/R(0) of every init

Fresh W from the paper's init distribution (N(0, 1/d_in) truncated at 2 sigma, float32), mean ± standard
error over {table_seeds} draws; R/R(0) is the exact ReLU objective relative to Y = 0 (lower is better,
bold is the lowest). lfai-ws settings: {lfai}; "exact" runs the same Adam schedule on the closed form.
Data: [objectives.csv](objectives.csv).

{objective_section(res.objectives, best)}"""
