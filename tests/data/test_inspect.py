"""The inspector: counts, markup, static HTML and the ipywidgets view."""

from __future__ import annotations

ROWS = [
    {"text": f"row {i} is <b>bold</b>" if i % 10 == 0 else f"row {i}", "label": "pos" if i % 3 else "neg"}
    for i in range(23)
] + [
    {"text": "row 1", "label": "neg"},  # duplicate of row 1 (pos): conflicting
    {"text": "row 2", "label": "pos"},  # duplicate, same label
    {"text": "caf&eacute; &amp; <!-- c --> &H;", "label": "neg"},
]


def test_counts_markup_and_lengths(store):
    store.load(ROWS, name="t")
    r = store.show("t")
    assert r.rows == {"train": 26}
    assert r.label_counts == {"train": {"neg": 10, "pos": 16}}  # 8 of 0..22 divide by 3, +2
    assert (r.missing, r.blank, r.duplicates, r.duplicate_texts) == (0, 0, 2, 2)
    assert (r.conflicting, r.conflicting_rows) == (1, 2)
    # <b> in rows 0, 10, 20; entities that decode (&eacute; &amp;) and the comment; "&H;" is not one
    assert r.markup == {"</b>": 3, "<b>": 3, "&amp;": 1, "&eacute;": 1, "<!-- -->": 1}
    assert (r.chars.min, r.chars.max, r.chars.n) == (5, 32, 26)
    assert sum(r.chars.counts) == 26
    assert r.schema == [("text", "string", "text"), ("label", "ClassLabel(neg, pos)", "label")]
    assert r.overlap == {}


def test_overlap_between_splits(store):
    store.load(ROWS, name="t")
    v = store.split("t", test=8, stratify=None, seed=1)
    r = store.show("t")
    assert r.rows == {"train": 18, "test": 8}
    train = set(v["train"][0:18]["text"])
    assert r.overlap == {"test": sum(t in train for t in v["test"][0:8]["text"])}


def test_static_html_and_widget(store):
    import ipywidgets as w

    store.load(ROWS, name="t")
    r = store.show("t")
    bundle = r._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    html = bundle["text/html"]
    assert html.count("data:image/png;base64,") == 2  # label bars + length histogram
    assert "row 0 is &lt;b&gt;bold&lt;/b&gt;" in html  # markup shown, escaped
    view = r.widget()
    assert isinstance(view, w.VBox)
    tab = view.children[1]
    assert [tab.get_title(i) for i in range(len(tab.children))] == ["rows", "schema & quality", "labels", "lengths"]
    rows_box = tab.children[0]
    controls, table = rows_box.children
    split, prev, page, nxt, total = controls.children
    assert total.value == "of 3 (26 rows)" and table.value.count("<tr>") == 11  # header + 10
    nxt.click()
    nxt.click()
    assert page.value == 3 and table.value.count("<tr>") == 7  # rows 20..25
    assert "<td>25</td>" in table.value
    nxt.click()
    assert page.value == 3
    prev.click()
    assert page.value == 2 and "<td>10</td>" in table.value
    assert isinstance(tab.children[2], w.Image) and tab.children[2].value[:4] == b"\x89PNG"
    shown = view._repr_mimebundle_()  # live view + the static report for saved notebooks
    assert "application/vnd.jupyter.widget-view+json" in shown
    assert shown["text/html"] == html and shown["text/plain"] == str(r)


def test_unlabelled_and_missing_labels(store):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": None}, {"text": "c", "label": "y"}]
    store.load(rows, name="m")
    r = store.show("m")
    assert r.label_counts == {"train": {"x": 1, "y": 1, "(missing)": 1}}
    v, rep = store.clean("m")
    assert rep.rule("drop_empty").detail == {"missing label": 1} and v.num_rows == {"train": 2}
    store.load(rows, name="u", label_column=False)
    r = store.show("u")
    assert r.label_counts == {} and r.label_png() is None and "label" not in r._repr_html_().split("</div>")[0]
