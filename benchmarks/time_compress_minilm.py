"""Time per phase of compressing all-MiniLM-L6-v2 (all 36 Linear layers, 512 calibration paragraphs, relu-svd,
energy allocation, budget 0.3), the statistics collected inside the call (benchmarks/COMPRESS.md).

    OMP_NUM_THREADS=2 python benchmarks/time_compress_minilm.py
"""

from __future__ import annotations

import time

import torch

from nlinit.experiments.compress_minilm import compress_all_linear
from nlinit.experiments.retrieval import calibration_paragraphs
from nlinit.hf import load_minilm, token_batches


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_minilm()
    batches = token_batches(tokenizer, calibration_paragraphs(512), max_length=128)
    t0 = time.perf_counter()
    report = compress_all_linear(model, batches, budget=0.3, method="relu-svd", allocate="energy")
    seconds = {k: round(v, 2) for k, v in report.seconds.items()}
    print(f"wall {time.perf_counter() - t0:.2f} s, per phase {seconds}")


if __name__ == "__main__":
    main()
