"""evaluate(): metrics against hand computation, predictions against row-by-row forward passes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from llmos_jupyter.errors import NotFoundError, UsageError
from llmos_jupyter.training import classification_metrics, evaluate


def test_metrics_hand_checked():
    # true:  0 0 0 1 1 2      pred: 0 1 0 1 2 2
    # class 0: TP 2, FP 0, FN 1 -> P 1,   R 2/3, F1 4/5
    # class 1: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
    # class 2: TP 1, FP 1, FN 0 -> P 1/2, R 1,   F1 2/3
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], 3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx([1, 0.5, 0.5])
    assert m["recall"] == pytest.approx([2 / 3, 0.5, 1])
    assert m["f1"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert m["support"] == [3, 2, 1]
    assert m["macro_f1"] == pytest.approx(float((Fraction(4, 5) + Fraction(1, 2) + Fraction(2, 3)) / 3))  # 0.6556


def test_macro_f1_skips_classes_absent_from_labels_and_predictions():
    # class 2 never occurs and is never predicted: it is left out of the mean (sklearn's rule);
    # class 1 is predicted once but never true: P 0, R 0, F1 0, and it counts.
    m = classification_metrics([0, 0, 0, 0], [0, 0, 0, 1], 3)
    assert m["f1"] == pytest.approx([2 * 0.75 / 1.75, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx((6 / 7 + 0.0) / 2)
    assert m["support"] == [4, 0, 0]


def test_evaluate_matches_row_by_row_forward(tiny_model, tiny_tokenizer):
    import datasets
    import torch

    model = tiny_model(num_labels=3, seed=3)
    texts = [
        "good movie",
        "the plot was dull and boring and very weak and messy and tedious",
        "a",
        "fun",
        None,
        42,
        "really quite superb acting the story was moving",
        "poor",
        "film film film film film",
        "witty and lovely",
    ]
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    ds = datasets.Dataset.from_dict(
        {"review": [t if t is None or isinstance(t, str) else str(t) for t in texts], "y": labels}
    )
    ds = ds.cast_column("review", datasets.Value("string"))
    r = evaluate(
        model,
        tiny_tokenizer,
        ds,
        text_column="review",
        label_column="y",
        batch_size=4,
        label_names=["neg", "pos", "mixed"],
    )

    # reference: each row alone, no padding at all
    ref = []
    with torch.no_grad():
        for t in ds["review"]:
            enc = tiny_tokenizer("" if t is None else t, return_tensors="pt")
            ref.append(model(**enc).logits[0])
    ref = torch.stack(ref).numpy()  # (n, C)
    np.testing.assert_allclose(r.logits, ref, atol=1e-5)
    pred = ref.argmax(axis=-1)
    assert r.predictions.tolist() == pred.tolist()
    assert r.accuracy == pytest.approx(np.mean(pred == np.array(labels)))
    m = classification_metrics(labels, pred, 3)
    assert r.macro_f1 == pytest.approx(m["macro_f1"]) and r.confusion == m["confusion"]
    assert [c["label"] for c in r.per_class] == ["neg", "pos", "mixed"]
    # loss = mean cross-entropy of the reference logits
    z = ref - ref.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert r.loss == pytest.approx(-logp[np.arange(10), labels].mean(), rel=1e-5)
    # worst rows: the misclassified ones, most confident first
    wrong = [i for i in range(10) if pred[i] != labels[i]]
    assert sorted(w["row"] for w in r.worst) == sorted(wrong)
    confs = [w["confidence"] for w in r.worst]
    assert confs == sorted(confs, reverse=True)
    for w in r.worst:
        assert w["predicted"] == ["neg", "pos", "mixed"][pred[w["row"]]]
        assert w["confidence"] == pytest.approx(float(np.exp(logp[w["row"], pred[w["row"]]])), rel=1e-6)
    assert not model.training
    bundle = r._repr_mimebundle_()
    assert "<table" in bundle["text/html"] and "macro_f1" in bundle["text/plain"]
    assert f"{r.accuracy:.4f}" in bundle["text/html"]


def test_evaluate_user_errors(tiny_model, tiny_tokenizer):
    import datasets

    model = tiny_model(num_labels=2)
    ds = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [0, -1]})
    with pytest.raises(UsageError, match=r"label column 'label'.* -1 at row 1"):
        evaluate(model, tiny_tokenizer, ds)
    with pytest.raises(NotFoundError, match=r"unknown column in the eval dataset 'txt' \(did you mean: text"):
        evaluate(model, tiny_tokenizer, ds, text_column="txt")
    with pytest.raises(UsageError, match=r"label_names has 3 names but the model has 2 classes"):
        evaluate(model, tiny_tokenizer, ds.select([0]), label_names=["a", "b", "c"])
    with pytest.raises(UsageError, match=r"no rows"):
        evaluate(model, tiny_tokenizer, ds.select([]))
