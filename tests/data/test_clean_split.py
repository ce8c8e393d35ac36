"""Cleaning rules, splits, versions/lineage, persistence and export on small real files."""

from __future__ import annotations

import json

import pytest

from llmos_jupyter.errors import NotFoundError, UsageError

DIRTY = [
    {"text": "Great<br /><br />film", "label": "pos"},
    {"text": "great film", "label": "pos"},
    {"text": "  awful   acting\n", "label": "neg"},
    {"text": "awful acting", "label": "neg"},
    {"text": "awful acting", "label": "pos"},  # conflicting copy
    {"text": "<i>Heat</i> is <grin> fine", "label": "pos"},
    {"text": "<br />", "label": "neg"},
    {"text": "ok", "label": "neg"},
    {"text": "x" * 50, "label": "pos"},
    {"text": "a dull, slow plot", "label": "neg"},
]


@pytest.fixture
def dirty(store):
    return store.load(DIRTY, name="dirty")


def test_every_rule_counts_and_order(store, dirty):
    v, r = store.clean("dirty", strip_html=True, normalize_whitespace=True, dedupe=True, min_chars=3, max_chars=40)
    assert v.version == 2 and v.parent == dirty.fingerprint
    assert [x.rule for x in r.rules] == [
        "strip_html",
        "normalize_whitespace",
        "drop_empty",
        "min_chars",
        "max_chars",
        "dedupe",
    ]
    sh = r.rule("strip_html")
    assert sh.changed == 3  # rows 0, 5, 6; "<grin>" is not HTML and stays
    assert sh.detail == {"rows with <br />": 2, "rows with <i>": 1, "rows with </i>": 1}
    assert (sh.examples[0]["before"], sh.examples[0]["after"]) == ("Great<br /><br />film", "Great\n\nfilm")
    assert r.rule("normalize_whitespace").changed == 3  # "Great\n\nfilm", "  awful   acting\n", "\n"
    assert (r.rule("drop_empty").removed, r.rule("drop_empty").detail) == (1, {"blank text": 1})
    assert (r.rule("min_chars").removed, r.rule("max_chars").removed) == (1, 1)  # "ok", "x"*50
    dd = r.rule("dedupe")
    assert dd.removed == 2  # the two later "awful acting" ("Great film" differs in case: kept)
    assert dd.detail == {"texts with copies": 1, "with conflicting labels (first kept)": 1}
    assert v["train"][0:10]["text"] == [
        "Great film",
        "great film",
        "awful acting",
        "Heat is <grin> fine",
        "a dull, slow plot",
    ]
    assert r.rows_before == {"train": 10} and r.rows_after == {"train": 5} and r.removed == 5  # 1+1+1+2
    html = r._repr_mimebundle_()["text/html"]
    assert "<code>strip_html</code>" in html and "rows with &lt;br /&gt;: 2" in html
    assert store.get("dirty", 1).num_rows == {"train": 10}  # original intact


def test_same_clean_twice_is_the_same_version_and_a_noop_is_still_new(store, dirty):
    a, _ = store.clean("dirty", dedupe=True)
    b, _ = store.clean("dirty", dedupe=True, version=1)
    assert (a.version, a.fingerprint) == (b.version, b.fingerprint) == (2, a.fingerprint)
    c, r = store.clean("dirty", drop_empty=False, version=1)  # changes nothing: still a version
    assert c.version == 3 and c.fingerprint != dirty.fingerprint and r.removed == 0


def test_label_map_ids_and_names(store, dirty):
    v, r = store.clean("dirty", label_map="neg=1,pos=0", drop_empty=False)
    assert v.label_names == ["pos", "neg"]
    assert v["train"][0:3]["label"] == [0, 0, 1]  # pos, pos, neg
    assert r.rule("label_map").changed == 10
    v, r = store.clean("dirty", label_map={"neg": "negative", "pos": "positive"}, drop_empty=False, version=1)
    assert v.label_names == ["negative", "positive"] and v["train"][0:3]["label"] == [1, 1, 0]
    with pytest.raises(NotFoundError, match="unknown label 'neutral'"):
        store.clean("dirty", label_map="neutral=0")
    with pytest.raises(UsageError, match="different id"):
        store.clean("dirty", label_map="neg=0,pos=0", version=1)
    with pytest.raises(UsageError, match="no '='"):
        store.clean("dirty", label_map="neg:0")


def test_split_fractions_counts_seed_and_validation(store):
    rows = [{"text": f"review number {i}", "label": "pos" if i % 4 else "neg"} for i in range(200)]
    store.load(rows, name="r")
    v = store.split("r", test=0.15, validation=20, seed=3)
    assert v.num_rows == {"train": 150, "validation": 20, "test": 30}
    assert v.operation == "split" and v.parent == store.get("r", 1).fingerprint
    names = v.label_names
    negs = {s: sum(names[x] == "neg" for x in v[s][0:n]["label"]) for s, n in v.num_rows.items()}
    assert negs == {"train": 37, "validation": 5, "test": 8}  # stratified: 25% of 150, 20, 30 (+-0.5)
    texts = {s: set(v[s][0:n]["text"]) for s, n in v.num_rows.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["validation"] & texts["test"])
    again = store.split("r", test=0.15, validation=20, seed=3, version=1)
    assert again.version == v.version  # same seed, same split, same version
    other = store.split("r", test=0.15, validation=20, seed=4, version=1)
    assert other.version == v.version + 1 and set(other["test"][0:30]["text"]) != texts["test"]
    with pytest.raises(UsageError, match="already split"):
        store.split("r")
    with pytest.raises(UsageError, match="between 0 and 1"):
        store.split("r", test=1.5, version=1)
    with pytest.raises(UsageError, match="no training rows"):
        store.split("r", test=150, validation=50, version=1)


