"""nlinit.hf and compress on a tiny randomly initialized BERT (transformers), and the retrieval experiment's
pure parts (pairs, metrics), which need no transformers."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from nlinit._optional import MissingDependencyError
from nlinit.compress import METHODS, compress
from nlinit.experiments import retrieval
from nlinit.layers import LowRankLinear

# --------------------------------------------------------------------------------------------------------
# retrieval: metrics on a known toy, pairs


def test_retrieval_metrics_known_ranks():
    # query i's similarity to each document; the right document is on the diagonal
    docs = torch.eye(3)
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.4, 1.0], [0.6, 1.0, 0.5]])
    # query 0: rank 1; query 1: doc 2 beats doc 1 -> rank 2; query 2: docs 1 and 0 beat doc 2 -> rank 3
    m = retrieval.retrieval_metrics(queries, docs)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # cosine: a query's scale does not matter
    assert retrieval.retrieval_metrics(5 * queries, docs) == m


def test_retrieval_metrics_bad_shapes():
    with pytest.raises(ValueError, match=r"same shape with n >= 1, got \(3, 2\) and \(2, 2\)"):
        retrieval.retrieval_metrics(torch.ones(3, 2), torch.ones(2, 2))


def test_pair_from_docstring_rules():
    doc = "Return the thing, computed.\n    Second summary line.\n\n    " + "Body text here. " * 4
    q, d = retrieval.pair_from_docstring(doc)
    assert q == "Return the thing, computed. Second summary line."
    assert d == ("Body text here. " * 4).strip()
    assert retrieval.pair_from_docstring("sqrt(x) -> float\n\n" + "Body. " * 20) is None  # a signature
    assert retrieval.pair_from_docstring("Too short.\n\n" + "Body. " * 20) is None  # summary < 20
    assert retrieval.pair_from_docstring("A long enough summary line.\n\nShort body.") is None
    q, d = retrieval.pair_from_docstring("A long enough summary line.\n\n" + "word " * 400)
    assert len(d) <= 1000 and d.endswith("word")  # cut at a word boundary


def test_docstring_pairs_deterministic_and_unique():
    modules = ["textwrap", "json", "fnmatch"]
    a = retrieval.docstring_pairs(modules)
    b = retrieval.docstring_pairs(list(reversed(modules)))  # sorted: the order given does not matter
    assert a == b and len(a) >= 5
    assert [p.name.split(":")[0] for p in a] == sorted(p.name.split(":")[0] for p in a)
    assert len({p.query for p in a}) == len(a) and len({p.document for p in a}) == len(a)
    assert "textwrap:dedent" in {p.name for p in a}
    with pytest.raises(TypeError, match="list of module names, got the string 'json'"):
        retrieval.docstring_pairs("json")


def test_calibration_paragraphs_disjoint_from_pairs():
    paragraphs = retrieval.calibration_paragraphs(64)
    assert len(paragraphs) == len(set(paragraphs)) == 64
    assert all(200 <= len(p) <= 1000 for p in paragraphs)
    texts = {t for p in retrieval.docstring_pairs(["textwrap", "json"]) for t in (p.query, p.document)}
    assert not texts & set(paragraphs)
    with pytest.raises(ValueError, match=r"count must be an int in \[1, \d+\].*got 0"):
        retrieval.calibration_paragraphs(0)


def test_compress_table_and_plot(tmp_path):
    from nlinit.experiments.compress_table import plot, table

    rows = [
        {"method": "original", "allocate": "", "budget": "1.0", "params_kept": "1.0", "recall@1": "0.3"}
        | {"mrr": "0.4", "mean_cosine": "1.0"},
        {"method": "svd", "allocate": "uniform", "budget": "0.5", "params_kept": "0.75", "recall@1": "0.1"}
        | {"mrr": "0.2", "mean_cosine": "0.8"},
        {"method": "svd", "allocate": "uniform", "budget": "0.3", "params_kept": "0.65", "recall@1": "0.05"}
        | {"mrr": "0.1", "mean_cosine": "0.7"},
    ]
    md = table(rows, "# head", ("recall@1", "mrr", "mean_cosine"))
    assert "Uncompressed: recall@1 0.3000, mrr 0.4000, mean_cosine 1.0000." in md
    assert "| method | allocation | 0.3 | 0.5 |" in md and "| svd | uniform | 0.0500 | 0.1000 |" in md
    plot(rows, tmp_path / "p.png", "recall@1", "recall@1", "title")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    rows[1]["recall@1_finetuned"] = "0.2"  # one configuration fine-tuned: the others are left out
    plot(rows, tmp_path / "t.png", "recall@1_finetuned", "recall@1", "title", reference="recall@1")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------------------
# nlinit.hf without transformers


def test_missing_transformers_is_one_line(monkeypatch):
    from nlinit import hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # None in sys.modules: import raises ImportError
    with pytest.raises(MissingDependencyError) as err:
        hf.load_minilm()
    assert str(err.value) == (
        "nlinit.hf.load_minilm needs transformers, which is not installed: pip install 'nlinit[hf]'"
    )


# --------------------------------------------------------------------------------------------------------
# a tiny BERT

transformers = pytest.importorskip(
    "transformers", reason="the hf extra is not installed: pip install 'nlinit[hf]'"
)


def _tiny_bert(hidden_act: str = "gelu"):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        hidden_act=hidden_act,
    )
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _batches(n: int = 24, lengths=(5, 9)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for length in lengths:
        ids = torch.randint(1, 100, (n, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def test_bert_activations():
    from nlinit import hf

    assert hf.bert_activations(_tiny_bert()) == hf.BERT_ACTIVATIONS
    assert hf.bert_activations(_tiny_bert("relu"))["*intermediate.dense"] == "relu"
    with pytest.raises(ValueError, match="hidden_act must be one of gelu, relu, silu, swish.*got 'tanh'"):
        hf.bert_activations(_tiny_bert("tanh"))


def _compress_tiny_bert(model, method, **options):
    """compress() of a tiny BERT at budget 0.5 (energy allocation), every Linear, the activations given."""
    from nlinit import hf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.fx cannot trace BERT: the activations are given instead
        return compress(
            model,
            _batches(),
            budget=0.5,
            method=method,
            allocate="energy",
            activation=hf.BERT_ACTIVATIONS,
            factorize_stem=True,
            factorize_classifier=True,
            calibration_samples=32,
            calibration_heldout=16,
            **options,
        )


@pytest.mark.parametrize("method", [m for m in METHODS if m != "lfai-data"] + ["lfai-data"])
def test_compress_tiny_bert_every_method(method):
    model = _tiny_bert()
    batch = _batches()[1]
    with torch.no_grad():
        before = model(**batch).last_hidden_state
    options = {"max_epochs": 1, "steps_per_epoch": 5} if method == "lfai-data" else {}
    report = _compress_tiny_bert(model, method, **options)
    assert len(report.layers) == 12  # 2 layers x (query, key, value, attention out, intermediate, output)
    assert report.params_after <= 0.5 * report.params_before
    acts = {x.name: x.activation for x in report.layers}
    assert acts["encoder.layer.1.intermediate.dense"] == "gelu"
    assert acts["encoder.layer.0.attention.self.query"] == "identity"
    assert acts["encoder.layer.1.output.dense"] == "identity"
    notes = {x.name: x.activation_note for x in report.factorize.layers}
    assert notes["encoder.layer.0.intermediate.dense"] == "given for '*intermediate.dense'"
    assert isinstance(model.encoder.layer[0].intermediate.dense, LowRankLinear)
    with torch.no_grad():
        after = model(**batch).last_hidden_state
    assert torch.isfinite(after).all() and after.shape == before.shape


def test_compress_tiny_bert_sequential():
    model = _tiny_bert()
    report = _compress_tiny_bert(model, "whiten", sequential=True)
    assert report.config["sequential"] is True and len(report.layers) == 12
    assert report.params_after <= 0.5 * report.params_before
    assert all(x.heldout_method is not None for x in report.layers)
    assert isinstance(model.encoder.layer[1].output.dense, LowRankLinear)


def test_compress_all_linear_is_the_experiments_compress_call():
    """compress_minilm's compress_all_linear (which its benchmark times) is compress() of every Linear with
    bert_activations: the same factors, bit for bit; a bad budget is compress's one-line error, model kept."""
    from nlinit import hf
    from nlinit.experiments.compress_minilm import compress_all_linear

    small = {"calibration_samples": 32, "calibration_heldout": 16}
    ours, direct = _tiny_bert(), _tiny_bert()
    report = compress_all_linear(ours, _batches(), budget=0.5, method="relu-svd", allocate="energy", **small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.fx cannot trace BERT: the activations are given instead
        compress(direct, _batches(), budget=0.5, method="relu-svd", allocate="energy", progress=False,
                 activation=hf.bert_activations(direct), factorize_stem=True, factorize_classifier=True,
                 **small)  # fmt: skip
    assert len(report.layers) == 12
    assert ours.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in ours.state_dict().items())
    model = _tiny_bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"budget must be a fraction in \(0, 1\)"):
        compress_all_linear(model, _batches(), budget=1.5, method="svd", allocate="uniform")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_compress_bert_auto_activation_warns():
    # without activation=, the fallback is not silent: a warning, and the note says "default (not traced)"
    model = _tiny_bert()
    with pytest.warns(UserWarning, match="could not trace the model with torch.fx"):
        report = compress(model, _batches(), budget=0.5, method="svd", factorize_stem=True)
    assert {x.activation_note for x in report.factorize.layers if x.factorized} == {"default (not traced)"}


