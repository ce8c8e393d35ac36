"""``api.optimize`` / ``%llm optimize`` on tiny random models: the table's numbers against
independent measurements, the new alias in classify / eval / export / ps / unload, the run
registry, and every bad input as one line that leaves nothing behind."""

from __future__ import annotations

import gc
import os
import weakref

import pytest
from IPython.core.interactiveshell import InteractiveShell

from llmos_jupyter.errors import UsageError

WORDS = {
    1: ["great movie", "a gorgeous, witty, seductive movie", "hello world"],
    0: ["awful film", "this film was a complete waste of two hours", "the lazy dog"],
}


@pytest.fixture
def tb(fresh_api, tiny_bert):
    """``fresh_api`` with the tiny BERT loaded as seq-cls alias ``tb`` and a labelled dataset
    ``sent`` (48 rows, train 36 / test 12)."""
    rows = [
        {"text": WORDS[i % 2][(i // 2) % 3] + ("" if i % 3 else " !"), "label": ["negative", "positive"][i % 2]}
        for i in range(48)
    ]
    fresh_api.data_load(rows, name="sent")
    fresh_api.data_split("sent", test=0.25, seed=0)
    fresh_api.load(str(tiny_bert), task="seq-cls", labels="negative,positive", alias="tb")
    return fresh_api


def _row(table, name):
    return next(r for r in table.data if r["measure"].startswith(name))


def _logits(api, alias, texts=("great movie", "awful film")):
    import torch

    with api.manager().use(alias) as rec:
        enc = rec.tokenizer(list(texts), padding=True, return_tensors="pt")
        with torch.inference_mode():
            return rec.model(**enc).logits.clone()


def test_int8_table_matches_independent_measurements(tb, tmp_path):
    api = tb
    original = _logits(api, "tb")
    table = api.optimize("tb", quantize="int8", eval="sent", repeats=1, speed_batches=1)
    assert table.alias == "tb-int8" and table.columns == ["", "tb", "tb-int8", "change"]
    assert _logits(api, "tb").equal(original)  # the original is untouched
    # accuracy: a separate evaluate call on each alias gives the table's numbers
    acc = _row(table, "accuracy")
    assert acc["before"] == api.evaluate("tb", "sent").accuracy
    assert acc["after"] == api.evaluate("tb-int8", "sent").accuracy
    # file size: the run's checkpoint on disk, stat'ed here
    run = api.registry().get(table.run_id)
    assert run.kind == "optimize" and run.status == "completed" and run.model == "tb"
    assert run.config["quantize"] == "int8" and run.config["new_alias"] == "tb-int8" and run.config["split"] == "test"
    weights = os.path.join(run.checkpoint, "model_quantized.pt")
    assert _row(table, "file size")["after"] == os.stat(weights).st_size
    assert run.metrics["after.disk_bytes"] == os.stat(weights).st_size
    assert run.metrics["after.accuracy"] == acc["after"] and run.metrics["accuracy"] == acc["after"]
    # parameters and bytes as the manager sees the new alias
    rec = api.manager().get("tb-int8")
    assert _row(table, "parameters")["after"] == rec.params == _row(table, "parameters")["before"]
    lin = _row(table, "linear weights")
    assert lin["after"] < lin["before"] / 2  # int8 + a float64 scale and int64 zero point per row of 32
    for name in ("latency per batch of 32", "samples/s"):
        assert _row(table, name)["before"] > 0 and _row(table, name)["after"] > 0
    assert "torch.ao quantize_dynamic" in table.note and f"run {table.run_id}" in table.note


def test_new_alias_is_an_ordinary_model(tb, tmp_path):
    import torch

    from llmos_jupyter.optimize.quantize import load_quantized

    api = tb
    api.optimize("tb", quantize="int8", repeats=1, speed_batches=1, as_="small")  # no --eval: speed texts only
    ps = {m["alias"]: m for m in api.ps().data}
    assert ps["small"]["dtype"] == "int8 dynamic" and ps["small"]["state"] == "ready"
    assert ps["small"]["optimized"]["source"] == "tb" and ps["small"]["optimized"]["quantize"] == "int8"
    assert ps["small"]["real_bytes"]["cpu"] >= sum(ps["small"]["bytes"].values()) > 0
    assert api.classify("small", "great movie").data[0]["label"] in ("negative", "positive")
    out = api.export("small", str(tmp_path / "exp"))
    assert "model_quantized.pt" in out["files"] and "llmos_quantization.json" in out["files"]
    again = load_quantized(tmp_path / "exp")
    enc = api.manager().get("small").tokenizer(["great movie"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(again(**enc).logits, _logits(api, "small", ["great movie"]))
    ref = weakref.ref(api.manager().get("small").model)
    api.unload("small")
    gc.collect()
    assert ref() is None and "small" not in api.manager().aliases() and "tb" in api.manager().aliases()


def test_recovery_fine_tune_and_structured_rows(tb):
    api = tb
    table = api.optimize(
        "tb", prune=0.5, structured="ffn", recover_epochs=1, eval="sent", repeats=1, speed_batches=1, progress=False
    )
    assert table.alias == "tb-p50f-r1"
    assert _row(table, "FFN neurons per layer")["before"] == 64 and _row(table, "FFN neurons per layer")["after"] == 32
    rec_row = _row(table, "recovery fine-tune")
    assert rec_row["after"] > 0 and "1 epoch(s), 2 steps" in rec_row["change"]  # 36 train rows at batch 32
    assert _row(table, "accuracy")["after"] == api.evaluate("tb-p50f-r1", "sent").accuracy
    rec = api.manager().get("tb-p50f-r1")
    assert rec.model.config.intermediate_size == 32 and rec.optimized["recover_epochs"] == 1
    # neurons ranked on the train split (36 rows: batches of 32 and 4), said in the table's note
    assert "heads/neurons ranked by first-order Taylor importance on 2 batches" in table.note


def test_structured_pruning_ranks_on_the_train_split_it_is_given(tb):
    """With --eval, the neurons kept are the top half of prune.taylor_scores on the train rows
    (computed here again from the same batches); without --eval, by weight magnitude."""
    import torch

    from llmos_jupyter.optimize import prune
    from llmos_jupyter.optimize.command import calibration_batches
    from llmos_jupyter.training.jobs import prepare_split

    api = tb
    table = api.optimize("tb", prune=0.5, structured="ffn", eval="sent", repeats=1, speed_batches=1, as_="by-data")
    src, dv = api.manager().get("tb"), api.data_get("sent")
    train = prepare_split(dv, "train", src)
    batches = calibration_batches(src, dv, train, max_length=128, device="cpu")
    assert [len(b["labels"]) for b in batches] == [32, 4]
    scores = prune.taylor_scores(src.model, "ffn", batches)["ffn"]
    src_layers, new_layers = src.model.bert.encoder.layer, api.manager().get("by-data").model.bert.encoder.layer
    for s, old, new in zip(scores, src_layers, new_layers):
        keep = torch.topk(s, 32).indices.sort().values
        assert torch.equal(new.intermediate.dense.weight, old.intermediate.dense.weight[keep])
    assert "first-order Taylor importance on 2 batches" in table.note
    table = api.optimize("tb", prune=0.5, structured="ffn", repeats=1, speed_batches=1, as_="by-weight")
    assert "heads/neurons ranked by weight magnitude" in table.note
    assert "speed measured on built-in texts (give --eval DATA to time your own)" in table.note


def test_the_note_says_what_the_numbers_are_not():
    """A llama.cpp alias is measured through its GGUF's transformers weights (read for the call);
    a dataset without a train split leaves the ranking to weight magnitude; an embedding model has
    no loss to rank on, so no train-split remark."""
    from types import SimpleNamespace as NS

    from llmos_jupyter.optimize.command import _caveats

    def req(engine="transformers", task="seq-cls", dv=NS(name="onlytest"), train=None, structured=("ffn",)):
        return NS(alias="smol", rec=NS(engine=engine), task=task, dv=dv, train=train, plan=NS(structured=structured))

    assert _caveats(req(), attached=False) == [
        "'onlytest' has no train split to rank heads/neurons on, so weight magnitude ranked them"
    ]
    assert _caveats(req(task="embedding"), attached=False) == []
    assert _caveats(req(train=object()), attached=False) == []
    (llama,) = _caveats(req(engine="llama.cpp", task="causal-lm", structured=None), attached=True)
    assert llama.startswith("'smol' serves on llama.cpp: both columns measure the float32 transformers weights")
    assert llama.endswith("; they were read from the GGUF for this call and dropped after it")
    (again,) = _caveats(req(engine="llama.cpp", task="causal-lm", structured=None), attached=False)
    assert "dropped" not in again  # weights it had before (a fine-tune's): they stay


@pytest.mark.parametrize(
    ("kw", "suffix"),
    [
        ({"prune": 0.3}, "p30"),
        ({"prune": 0.5, "structured": ("ffn",), "recover_epochs": 1}, "p50f-r1"),
        ({"prune": 0.999999, "structured": ("ffn",)}, "p99.9999f"),  # a user's case: it was named p100
        ({"prune": 0.004, "quantize": "int8"}, "p0.4-int8"),  # and this one p0
        ({"quantize": "int8-weight", "compile": True}, "int8w-compiled"),
    ],
)
def test_the_new_alias_names_the_amount_pruned_exactly(kw, suffix):
    from llmos_jupyter.optimize.driver import Plan

    assert Plan(**kw).suffix() == suffix


def test_heads_pruned_bert_export_is_refused_in_one_line(tb, tmp_path):
    api = tb
    api.optimize("tb", prune=0.5, structured="heads", repeats=1, speed_batches=1)
    with pytest.raises(UsageError, match="attention heads pruned from BERT-type layers.* --structured ffn"):
        api.export("tb-p50h", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(quantize="int3"), "unknown quantisation level 'int3'"),
        (dict(quantize="int4"), "--quantize int4 is not available on cpu"),
        (dict(prune=1.5), "strictly between 0 and 1 (got 1.5)"),
        (dict(prune=0.0), "strictly between 0 and 1 (got 0.0)"),
        (dict(structured="heads"), "--structured says which parts to prune; add --prune AMOUNT"),
        (dict(prune=0.3, structured="layers"), "unknown --structured 'layers'"),
        (
            dict(prune=0.1, structured="heads"),
            "--prune 0.1 of 4 heads per layer removes none; use --prune 0.38 or more",
        ),
        (dict(quantize="int8", recover_epochs=1, eval="sent"), "--recover-epochs fine-tunes after pruning"),
        (dict(prune=0.3, recover_epochs=1), "--recover-epochs fine-tunes on a dataset's train split; add --eval"),
        (dict(quantize="int8", eval="sent:validation"), "dataset 'sent' has no 'validation' split (it has "),
        (dict(quantize="int8", eval="nope"), "unknown dataset 'nope'"),
        (dict(), "nothing to do"),
        (dict(quantize="int8", as_="tb"), "alias 'tb' is already loaded"),
    ],
)
def test_bad_inputs_are_one_line_and_leave_nothing(tb, kw, message):
    api = tb
    with pytest.raises(Exception) as e:
        api.optimize("tb", **kw)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert api.manager().aliases() == ["tb"]
    assert not [r for r in api.runs() if r.kind == "optimize"]


def test_int8_of_int8_and_a_model_in_training_are_refused(tb):
    api = tb
    api.optimize("tb", quantize="int8", repeats=1, speed_batches=1)
    with pytest.raises(UsageError, match=r"already quantised \(int8\)"):
        api.optimize("tb-int8", quantize="int8")
    with pytest.raises(UsageError, match=r"weights are quantised \(int8\); prune its float original"):
        api.optimize("tb-int8", prune=0.3)
    with api.manager().use("tb", exclusive="job-7"):  # what a fine-tune job holds while it trains
        with pytest.raises(UsageError, match="'tb' is being fine-tuned by job-7; wait with `%llm job wait job-7`"):
            api.optimize("tb", quantize="int8", as_="other")
    assert sorted(api.manager().aliases()) == ["tb", "tb-int8"]
    assert len([r for r in api.runs() if r.kind == "optimize"]) == 1


def test_magic_prints_one_line_and_the_table(tb, capsys):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    ip.run_line_magic("llm", "optimize tb --quantize int4 --eval sent")
    err = capsys.readouterr().err
    assert err.startswith("llmos: --quantize int4 is not available on cpu") and err.count("\n") == 1, err
    ip.run_line_magic("llm", "optimize tb --distill 0.5")  # an unknown technique
    assert capsys.readouterr().err == "llmos: unknown option --distill for `%llm optimize`; see `%llm help optimize`\n"
    table = ip.run_line_magic("llm", "optimize tb --prune 0.3 --repeats 1 --as tb30")
    assert table.alias == "tb30" and _row(table, "sparsity")["after"] == pytest.approx(0.3, abs=0.01)
    helptext = str(ip.run_line_magic("llm", "help optimize"))
    for flag in (
        "--quantize LEVEL",
        "--prune AMOUNT",
        "--structured PARTS",
        "--compile",
        "--eval DATA",
        "--generate",
        "--recover-epochs N",
        "--as NEW",
    ):
        assert flag in helptext, helptext


def test_causal_lm_generate_and_embedding_cosine(fresh_api, tiny_llama, tiny_bert):
    api = fresh_api
    rows = [{"prompt": "hello world", "response": "great movie"}, {"prompt": "awful film", "response": "hello"}] * 6
    api.data_load(rows, name="pairs")
    api.data_split("pairs", test=0.5, seed=0)
    api.load(str(tiny_llama), task="causal-lm", alias="lm")
    table = api.optimize("lm", quantize="int8", eval="pairs", generate=True, limit=4, repeats=1, max_new_tokens=4)
    names = [r["measure"] for r in table.data]
    assert "tokens/s (greedy decode)" in names and "time to first token" in names
    assert _row(table, "accuracy")["after"] == api.evaluate("lm-int8", "pairs", generate=True, limit=4).accuracy
    assert _row(table, "tokens/s")["after"] > 0
    assert isinstance(api.generate("lm-int8", "hello", max_new_tokens=3, stream=False), str)
    # structured pruning of a causal-lm ranks on the response tokens of the train pairs
    table = api.optimize("lm", prune=0.5, structured="heads,ffn", eval="pairs", limit=4, repeats=1, max_new_tokens=4)
    assert "first-order Taylor importance on 1 batch" in table.note
    assert _row(table, "FFN neurons per layer")["after"] == 32 and _row(table, "attention heads")["after"] == 2
    assert isinstance(api.generate("lm-p50hf", "hello", max_new_tokens=3, stream=False), str)
    # its calibration batches: 8 rows at most (logits over the vocabulary), loss on the response only
    from llmos_jupyter.optimize.command import calibration_batches
    from llmos_jupyter.training.jobs import prepare_sft_split
    from llmos_jupyter.training.sft import render_pair

    rows = [{"prompt": f"hello world {i}", "response": "great movie"} for i in range(20)]
    api.data_load(rows, name="pairs20")
    dv = api.data_get("pairs20")
    src = api.manager().get("lm")
    batches = calibration_batches(src, dv, prepare_sft_split(dv, "train"), max_length=64, device="cpu")
    assert [len(b["input_ids"]) for b in batches] == [8, 8, 4]
    b = batches[0]
    assert b["labels"].shape == b["input_ids"].shape and (b["labels"][:, 0] == -100).all()
    reply = render_pair(src.tokenizer, "hello world 0", "great movie")[1]  # the response as trained on
    assert ((b["labels"] != -100).sum(1) == len(src.tokenizer(reply, add_special_tokens=False)["input_ids"])).all()
    api.load(str(tiny_bert), task="embedding", alias="emb")
    table = api.optimize("emb", quantize="int8", eval="pairs:train", repeats=1, speed_batches=1)
    cos = _row(table, "cosine_to_original")
    assert cos["before"] == pytest.approx(1.0, abs=1e-6) and 0.9 < cos["after"] <= 1.0 + 1e-6
    assert api.embed("emb-int8", "hello world").shape == (1, 32)


def test_an_interrupted_recovery_ends_the_run_as_interrupted(tb, monkeypatch):
    """Stop during the recovery fine-tune: the run is recorded as interrupted (as a Stop in any
    other phase), not failed, and no alias is registered."""
    import importlib

    ft = importlib.import_module("llmos_jupyter.training.finetune")  # the module (the package's name is the function)

    real = ft.finetune

    def stopped(*args, **kwargs):
        res = real(*args, **kwargs)
        res.status = "interrupted"
        return res

    monkeypatch.setattr(ft, "finetune", stopped)
    api = tb
    before = {r.id for r in api.registry().list()}
    with pytest.raises(KeyboardInterrupt):
        api.optimize("tb", prune=0.5, structured="ffn", recover_epochs=1, eval="sent", repeats=1, speed_batches=1)
    (run,) = [r for r in api.registry().list() if r.id not in before]
    assert run.kind == "optimize" and run.status == "interrupted"
    assert api.manager().aliases() == ["tb"]
