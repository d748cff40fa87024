"""Offline English retrieval pairs from the Python standard library's docstrings, and retrieval metrics.

A pair is (query, document) from one docstring: the query is its one-line summary, the document the rest.
:func:`docstring_pairs` builds them deterministically for a given Python version:

1. modules: the names given, in sorted order (:func:`stdlib_modules`: ``sys.stdlib_module_names``, also
   the single-underscore ones such as ``_pyio`` and ``_pydecimal``, the pure-Python twins of C modules,
   and the submodules of packages (``pkgutil.iter_modules``, recursively) without private parts; never a
   ``__``-name or a name with a part in :data:`EXCLUDED` (side effects on import, GUI, tests, deprecated
   packages)); a module that fails to import is left out;
2. objects: the module itself and each public function and class in its namespace (also those it
   imports from elsewhere: an object met twice counts once, in the first module), by sorted name,
   and each such class's public methods and properties (data descriptors) defined in its own ``__dict__``,
   by sorted name;
3. docstring (``inspect.cleandoc``; the module's own, then its objects'): the summary is its first
   paragraph (up to the first blank line), 20 to 200 characters, not a call signature (``name(...)``); the
   document is the rest, whitespace collapsed to single spaces in both, at least ``min_document_chars``
   characters, cut to ``max_document_chars`` at a word boundary;
4. uniqueness: a pair whose query or document equals an earlier pair's is dropped (retrieval needs one
   right answer).

With the defaults, Python 3.11.7 gives 2,121 pairs (every one is evaluation data). Calibration text comes
from another source, so it is disjoint from them: :func:`calibration_paragraphs`, the paragraphs of the
Python language reference that ``pydoc`` ships (``pydoc_data.topics``).
:func:`retrieval_metrics` scores query -> document retrieval by cosine similarity (recall@1, MRR).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_finite, check_int

__all__ = [
    "EXCLUDED",
    "Pair",
    "calibration_paragraphs",
    "docstring_pairs",
    "pair_from_docstring",
    "retrieval_metrics",
    "stdlib_modules",
]

#: stdlib modules never imported: side effects (antigravity, this), GUI (tkinter, turtle, idlelib), tests,
#: installers, and packages whose import warns of removal
EXCLUDED = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "tests",
        "ensurepip",
        "venv",
        "lib2to3",
        "pydoc_data",
        "distutils",
        "msilib",
        "winreg",
        "winsound",
        "msvcrt",
        "nturl2path",
        "ntpath",
        "_winapi",
    }
)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)")


def _check_lengths(low_name: str, low: object, high_name: str, high: object) -> None:
    """Require ints 0 <= low <= high, high >= 1 (a minimum and a maximum number of characters)."""
    lo = check_int(low_name, low, low=0)
    check_int(high_name, high, low=max(lo, 1))


@dataclass(frozen=True)
class Pair:
    """One docstring: ``name`` (module:qualified name), ``query`` (its summary), ``document`` (the rest)."""

    name: str
    query: str
    document: str


def _public(name: str) -> bool:
    return not any(part.startswith("_") or part in EXCLUDED for part in name.split("."))


def stdlib_modules() -> list[str]:
    """The public stdlib modules of this Python and their public submodules (rule 1), sorted. Imports the
    packages (not their submodules) to list their submodules."""
    names: set[str] = set()
    todo = sorted(n for n in sys.stdlib_module_names if n == "_" + n.lstrip("_") or _public(n))
    while todo:
        name = todo.pop()
        names.add(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(name)
            except Exception:  # another platform's or build's module: left out
                continue
        path = getattr(module, "__path__", None)
        if path is not None:
            todo += [f"{name}.{info.name}" for info in pkgutil.iter_modules(path) if _public(info.name)]
    return sorted(names)


def pair_from_docstring(
    doc: str | None, *, min_document_chars: int = 40, max_document_chars: int = 1000
) -> tuple[str, str] | None:
    """(query, document) of one docstring by the rules of step 3 of the module docstring, or None.

    Example:
        >>> pair_from_docstring("Return x doubled, as an int.\\n\\nIt doubles the value: " + "2 x. " * 6)
        ('Return x doubled, as an int.', 'It doubles the value: 2 x. 2 x. 2 x. 2 x. 2 x. 2 x.')
    """
    if doc is not None and not isinstance(doc, str):
        raise TypeError(f"doc must be a str or None, got {type(doc).__name__}")
    _check_lengths("min_document_chars", min_document_chars, "max_document_chars", max_document_chars)
    if not doc:
        return None
    lines = inspect.cleandoc(doc).splitlines()
    blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    summary = " ".join(" ".join(lines[:blank]).split())
    if not 20 <= len(summary) <= 200 or _SIGNATURE.match(summary):
        return None
    document = " ".join(" ".join(lines[blank + 1 :]).split())
    if len(document) < min_document_chars:
        return None
    if len(document) > max_document_chars:
        document = document[:max_document_chars].rsplit(" ", 1)[0]
    return summary, document


def _objects(module: object, module_name: str) -> list[tuple[str, object]]:
    """(qualified name, object) of the module's public functions and classes defined in it, and of their
    classes' public methods defined in the class itself, sorted by name (step 2)."""
    out: list[tuple[str, object]] = []
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        out.append((name, obj))
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                routine = inspect.isfunction(member) or inspect.isroutine(member)
                if not attr.startswith("_") and (routine or inspect.isdatadescriptor(member)):
                    out.append((f"{name}.{attr}", member))
    return out


