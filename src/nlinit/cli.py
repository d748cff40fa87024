"""The ``nlinit`` command line: each subcommand calls the library and prints the result.

nlinit factorize --model resnet50 --rank-scale 0.1 --init relu-svd --out report.json
nlinit demo --out results/demo
nlinit list inits|activations|models
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .activations import ACTIVATIONS
from .experiments.compare import markdown_table
from .experiments.demo import run_demo
from .factorize import factorize
from .inits import DISTRIBUTIONS, SOURCES, list_inits
from .matrix_view import LAYOUTS
from .models import build_model, list_model_names


def _default(name: str, fn: Callable[..., Any] = factorize) -> Any:
    """The library function's own default for ``name``: the CLI never restates a default."""
    return inspect.signature(fn).parameters[name].default


def _factorize(args: argparse.Namespace) -> int:
    model = build_model(args.model, num_classes=args.num_classes)
    options = {} if args.objective is None else {"objective": args.objective}
    report = factorize(
        model,
        rank_scale=args.rank_scale,
        rank=args.rank,
        init=args.init,
        activation=args.activation,
        layout=args.layout,
        source=args.source,
        distribution=args.distribution,
        include=args.include,
        exclude=args.exclude or (),
        factorize_stem=args.factorize_stem,
        factorize_classifier=args.factorize_classifier,
        allow_growth=args.allow_growth,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    print(report.to_markdown())
    if args.out:
        print(f"wrote {report.save(args.out)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    rows = run_demo(
        args.out,
        model=args.model,
        rank_scales=args.rank_scales,
        seed=args.seed,
        lfai_max_epochs=args.lfai_max_epochs,
    )
    print(markdown_table(rows))
    print(f"wrote {args.out}/report.md, results.json, objective_vs_rank.png")
    return 0


def _list(args: argparse.Namespace) -> int:
    names = {"inits": list_inits(), "activations": sorted(ACTIVATIONS), "models": list_model_names()}
    print("\n".join(names[args.what]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlinit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    f = sub.add_parser("factorize", help="factorize a model and report per layer")
    f.add_argument(
        "--model", required=True, help="torchvision classification model or 'mlp' (nlinit list models)"
    )
    f.add_argument("--num-classes", type=int, default=1000)
    size = f.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank-scale", type=float, help="r = max(1, round(s * min(rows, cols))), s in (0, 1]")
    size.add_argument("--rank", type=int, help="one rank for every layer")
    f.add_argument("--init", default=_default("init"), choices=list_inits())
    f.add_argument("--objective", choices=("sampled", "exact"), help="lfai / lfai-ws objective")
    f.add_argument(
        "--activation",
        default=_default("activation"),
        help="'auto' or an activation name (nlinit list activations)",
    )
    f.add_argument("--layout", default=_default("layout"), choices=LAYOUTS)
    f.add_argument("--source", default=_default("source"), choices=SOURCES)
    f.add_argument(
        "--distribution", default=_default("distribution"), choices=[*DISTRIBUTIONS, "reset-parameters"]
    )
    f.add_argument("--include", nargs="+", metavar="PATTERN", help="module-name patterns to factorize")
    f.add_argument("--exclude", nargs="+", metavar="PATTERN", help="module-name patterns to keep")
    f.add_argument("--factorize-stem", action="store_true")
    f.add_argument("--factorize-classifier", action="store_true")
    f.add_argument("--allow-growth", action="store_true", help="factorize layers even if params grow")
    f.add_argument("--seed", type=int, default=_default("seed"))
    f.add_argument("--out", help="write the report: .json, .csv or .md")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_factorize)

    d = sub.add_parser("demo", help="compare every init on ResNet-18 at three rank scales")
    d.add_argument("--out", default=_default("out", run_demo))
    d.add_argument("--model", default=_default("model", run_demo))
    d.add_argument("--rank-scales", type=float, nargs="+", default=list(_default("rank_scales", run_demo)))
    d.add_argument("--seed", type=int, default=_default("seed", run_demo))
    d.add_argument(
        "--lfai-max-epochs",
        type=int,
        default=_default("lfai_max_epochs", run_demo),
        help="epochs of 128 Adam steps (paper: up to 6)",
    )
    d.set_defaults(run=_demo)

    li = sub.add_parser("list", help="list inits, activations or models")
    li.add_argument("what", choices=("inits", "activations", "models"))
    li.set_defaults(run=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, TypeError, NotImplementedError) as e:
        print(f"nlinit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