def test_compress_bad_activation_leaves_model_unchanged():
    model = _tiny_bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="unknown activation 'gleu'"):
        compress(model, _batches(), budget=0.5, activation={"*": "gleu"})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_mean_pool_token_batches_and_embed():
    from nlinit import hf

    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(hf.mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))

    class Tokenizer:  # a word-level stand-in with the transformers call convention
        def __call__(self, texts, truncation=True, max_length=8, padding=False, return_tensors=None):
            ids = [[1 + len(w) for w in t.split()][:max_length] for t in texts]
            if not padding:
                return {"input_ids": ids}
            width = max(map(len, ids))
            input_ids = torch.tensor([x + [0] * (width - len(x)) for x in ids])
            return transformers.BatchEncoding(
                {"input_ids": input_ids, "attention_mask": (input_ids > 0).long()}
            )

    texts = ["a bb ccc", "dd e", "f g h", "long text of many words here, truncated"]
    batches = hf.token_batches(Tokenizer(), texts, max_length=6, batch_size=2)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(1, 2), (2, 3), (1, 6)]
    assert all(bool(b["attention_mask"].all()) for b in batches)  # no padding token anywhere
    model = _tiny_bert()
    e = hf.embed(model, Tokenizer(), texts, batch_size=3)
    assert e.shape == (4, 32) and torch.allclose(e.norm(dim=1), torch.ones(4))
    # batching and padding do not change a text's embedding (float rounding only)
    one = torch.cat([hf.embed(model, Tokenizer(), [t]) for t in texts])
    torch.testing.assert_close(e, one, atol=1e-5, rtol=0)