def docstring_pairs(
    modules: Sequence[str] | None = None,
    *,
    min_document_chars: int = 40,
    max_document_chars: int = 1000,
) -> list[Pair]:
    """The (summary, rest) pairs of the docstrings in ``modules`` (default :func:`stdlib_modules`), built by
    the rules of the module docstring, in that order. Deterministic for a given Python and module list.

    Example:
        >>> pairs = docstring_pairs(["json", "textwrap"])
        >>> pairs[0].name, pairs[0].query  # doctest: +SKIP
        ('json:JSONDecodeError', 'Subclass of ValueError with the following additional properties:')
    """
    if isinstance(modules, str):
        raise TypeError(f"modules must be a list of module names, got the string {modules!r}")
    if modules is not None:
        if not isinstance(modules, Sequence):
            raise TypeError(f"modules must be a list of module names or None, got {type(modules).__name__}")
        bad = next((m for m in modules if not isinstance(m, str) or not m), None)
        if bad is not None:
            raise TypeError(f"modules must be module names (non-empty strings), got {bad!r:.80}")
    _check_lengths("min_document_chars", min_document_chars, "max_document_chars", max_document_chars)
    names = stdlib_modules() if modules is None else sorted(modules)
    pairs: list[Pair] = []
    seen_objects: set[int] = set()
    seen_text: set[str] = set()
    for module_name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(module_name)
            except Exception:  # a module of another platform or build: left out (rule 1)
                continue
        for qualname, obj in [("", module), *_objects(module, module_name)]:
            if id(obj) in seen_objects:
                continue
            seen_objects.add(id(obj))
            with warnings.catch_warnings():  # reading typing.io's docstring warns that it is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = getattr(obj, "__doc__", None)
            doc = doc if isinstance(doc, str) else None  # an object whose __doc__ is not text has none
            found = pair_from_docstring(
                doc,
                min_document_chars=min_document_chars,
                max_document_chars=max_document_chars,
            )
            if found is None:
                continue
            query, document = found
            if ("q:" + query) in seen_text or ("d:" + document) in seen_text:
                continue
            seen_text.update(("q:" + query, "d:" + document))
            pairs.append(Pair(f"{module_name}:{qualname}".rstrip(":"), query, document))
    return pairs


def calibration_paragraphs(count: int, *, min_chars: int = 200, max_chars: int = 1000) -> list[str]:
    """The first ``count`` paragraphs of ``pydoc_data.topics`` (the language reference pages pydoc shows),
    topics in sorted order, paragraphs split at blank lines, whitespace collapsed, at least ``min_chars``
    characters, cut to ``max_chars`` at a word boundary, duplicates dropped.

    Raises:
        ValueError: ``count`` < 1 or more than there are; ``min_chars`` < 0 or ``max_chars`` < max(1,
            ``min_chars``).
    """
    _check_lengths("min_chars", min_chars, "max_chars", max_chars)
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            text = " ".join(block.split())
            if len(text) > max_chars:
                text = text[:max_chars].rsplit(" ", 1)[0]
            if len(text) >= min_chars and text not in out:
                out.append(text)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(out):
        raise ValueError(f"count must be an int in [1, {len(out)}] (paragraphs available), got {count!r}")
    return out[:count]


def retrieval_metrics(queries: Tensor, documents: Tensor) -> dict[str, float]:
    r"""Recall@1 and mean reciprocal rank of retrieving document i for query i by cosine similarity.

    S_ij = cos(q_i, d_j); rank_i = 1 + #{j != i : S_ij > S_ii} (ties count in the query's favour);
    recall@1 = mean_i [rank_i = 1], MRR = mean_i 1 / rank_i.

    Args:    queries, documents: (n, d) embeddings, row i of each is pair i; n >= 1; finite.
    Returns: {"recall@1", "mrr"}.
    Raises:  TypeError for a non-tensor; ValueError for shapes that are not two equal (n, d) matrices
             (n, d >= 1), a NaN or Inf entry, or a zero row (its cosine is undefined).
    Example: >>> retrieval_metrics(torch.eye(3), torch.eye(3))
             {'recall@1': 1.0, 'mrr': 1.0}
    """
    for name, x in (("queries", queries), ("documents", documents)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if queries.dim() != 2 or queries.shape != documents.shape or 0 in queries.shape:
        raise ValueError(
            "queries and documents must be (n, d) embeddings of the same shape with n >= 1, got "
            f"{tuple(queries.shape)} and {tuple(documents.shape)}"
        )
    for name, x in (("queries", queries), ("documents", documents)):
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
        if x.is_floating_point():
            check_finite(name, x)
        zero = (x == 0).all(1).nonzero()
        if len(zero):
            raise ValueError(
                f"{name} row {int(zero[0])} is all zeros; cosine similarity needs nonzero embeddings"
            )
    q = torch.nn.functional.normalize(queries.double(), dim=1)
    d = torch.nn.functional.normalize(documents.double(), dim=1)
    S = q @ d.T  # (n, n)
    rank = 1 + (S.diagonal().unsqueeze(1) < S).sum(1)
    return {"recall@1": float((rank == 1).double().mean()), "mrr": float((1.0 / rank.double()).mean())}
