"""relu-svd's per-unit (norm, offset) search: Levenberg-Marquardt vs the former L-BFGS.

    python benchmarks/bench_fit_offsets.py --out benchmarks/FIT_OFFSETS.md      # about 2 minutes, 2 cores

ResNet-50 (torchvision, random weights from seed 0, eval mode), 8 random N(0, 1) 224 x 224 images as
calibration data; every Conv2d but the stem in whitened coordinates (``whitened_problem`` with the
measured output covariance), rank scale 0.1, random biases N(0, 0.3^2) so that every unit has an offset to
refit; activation relu, then leaky_relu(0.1). On the same problems (W~, d, the top-r SVD subspace):

- ``lm``: today's ``nlinit.subspace.fit_rows_and_offsets`` (``_conditional_target`` tabulated once, then
  ``_fit_scale_and_offset``: Levenberg-Marquardt on all units at once);
- ``lbfgs``: the search it replaced, reproduced here as the baseline: L-BFGS (strong Wolfe, 30 iterations,
  history 20) on the 20 x 20 Gauss-Hermite rule of ``approx_unit_loss`` over (b, d') of all units;
- ``start``: no search (the linear optimum, i.e. whiten's rows on the subspace).

Both searches end with the same per-unit exact check (a unit keeps its start unless the exact loss is
lower). Reported: seconds of each search (all layers, one run, interleaved per layer) and the sum over
units of the exact loss, relative to the start's.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from nlinit.activations import parse_activation
from nlinit.calibration import collect_stats
from nlinit.layer_function import LayerFunction, whitened_problem, whitened_svd
from nlinit.models import build_model
from nlinit.objective import UnitMoments, approx_unit_loss, unit_loss
from nlinit.subspace import _fit_rows_and_offsets

sys.path.insert(0, str(Path(__file__).parent))
from bench_init import machine  # noqa: E402


def lbfgs_rows_and_offsets(W: torch.Tensor, d: torch.Tensor, Q: torch.Tensor, act, max_iter: int = 30):
    """The former search (nlinit before this benchmark): L-BFGS on the 20 x 20 rule, exact check after."""
    A0 = W @ Q
    a, proj = W.norm(dim=1), A0.norm(dim=1)
    sin2 = ((W - A0 @ Q.T).norm(dim=1) / torch.where(a > 0, a, 1.0)) ** 2

    def moments(b, dn):
        return UnitMoments(dn, d, b * b, a * a, b * proj, b * b * sin2)

    b = proj.clone().requires_grad_(True)
    dn = d.clone().requires_grad_(True)
    start = unit_loss(moments(proj, d), act).detach()
    opt = torch.optim.LBFGS(
        [b, dn],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = approx_unit_loss(moments(b, dn), act, 20).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    b, dn = b.detach(), dn.detach()
    better = unit_loss(moments(b, dn), act) < start
    b, dn = torch.where(better, b, proj), torch.where(better, dn, d)
    return torch.where((proj > 0)[:, None], A0 * (b / torch.where(proj > 0, proj, 1.0))[:, None], 0.0), dn


def exact_total(W, d, Q, A, dn, act) -> float:
    a, b, A0 = W.norm(dim=1), A.norm(dim=1), W @ Q
    sin2 = ((W - A0 @ Q.T).norm(dim=1) / torch.where(a > 0, a, 1.0)) ** 2
    return float(unit_loss(UnitMoments(dn, d, b * b, a * a, (A0 * A).sum(1), b * b * sin2), act).sum())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--out", default="benchmarks/FIT_OFFSETS.md")
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"]
    stats = collect_stats(model, names, x.split(4))
    g = torch.Generator().manual_seed(2)
    problems = []
    for name in names:
        layer = model.get_submodule(name)
        W = layer.weight.detach().reshape(layer.out_channels, -1)
        bias = 0.3 * torch.randn(W.shape[0], generator=g, dtype=torch.float64)
        Wt, d, white = whitened_problem(W, LayerFunction.from_stats(stats.pop(name), bias=bias))
        r = max(1, round(0.1 * min(W.shape)))
        problems.append((Wt, d, whitened_svd(Wt, white, r).Q))
    lines = [
        "# relu-svd's (norm, offset) search: Levenberg-Marquardt vs the former L-BFGS",
        "",
        f"Command: `python benchmarks/bench_fit_offsets.py --images {args.images}`  ",
        f"Machine: {machine('cpu')}. Run: {datetime.datetime.now().isoformat(timespec='minutes')}.",
        "",
        f"{len(problems)} ResNet-50 convs in whitened coordinates (module docstring). Sum over units of the "
        "exact loss relative to the start (whiten's rows on the same subspace); seconds for all layers.",
        "",
        "| activation | search | seconds | loss / start's | loss |",
        "|---|---|---|---|---|",
    ]
    for name in ("relu", "leaky_relu"):
        act = parse_activation(name if name == "relu" else "leaky_relu(0.1)")
        seconds = {"lm": 0.0, "lbfgs": 0.0}
        totals = {"start": 0.0, "lm": 0.0, "lbfgs": 0.0}
        for Wt, d, Q in problems:
            A0 = Wt @ Q
            totals["start"] += exact_total(Wt, d, Q, A0, d, act)
            for key, fit in (("lm", _fit_rows_and_offsets), ("lbfgs", lbfgs_rows_and_offsets)):
                t0 = time.perf_counter()
                A, dn = fit(Wt, d, Q, act)
                seconds[key] += time.perf_counter() - t0
                totals[key] += exact_total(Wt, d, Q, A, dn, act)
        for key in ("start", "lbfgs", "lm"):
            sec = f"{seconds[key]:.2f}" if key in seconds else ""
            lines.append(
                f"| {name} | {key} | {sec} | {totals[key] / totals['start']:.6f} | {totals[key]:.6g} |"
            )
        print("\n".join(lines[-3:]))
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