def test_sequential_bert_runs_its_encoder_layers_as_a_chain_with_the_same_factors(monkeypatch):
    """compress(sequential=True) keeps each encoder layer's inputs (BertEncoder passes each layer's output
    to the next, the attention mask shared) and runs a layer's statistics for the allocation, then its pass,
    on its block alone. With the held-out
    split too, the factors equal those from whole forwards bit for bit: before the first block are only
    row-wise operations (embedding lookups, LayerNorm), so cutting a batch before or after them gives the
    same numbers."""
    import nlinit.sequential as sequential

    chains = []
    capture = sequential._Chain.capture.__func__

    def spy(cls, *args, **kwargs):
        chains.append(capture(cls, *args, **kwargs))
        return chains[-1]

    monkeypatch.setattr(sequential._Chain, "capture", classmethod(spy))
    chained = _tiny_bert()
    _compress_tiny_bert(chained, "whiten", sequential=True)
    assert [c.blocks for c in chains] == [["encoder.layer.0", "encoder.layer.1"]] * 2  # allocation, pass
    monkeypatch.setattr(sequential, "_blocks", lambda *args: None)
    whole = _tiny_bert()
    _compress_tiny_bert(whole, "whiten", sequential=True)
    got, want = (
        {n: m for n, m in x.named_modules() if isinstance(m, LowRankLinear)} for x in (chained, whole)
    )
    assert len(got) >= 10 and sorted(got) == sorted(want)
    for name in got:
        assert torch.equal(got[name].U, want[name].U) and torch.equal(got[name].V, want[name].V), name
