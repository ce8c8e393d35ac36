"""Embeddings (mean pooling as sentence-transformers) and search with its cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def reference(model, tok, texts):
    """The all-MiniLM-L6-v2 model card recipe: plain transformers + mean pooling + L2 norm."""
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    mask = enc["attention_mask"].unsqueeze(-1).expand(out[0].size()).float()
    vec = torch.sum(out[0] * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
    return torch.nn.functional.normalize(vec, p=2, dim=1).numpy()


def test_cat_on_the_mat_matches_the_reference(minilm):
    from llmos_jupyter.models.embedding import embed

    model, tok = minilm
    ours = embed(model, tok, ["The cat sits on the mat"])
    ref = reference(model, tok, ["The cat sits on the mat"])
    cos = float(ours[0] @ ref[0])
    print(f"cosine(ours, reference) = {cos:.7f}")
    assert ours.shape == (1, 384) and ours.dtype == np.float32
    assert cos >= 0.999 and abs(np.linalg.norm(ours[0]) - 1) < 1e-5


def test_length_sorted_batches_change_nothing(minilm):
    from llmos_jupyter.models.embedding import embed

    model, tok = minilm
    texts = ["hi", "The cat sits on the mat", "a " * 300, "", "a gorgeous, witty, seductive movie"] * 3
    ours = embed(model, tok, texts, batch_size=4)
    one_by_one = np.concatenate([reference(model, tok, [t if t else ""]) for t in texts[:5]])
    # the reference truncates at 512 tokens, ours at 256: compare the long text separately
    keep = [0, 1, 3, 4]
    assert np.abs(ours[keep] - one_by_one[keep]).max() < 1e-5
    assert np.abs(ours[:5] - ours[5:10]).max() < 1e-6  # order and batch neighbours do not matter
    long_ref = reference(model, tok.__class__.from_pretrained(tok.name_or_path, model_max_length=256), [texts[2]])
    assert float(ours[2] @ long_ref[0]) > 0.9999
    raw = embed(model, tok, texts[:2], normalize=False)
    assert np.linalg.norm(raw, axis=1).min() > 1.5  # unnormalised mean vectors
    assert embed(model, tok, []).shape == (0, 384)
    model.train()
    embed(model, tok, ["x"])
    assert model.training  # mode restored
    model.eval()


def test_mean_pool_ignores_padding():
    from llmos_jupyter.models.embedding import mean_pool

    h = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert mean_pool(h, m).tolist() == [[1.0, 2.0], [0.0, 0.0]]


def test_search_small_and_cache_per_split(store, minilm):
    model, tok = minilm
    rows = [
        {"text": t, "label": y}
        for t, y in [
            ("a dull, slow plot", "neg"),
            ("the acting was superb", "pos"),
            ("I fell asleep halfway", "neg"),
            ("a joyful, moving film", "pos"),
            ("the soundtrack is wonderful", "pos"),
            ("predictable and boring", "neg"),
        ]
    ]
    store.load(rows, name="s")
    r = store.search("s", "a boring story that drags", k=2, model=model, tokenizer=tok, model_key="minilm")
    assert {x["text"] for x in r} == {"predictable and boring", "a dull, slow plot"}
    assert r.labels == ["neg", "neg"] and r[0]["score"] >= r[1]["score"]
    assert (r.cached, r.embedded_rows, store.cache.embedded_rows) == (False, 6, 6)
    assert "2. " in str(r) and "<table>" in r._repr_mimebundle_()["text/html"]
    store.split("s", test=2, stratify=None)
    r = store.search("s", "boring", model=model, tokenizer=tok, model_key="minilm")
    assert r.embedded_rows == 6 and {x["split"] for x in r} == {"train", "test"}
    with pytest.warns(UserWarning):
        store.clean("s", min_chars=19)  # changes train only; test keeps its fingerprint and vectors
    r = store.search("s", "boring", model=model, tokenizer=tok, model_key="minilm")
    assert r.embedded_rows == store.get("s").num_rows["train"]
    r = store.search("s", "boring", k=100, model=model, tokenizer=tok, model_key="minilm", split="test")
    assert r.cached and len(r) == 2
    from llmos_jupyter.errors import UsageError

    with pytest.raises(UsageError, match="query is empty"):
        store.search("s", "  ", model=model, tokenizer=tok, model_key="minilm")


@pytest.mark.slow
def test_rotten_tomatoes_boring_predictable_plot(tmp_path, minilm, movie_reviews_dir):
    from llmos_jupyter.data import DataStore

    model, tok = minilm
    store = DataStore(tmp_path / "datasets")
    store.load("movie-reviews:rotten_tomatoes")
    first = store.search(
        "rotten_tomatoes", "a boring, predictable plot", k=5, model=model, tokenizer=tok, model_key="all-minilm-l6-v2"
    )
    print(first)
    negatives = first.labels.count("negative")
    print(f"top-5 negatives: {negatives}/5")
    assert negatives >= 4
    assert (first.cached, first.embedded_rows) == (False, 8_530)
    scores = [r["score"] for r in first]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    # the score is the cosine of the query and the row, embedded alone
    from llmos_jupyter.models.embedding import embed

    q, top = embed(model, tok, ["a boring, predictable plot", first[0]["text"]])
    assert abs(float(q @ top) - scores[0]) < 1e-5
    second = store.search(
        "rotten_tomatoes", "a boring, predictable plot", k=5, model=model, tokenizer=tok, model_key="all-minilm-l6-v2"
    )
    assert (second.cached, second.embedded_rows, store.cache.embedded_rows) == (True, 0, 8_530)
    assert second.rows == first.rows
    restarted = DataStore(tmp_path / "datasets")  # new kernel: vectors come from the disk cache
    third = restarted.search(
        "rotten_tomatoes", "a boring, predictable plot", k=5, model=model, tokenizer=tok, model_key="all-minilm-l6-v2"
    )
    assert third.cached and restarted.cache.embedded_rows == 0 and third.rows == first.rows


def test_search_uses_the_embedding_alias_already_loaded_from_the_catalog_model(fresh_api, capsys):
    """A user's report: with `all-minilm-l6-v2` loaded as `mini`, `%llm data search` loaded a second
    copy under the catalog name. The loaded alias answers (same weights, same results)."""
    api = fresh_api
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(["a dull, boring plot", "a witty, moving film", "meh"])]
    api.data_load(rows, name="rows")
    api.load("all-minilm-l6-v2", task="embedding", alias="mini")
    found = api.data_search("rows", "boring story", k=2)
    assert api.manager().aliases() == ["mini"]
    assert found.rows[0]["text"] == "a dull, boring plot" and found.embedded_rows == 3
    again = api.data_search("rows", "boring story", k=2, model="mini")
    assert again.rows == found.rows and again.cached  # one model, one cache of row embeddings
    api.unload("mini")
    capsys.readouterr()
    api.data_search("rows", "boring story", k=2)  # none loaded: the catalog model is loaded on demand
    assert api.manager().aliases() == ["all-minilm-l6-v2"]
    assert capsys.readouterr().err == (
        "llmos: note: loaded all-minilm-l6-v2 as the embedding alias 'all-minilm-l6-v2' for this search; it stays "
        "loaded for the next one (`%llm unload all-minilm-l6-v2` frees it)\n"
    )