def test_clean_after_split_leaves_test_untouched_and_warns(store, dirty):
    v = store.split("dirty", test=4, seed=0)
    test_rows = v["test"][0:4]
    with pytest.warns(UserWarning, match="held out"):
        c, r = store.clean("dirty", strip_html=True, dedupe=True)
    assert r.untouched == ["test"] and "held out" in r.warnings[0]
    assert c["test"][0:4] == test_rows and c.split_fingerprints["test"] == v.split_fingerprints["test"]
    assert c.split_fingerprints["train"] != v.split_fingerprints["train"]
    assert "warning: split 'test' is held out" in str(r)


def test_versions_lineage_and_restart(store, dirty, tmp_path):
    from llmos_jupyter.data import DataStore

    v2, _ = store.clean("dirty", dedupe=True)
    v3 = store.split("dirty", test=3)
    rows = store.versions("dirty")
    assert [(r["version"], r["operation"], r["rows"], r["parent_version"]) for r in rows] == [
        (1, "load", 10, None),
        (2, "clean", 9, 1),
        (3, "split", 9, 2),
    ]  # one "awful acting" copy
    assert rows[1]["parent"] == rows[0]["fingerprint"] and rows[2]["parent"] == rows[1]["fingerprint"]
    assert rows[2]["splits"] == {"train": 6, "test": 3}
    restarted = DataStore(store.root)  # a new kernel: everything comes back from disk
    assert restarted.names() == ["dirty"]
    assert restarted.get("dirty").fingerprint == v3.fingerprint
    back = restarted.get("dirty", 2)
    assert back["train"][0:9] == v2["train"][0:9] and back.split_fingerprints == v2.split_fingerprints
    assert restarted.list() == [
        {
            "name": "dirty",
            "version": 3,
            "rows": 9,
            "fingerprint": v3.fingerprint,
            "splits": {"train": 6, "test": 3},
            "versions": 3,
            "operation": "split",
        }
    ]
    m = v3.manifest()
    assert m["fingerprint"] == v3.fingerprint and m["splits"]["test"]["rows"] == 3
    assert v3.summary() == {
        "name": "dirty",
        "version": 3,
        "rows": 9,
        "fingerprint": v3.fingerprint,
        "splits": {"train": 6, "test": 3},
    }


def test_export_formats_round_trip(store, dirty, tmp_path, tree):
    import pandas as pd

    [csv] = store.export("dirty", tmp_path / "out" / "d.csv", format="csv")
    df = pd.read_csv(csv)
    assert list(df.columns) == ["text", "label"] and df["label"].tolist()[:3] == ["pos", "pos", "neg"]
    [jl] = store.export("dirty", tmp_path / "d.jsonl", format="jsonl")
    first = json.loads(jl.read_text().splitlines()[0])
    assert first == {"text": "Great<br /><br />film", "label": "pos"}
    back = store.load(jl, name="d_back")
    assert back.num_rows == {"train": 10} and back.label_names == ["neg", "pos"]
    store.split("dirty", test=3)
    out = tmp_path / "splits"
    paths = store.export("dirty", out)  # several splits: a folder, one file per split
    assert sorted(p.name for p in paths) == ["test.parquet", "train.parquet"]
    assert store.load(out / "test.parquet", name="t").num_rows == {"train": 3}
    before = tree(tmp_path)
    with pytest.raises(UsageError, match="exists; nothing was written — add overwrite=True"):
        store.export("dirty", out)
    with pytest.raises(NotFoundError, match="unknown format 'xlsx'"):
        store.export("dirty", tmp_path / "x.xlsx", format="xlsx")
    assert tree(tmp_path) == before
    assert store.export("dirty", out, overwrite=True) == paths


def test_clean_that_would_empty_a_split_changes_nothing(store, dirty, tree):
    before = tree(store.root)
    with pytest.raises(UsageError, match="remove all 10 rows"):
        store.clean("dirty", min_chars=1000)
    with pytest.raises(UsageError, match="above max_chars"):
        store.clean("dirty", min_chars=10, max_chars=5)
    assert tree(store.root) == before


def test_sample_is_stratified_seeded_and_a_version(store):
    rows = [{"text": f"review {i}", "label": "pos" if i % 4 else "neg"} for i in range(200)]
    store.load(rows, name="r")
    s = store.sample("r", 40, seed=1)
    assert (s.version, s.operation, s.num_rows) == (2, "sample", {"train": 40})
    assert sum(s.label_names[x] == "neg" for x in s["train"][0:40]["label"]) == 10
    assert store.sample("r", 40, seed=1, version=1).version == 2  # same seed: same version
    assert store.sample("r", 0.1, seed=1, version=1).num_rows == {"train": 20}
    with pytest.raises(UsageError, match="fewer"):
        store.sample("r", 500, version=1)
