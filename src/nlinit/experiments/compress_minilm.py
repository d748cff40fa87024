"""Compress the pretrained all-MiniLM-L6-v2 sentence encoder training-free; score stdlib docstring retrieval.

    python -m nlinit.experiments.compress_minilm --out results/compress/minilm
    python -m nlinit.experiments.compress_minilm --out /tmp/t --methods relu-svd --allocations energy \\
        --budgets 0.5   # one configuration (its per-phase seconds are in results.csv)

For each budget x method x allocation (budgets outermost, in the order given): a fresh copy of the model,
:func:`nlinit.compress` of all its 36 Linear layers (``activation=nlinit.hf.bert_activations(model)``: GELU
after ``intermediate.dense``, identity elsewhere) on ``--calibration`` paragraphs of the Python language
reference (:func:`nlinit.experiments.retrieval.calibration_paragraphs`, unpadded same-length batches:
:func:`nlinit.hf.token_batches`), then the retrieval metrics of :func:`nlinit.experiments.retrieval.
docstring_pairs` (every pair; disjoint from the calibration text) and the mean cosine similarity of each
evaluation text's embedding to the original model's. Writes results.csv (one row per configuration, plus
the uncompressed model), table.md and recall_vs_params.png into ``--out``, each atomically after every
configuration; a rerun skips the configurations already in results.csv.

``--finetune-epochs E`` (0: none) adds a recovery fine-tune after each configuration's training-free
metrics: E passes over the calibration batches, distilling the original model's hidden states (MSE on
``last_hidden_state``, :func:`nlinit.finetune.finetune` with its defaults), then the metrics again, as
``<metric>_finetuned`` columns and tables. One grid may mix both: a fine-tuning run fills the fine-tuned
columns of configurations a training-free run left (it recomputes them), and the fine-tuned tables show
wherever a value is given. ``--sequential`` compresses with ``compress(sequential=True)`` (rows
``<method>+sequential``, beside the plain ones in the same results.csv).
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from typing import Any

import torch

from .._checks import check_int, parse_shard
from .._parser import Parser
from .._paths import atomic_write_text, check_output
from ..compress import ALLOCATIONS, METHODS, CompressReport, compress
from ..finetune import finetune
from ..hf import bert_activations, embed, load_minilm, token_batches
from . import compress_table as grid
from .machine import describe
from .retrieval import calibration_paragraphs, docstring_pairs, retrieval_metrics

METRICS = ("recall@1", "mrr", "mean_cosine")
TITLE = "all-MiniLM-L6-v2, training-free low-rank compression"
TUNED_TITLE = "all-MiniLM-L6-v2, low-rank compression and a recovery fine-tune"
YLABEL = "recall@1 (stdlib docstring retrieval)"

TUNED = tuple(f"{m}_finetuned" for m in METRICS)
FIELDS = [
    *grid.CONFIG_FIELDS,
    *METRICS,
    *grid.SECONDS_FIELDS,
    "seconds_embed",
    "finetune_epochs",
    *TUNED,
    "seconds_finetune",
    grid.MACHINE_FIELD,
]


def compress_all_linear(
    model: torch.nn.Module, batches: Any, *, budget: float, method: str, allocate: str, **options: Any
) -> CompressReport:
    """:func:`nlinit.compress` of all 36 Linear layers of the encoder ``model`` in place, as this experiment
    compresses them: GELU after each FFN's first projection, identity elsewhere
    (:func:`nlinit.hf.bert_activations`), the first and last layers included. ``options`` go to compress
    (``stats=``, ``sequential=``, ``seed=``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="could not trace the model")  # activations given
        return compress(
            model,
            batches,
            budget=budget,
            method=method,
            allocate=allocate,
            activation=bert_activations(model),
            factorize_stem=True,
            factorize_classifier=True,
            progress=False,
            **options,
        )


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m nlinit.experiments.compress_minilm", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--methods", nargs="+", default=["svd", "asvd", "whiten", "relu-svd"], choices=METHODS
    )
    parser.add_argument("--allocations", nargs="+", default=["uniform", "energy"], choices=ALLOCATIONS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.7])
    parser.add_argument("--calibration", type=int, default=512, help="calibration paragraphs")
    parser.add_argument("--max-tokens", type=int, default=128, help="truncation of every text")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="recovery fine-tune passes over the calibration (0: none)",
    )
    parser.add_argument("--sequential", action="store_true", help="compress(sequential=True)")
    parser.add_argument("--shard", default="0/1", help=grid.SHARD_HELP)
    args = parser.parse_args(argv)
    # every argument is checked before the model is loaded or anything is written
    grid.check_budgets(args.budgets)
    check_int("--max-tokens", args.max_tokens, low=1, high=512)  # BERT's position embeddings
    check_int("--finetune-epochs", args.finetune_epochs, low=0)
    shard = parse_shard(args.shard, name="--shard")
    out = check_output(args.out, name="--out", kind="dir")
    torch.manual_seed(0)

    pairs = docstring_pairs()
    queries, documents = [p.query for p in pairs], [p.document for p in pairs]
    try:
        calibration = calibration_paragraphs(args.calibration)
    except ValueError as err:
        raise ValueError(f"--calibration: {err}") from None
    overlap = set(calibration) & (set(queries) | set(documents))
    if overlap:
        raise ValueError(f"calibration text overlaps evaluation text: {next(iter(overlap))!r:.80}")
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_minilm()
    batches = token_batches(tokenizer, calibration, max_length=args.max_tokens)
    total_params = sum(p.numel() for p in model.parameters())

    def evaluate(m: torch.nn.Module) -> tuple[dict[str, float], torch.Tensor, float]:
        t0 = time.perf_counter()
        q = embed(m, tokenizer, queries, max_length=args.max_tokens)
        d = embed(m, tokenizer, documents, max_length=args.max_tokens)
        return retrieval_metrics(q, d), torch.cat([q, d]), time.perf_counter() - t0

    path = out / "results.csv"
    rows: list[dict[str, Any]] = list(grid.read_rows(path))
    tokens = sum(b["input_ids"].numel() for b in batches)
    header = (
        f"# all-MiniLM-L6-v2 compressed training-free: stdlib docstring retrieval ({len(pairs)} pairs)\n\n"
        + grid.commands(
            out,
            "python -m nlinit.experiments.compress_minilm "
            + " ".join(sys.argv[1:] if argv is None else argv),
        )
        + "; "
        f"machine: {describe()}. Calibration: {len(calibration)} paragraphs "
        f"of pydoc_data.topics ({tokens:,} tokens, unpadded); every text "
        f"truncated to {args.max_tokens} tokens. All 36 Linear layers compressed (activation: GELU after "
        "intermediate.dense, identity elsewhere); budget = fraction of their parameters kept."
    )
    metrics, base_emb, secs = evaluate(model)  # the reference embeddings (also on a resumed run)
    print(f"original: {metrics}, embed {secs:.1f} s", flush=True)
    if not any(r["method"] == "original" for r in rows):
        rows.append(
            {"method": "original", "allocate": "", "budget": 1.0, "params_kept": 1.0, "mean_cosine": 1.0}
            | {"recall@1": metrics["recall@1"], "mrr": metrics["mrr"], "seconds_embed": round(secs, 2)}
        )
        grid.merge_rows(path, rows[-1:], FIELDS, keep=True)  # another shard's, if it was first

    stats = grid.grid_stats(model, batches, 0)  # once: every configuration compresses the same model

    def run(budget: float, method: str, allocate: str) -> dict[str, Any]:
        m = copy.deepcopy(model)
        report = compress_all_linear(
            m,
            batches,
            budget=budget,
            method=method,
            allocate=allocate,
            stats=stats,
            sequential=args.sequential,
        )
        metrics, emb, secs = evaluate(m)
        row = {
            "params_kept": round(report.model_params_after / total_params, 4),
            "layer_params_after": report.params_after,
            "layer_params_before": report.params_before,
            "recall@1": round(metrics["recall@1"], 4),
            "mrr": round(metrics["mrr"], 4),
            "mean_cosine": round(float((emb * base_emb).sum(1).mean()), 4),
            "seconds_embed": round(secs, 2),
        } | {f"seconds_{k}": round(v, 2) for k, v in report.seconds.items() if k != "evaluation"}
        if args.finetune_epochs:
            steps = args.finetune_epochs * len(batches)
            tuned = finetune(m, batches, steps=steps, loss="mse", teacher=model, progress=False)
            metrics, emb, _ = evaluate(m)
            row |= {
                "finetune_epochs": args.finetune_epochs,
                "recall@1_finetuned": round(metrics["recall@1"], 4),
                "mrr_finetuned": round(metrics["mrr"], 4),
                "mean_cosine_finetuned": round(float((emb * base_emb).sum(1).mean()), 4),
                "seconds_finetune": round(tuned["seconds"], 2),
            }
        return row

    def render(rows: list[dict[str, Any]]) -> None:
        tuned = any(r.get(TUNED[0]) not in (None, "") for r in rows)  # this run's or an earlier one's
        shown = (*METRICS, *TUNED) if tuned else METRICS
        epochs = sorted(
            {str(r["finetune_epochs"]) for r in rows if r.get("finetune_epochs") not in (None, "")}
        )
        note = (
            f" Fine-tuned (where a fine-tuned value is given): {' / '.join(epochs)} pass(es) over the "
            "calibration batches, distilling the original model's last_hidden_state (MSE, AdamW, warm-up "
            "then cosine)."
            if tuned
            else ""
        )
        atomic_write_text(out / "table.md", grid.table(rows, header + note, shown) + "\n")
        grid.plot(rows, out / "recall_vs_params.png", "recall@1", YLABEL, TITLE)
        if tuned:
            grid.plot(rows, out / "recall_finetuned_vs_params.png", TUNED[0], YLABEL, TUNED_TITLE, "recall@1")

    require = TUNED[0] if args.finetune_epochs else None  # fill the fine-tuned columns of done rows
    suffix = "+sequential" if args.sequential else ""

    def save(row: dict[str, Any]) -> None:
        grid.merge_rows(path, [row], FIELDS, render)

    grid.run_grid(rows, args.budgets, args.methods, args.allocations, run, save, suffix, require, shard)
    grid.merge_rows(path, [], FIELDS, render)  # the table of everything done, this run's rows and others'
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
