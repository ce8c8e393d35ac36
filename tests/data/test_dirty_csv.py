"""A dirty CSV with missing, blank, numeric-looking text and string
labels. Missing stays missing, numbers in text stay text, labels become a ClassLabel."""

from __future__ import annotations

from datasets import ClassLabel, Value

TEXTS = ["great film", None, "terrible acting", "  ", "42", 'a "quoted" line', "NaN"]


def test_load_keeps_42_and_nan_as_text(store, dirty_csv):
    v = store.load(dirty_csv)
    assert v.name == "dirty" and v.version == 1 and v.operation == "load" and v.parent is None
    assert list(v.splits) == ["train"] and v.num_rows == {"train": 7}
    assert v.text_column == "text" and v.label_column == "label"
    train = v["train"]
    assert train.features["text"] == Value("string")
    assert train[0:7]["text"] == TEXTS  # "42" and "NaN" are strings; only the empty field is missing


def test_labels_become_class_label_with_sorted_names(store, dirty_csv):
    v = store.load(dirty_csv)
    assert v.label_names == ["neg", "pos"]
    assert v["train"].features["label"] == ClassLabel(names=["neg", "pos"])
    assert v["train"][0:7]["label"] == [1, 0, 0, 1, 0, 1, 0]


def test_inspector_reports_one_missing_one_blank(store, dirty_csv):
    store.load(dirty_csv)
    r = store.show("dirty")
    assert (r.missing, r.blank, r.duplicates, r.conflicting) == (1, 1, 0, 0)
    assert r.rows == {"train": 7}
    assert r.label_counts == {"train": {"neg": 4, "pos": 3}}
    text = r._repr_mimebundle_()["text/plain"]
    assert "1 missing, 1 blank" in text
    assert "<th style='text-align:left'>missing text</th><td style='text-align:left'>1</td>" in r._repr_html_()


def test_default_clean_removes_exactly_those_rows_and_says_which(store, dirty_csv):
    v1 = store.load(dirty_csv)
    v2, report = store.clean("dirty")
    assert v2.version == 2 and v2.parent == v1.fingerprint and v2.operation == "clean"
    assert v2["train"][0:5]["text"] == ["great film", "terrible acting", "42", 'a "quoted" line', "NaN"]
    assert v2["train"][0:5]["label"] == [1, 0, 0, 1, 0]
    rule = report.rule("drop_empty")
    assert rule.removed == 2 and report.removed == 2
    assert rule.detail == {"missing text": 1, "blank text": 1}
    assert [(e["row"], e["reason"], e["text"]) for e in rule.examples] == [
        (1, "missing text", None),
        (3, "blank text", "  "),
    ]
    text = str(report)
    assert "train[1] missing text: None" in text and "train[3] blank text: '  '" in text
    # the original is intact
    assert store.get("dirty", 1)["train"][0:7]["text"] == TEXTS


def test_stratified_split_works_on_string_labels(store, dirty_csv):
    store.load(dirty_csv)
    store.clean("dirty")
    v3 = store.split("dirty", test=2, seed=0)
    assert v3.num_rows == {"train": 3, "test": 2}
    names = v3.label_names
    assert sorted(names[i] for i in v3["test"][0:2]["label"]) == ["neg", "pos"]  # one of each
    train_labels = sorted(names[i] for i in v3["train"][0:3]["label"])
    assert train_labels == ["neg", "neg", "pos"]
    assert sorted(v3["train"][0:3]["text"] + v3["test"][0:2]["text"]) == sorted(
        ["great film", "terrible acting", "42", 'a "quoted" line', "NaN"]
    )


def test_tokenising_never_raises_on_a_non_string_cell(store, dirty_csv, minilm):
    from llmos_jupyter.models.embedding import embed

    model, tok = minilm
    store.load(dirty_csv)
    r = store.show("dirty", tokenizer=tok, max_length=3)
    # [CLS] great film [SEP] = 4, missing -> "" = 2, 4, blank = 2, [CLS] 42 [SEP] = 3,
    # [CLS] a " quoted " line [SEP] = 7, [CLS] nan [SEP] = 3: three of seven exceed 3 tokens
    assert r.tokens.n == 7 and (r.tokens.min, r.tokens.max) == (2, 7)
    assert abs(r.tokens.mean - 25 / 7) < 1e-9 and abs(r.tokens.truncated - 3 / 7) < 1e-9
    assert "42.9% longer than max_length=3" in str(r)
    vecs = embed(model, tok, [None, 42, float("nan"), "NaN"])
    assert vecs.shape == (4, 384)


def test_same_rule_for_dataframes_and_jsonl(store, tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        {"text": ["great film", None, 42, float("nan"), "NaN"], "label": ["pos", "neg", "neg", "pos", "neg"]}
    )
    v = store.load("df", namespace={"df": df})
    assert v["train"][0:5]["text"] == ["great film", None, "42", None, "NaN"]
    p = tmp_path / "dirty.jsonl"
    p.write_text(
        '{"text": "great film", "label": "pos"}\n{"text": null, "label": "neg"}\n'
        '{"text": 42, "label": "neg"}\n{"label": "pos"}\n{"text": "NaN", "label": "neg"}\n'
    )
    v = store.load(p)
    assert v["train"][0:5]["text"] == ["great film", None, "42", None, "NaN"]
    assert v.label_names == ["neg", "pos"]
