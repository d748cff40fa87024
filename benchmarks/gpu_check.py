"""GPU check: nlinit on CUDA gives the CPU's results and how fast the inits run there.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU; prints a markdown report

1. Fidelity on CUDA: a full-rank spectral factorization of ResNet-18 reproduces the model's outputs.
2. Device and dtype are kept (every parameter stays on the GPU).
3. Seconds per init on ResNet-50 (rank scale 0.1, fresh W, ReLU) on the GPU and on this machine's CPU,
   measured in the same run; objectives must agree between the two devices to float tolerance for the
   deterministic inits.
"""

from __future__ import annotations

import copy
import sys
import time

import torch

import nlinit
from nlinit.models import build_model


def factorize_timed(device: str, init: str, **kw: object) -> tuple[float, nlinit.FactorizeReport]:
    model = build_model("resnet50").to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    report = nlinit.factorize(model, rank_scale=0.1, init=init, source="fresh", activation="relu", **kw)
    if device == "cuda":
        torch.cuda.synchronize()
    assert all(p.device.type == device for p in model.parameters()), "a parameter left the device"
    return time.perf_counter() - t, report


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device; nothing to check")
        return 1
    print(
        f"# gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads)\n"
    )
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).double().cuda().eval()
    ref = copy.deepcopy(model)
    nlinit.factorize(
        model,
        rank_scale=1.0,
        init="spectral",
        allow_growth=True,
        factorize_stem=True,
        factorize_classifier=True,
    )
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        err = (model(x) - ref(x)).abs().max().item()
    print(f"1. full-rank fidelity on CUDA (float64 ResNet-18): max |diff| = {err:.2e}\n")

    print("| init | GPU s | CPU s | CPU/GPU | mean R/R0 GPU | mean R/R0 CPU |\n|---|---|---|---|---|---|")
    for init, kw in [
        ("spectral", {}),
        ("relu-svd", {}),
        ("lfai-ws", {}),
        ("lfai-ws", {"objective": "exact"}),
        ("lfai", {}),
    ]:
        label = init + (" (exact)" if kw else "")
        g, rg = factorize_timed("cuda", init, **kw)
        if init.startswith("lfai") and not kw:  # the CPU run of sampled lfai costs minutes; GPU only
            print(f"| {label} | {g:.1f} | - | - | {rg.mean_objective():.5f} | - |", flush=True)
            continue
        c, rc = factorize_timed("cpu", init, **kw)
        print(
            f"| {label} | {g:.1f} | {c:.1f} | {c / g:.1f} | {rg.mean_objective():.5f} | "
            f"{rc.mean_objective():.5f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
