"""Export (api.export, %llm export) on tiny random models, causal-lm fine-tuning through the API,
the eval / runs magics, and bad input that must leave nothing in the registry or checkpoints."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from llmos_jupyter.errors import UsageError
from llmos_jupyter.training.export import MANIFEST, export_model

PAIRS = [
    {"prompt": "hello world", "response": "great movie"},
    {"prompt": "what is the capital of france?", "response": "paris."},
]


def _load_plain(path, cls="AutoModelForCausalLM"):
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    return getattr(transformers, cls).from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def _logits(model, tok, text="hello world"):
    import torch

    with torch.no_grad():
        return model(**tok([text], return_tensors="pt")).logits


def test_export_full_model_reloads_exactly(tiny_llama, tmp_path):
    import torch

    model, tok = _load_plain(tiny_llama)
    out = tmp_path / "a" / "export"
    info = export_model(model, tok, out)
    assert info["path"] == str(out) and "model.safetensors" in info["files"] and "tokenizer.json" in info["files"]
    assert not any(n.startswith(".") for n in info["files"]) and info["weights"] == ["model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["export"]  # nothing beside the folder
    again, tok2 = _load_plain(out)
    assert torch.equal(_logits(model, tok), _logits(again, tok2))
    assert tok2("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_export_refuses_and_overwrites(tiny_llama, tmp_path):
    model, tok = _load_plain(tiny_llama)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty; pick a new folder"):
        export_model(model, tok, out)
    with pytest.raises(UsageError, match="is not an llmos export"):  # --overwrite never empties other folders
        export_model(model, tok, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # untouched
    # nor a model's own folder (config.json and weights, but not exported by llmos)
    own = sorted(p.name for p in Path(tiny_llama).iterdir())
    with pytest.raises(UsageError, match="is not an llmos export"):
        export_model(model, tok, Path(tiny_llama), overwrite=True)
    assert sorted(p.name for p in Path(tiny_llama).iterdir()) == own
    # nor anything under LLMOS_HOME's checkpoints, models or datasets
    from llmos_jupyter.paths import home

    with pytest.raises(UsageError, match="belong to llmos"):
        export_model(model, tok, home() / "checkpoints" / "ft-x" / "checkpoint", overwrite=True)
    assert not (home() / "checkpoints" / "ft-x").exists()
    prev = tmp_path / "prev"
    export_model(model, tok, prev)
    with pytest.raises(UsageError, match="overwrite=True to replace that earlier export"):
        export_model(model, tok, prev)
    (prev / "model.safetensors").write_bytes(b"an older export's weights")
    export_model(model, tok, prev, overwrite=True)  # replaces the export's own files
    assert (prev / "model.safetensors").stat().st_size > 1000
    # a file the user added to the export folder is never deleted: overwrite refuses and names it
    (prev / "stale.txt").write_text("my notes")
    with pytest.raises(UsageError, match=r"did not write \(stale.txt\)"):
        export_model(model, tok, prev, overwrite=True)
    assert (prev / "stale.txt").read_text() == "my notes"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        export_model(model, tok, tmp_path / "file")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="symbolic link"):
        export_model(model, tok, tmp_path / "link")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    with pytest.raises(UsageError, match="merge_lora=True needs a LoRA model"):
        export_model(model, tok, tmp_path / "m", merge_lora=True)
    assert not (tmp_path / "m").exists()  # a refused export creates nothing


def test_export_lora_adapter_and_merged(tiny_llama, tmp_path):
    import datasets
    import torch

    from llmos_jupyter.training import FinetuneConfig, finetune

    model, tok = _load_plain(tiny_llama)
    tok.pad_token = tok.eos_token
    cfg = FinetuneConfig(
        task="causal-lm", method="lora", epochs=5, batch_size=2, lr=2e-2, warmup_ratio=0.0, lora_dropout=0.0
    )
    r = finetune(model, tok, datasets.Dataset.from_list(PAIRS), config=cfg)
    pm = r.model
    mem = _logits(pm, tok)
    ad = export_model(pm, tok, tmp_path / "adapter")
    assert ad["adapter"] and "adapter_model.safetensors" in ad["files"] and "model.safetensors" not in ad["files"]
    via_adapter, _ = _load_plain(tmp_path / "adapter")  # transformers + peft fetch the base by its path
    assert torch.equal(_logits(via_adapter, tok), mem)
    mg = export_model(pm, tok, tmp_path / "merged", merge_lora=True)
    assert mg["merged_lora"] and "model.safetensors" in mg["files"] and "adapter_config.json" not in mg["files"]
    merged, _ = _load_plain(tmp_path / "merged")
    diff = (_logits(merged, tok) - mem).abs().max().item()
    assert diff < 1e-4, diff  # W + s·BA vs x·W + s·(x·A)·B: float rounding only
    assert torch.equal(_logits(pm, tok), mem)  # the in-memory model keeps its adapters
    print(f"LoRA merged export vs in-memory adapters: max |Δ| = {diff:.2e}")


@pytest.fixture
def shell(fresh_api):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    return ip


def _registry_rows(api):
    db = sqlite3.connect(api.registry().path)
    try:
        return db.execute("SELECT id, status FROM runs").fetchall()
    finally:
        db.close()


def _checkpoints(api):
    d = api.registry().path.parent / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_api_causal_lm_finetune_export_manifest(fresh_api, shell, tiny_llama, tmp_path, capsys):
    import torch

    api = fresh_api
    api.load(str(tiny_llama), alias="tl", task="causal-lm")
    dv = api.data_load(PAIRS, name="pairs")
    assert (dv.prompt_column, dv.response_column) == ("prompt", "response")
    run = api.finetune("tl", "pairs", epochs=10, lr=1e-2, batch_size=2, progress=False, warmup_ratio=0.0)
    assert run.status == "completed" and run.kind == "finetune" and run.config["task"] == "causal-lm"
    assert capsys.readouterr().err == (
        "llmos: note: 'pairs' has no 'test' split, so this run was not evaluated; "
        "make one with `%llm data split pairs --test 0.15`\n"
    )
    shell.run_line_magic("llm", f"export tl {tmp_path / 'exp'}")
    err = capsys.readouterr().err
    assert err == ""
    man = json.loads((tmp_path / "exp" / MANIFEST).read_text())
    assert (
        man["run_id"] == run.id
        and man["config"]["task"] == "causal-lm"
        and man["checkpoint_sha256"] == run.checkpoint_sha256
    )
    again, tok = _load_plain(tmp_path / "exp")
    with api.manager().use("tl") as rec:
        mem = _logits(rec.model, rec.tokenizer)
    assert torch.equal(_logits(again, tok), mem)
    shell.run_line_magic("llm", f"export tl {tmp_path / 'exp'}")
    assert "not empty" in capsys.readouterr().err
    shell.run_line_magic("llm", f"export tl {tmp_path / 'exp'} --overwrite")
    assert capsys.readouterr().err == ""
    ev = api.evaluate("tl", "pairs", split="train")
    assert ev.n == 2 and ev.perplexity == pytest.approx(2.718281828**ev.loss)
    run2 = api.finetune("tl", "pairs", epochs=1, lr=1e-3, batch_size=2, progress=False)
    assert "so this run was not evaluated" in capsys.readouterr().err
    cmp = api.runs_compare(run.id, run2.id)
    assert "config.epochs" in cmp.differences() and "config.lr" in cmp.differences()
    shell.run_line_magic("llm", f"runs compare {run.id} {run2.id}")
    shell.run_line_magic("llm", f"runs show {run.id}")
    assert capsys.readouterr().err == ""


def test_eval_magic_shows_metrics_plot_and_worst_rows(fresh_api, shell, tiny_bert):
    api = fresh_api
    rows = [
        {"text": t, "label": y}
        for t, y in [
            ("great movie", "positive"),
            ("awful film", "negative"),
            ("hello world", "positive"),
            ("the quick brown fox", "negative"),
        ]
        * 5
    ]
    api.load(str(tiny_bert), alias="tb", task="seq-cls", labels="negative,positive")
    api.data_load(rows, name="sent")
    api.data_split("sent", test=8, seed=0)
    res = shell.run_line_magic("llm", "eval tb sent:test")
    html = res._repr_mimebundle_()["text/html"]
    assert "data:image/png;base64," in html and "macro_f1" in html and "precision" in html
    assert res.n == 8 and sum(map(sum, res.confusion)) == 8
    assert len(res.worst) == round((1 - res.accuracy) * 8)  # every mistake listed (fewer than worst_k=10)
    assert all(w["label"] != w["predicted"] for w in res.worst)
    png = res.confusion_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "line, message",
    [
        ("finetune tb sent --method lora --no-progress", "match no module"),
        ("finetune tb sent3 --no-progress", "not among the model's labels"),
        ("finetune tb sent --epochs 0 --no-progress", "epochs=0"),
        ("eval tb sent:validation", "no 'validation' split"),
        ("finetune tl sent --no-progress", "no prompt/response columns"),
        # found by a new-user trial: errors raised inside the training call leave no run row and no job
        ("finetune tl pairs --max-length 2 --no-progress", "max_length=2"),
        ("finetune tb sent --patience 0 --eval-every 1 --no-progress", "use e.g. --patience 3"),
        ("finetune tb sent --patience 2 --no-progress", "--eval-every epoch"),
        ("finetune tb sent --eval-every week --no-progress", "--eval-every takes a whole number of steps or 'epoch'"),
        ("eval tb sent --batch-size 0", "batch size must be at least 1"),
        ("eval tl pairs:train --generate --max-new-tokens 0", "max_new_tokens must be at least 1"),
        ("eval tb sent:test --split train", "two splits given"),
        ("runs --limit 0", "limit must be at least 1"),
        ("export tb /proc/llmos-nope/x", "cannot export to /proc/llmos-nope/x"),
        ("data split sent --test 1.5", "fraction must be between 0 and 1"),
    ],
)
def test_bad_input_one_line_nothing_written(
    fresh_api, shell, tiny_bert, tiny_llama, capsys, line, message, monkeypatch
):
    api = fresh_api
    api.load(str(tiny_bert), alias="tb", task="seq-cls", labels="negative,positive")
    api.load(str(tiny_llama), alias="tl", task="causal-lm")
    # the default LoRA targets for bert (query, value) exist; point them at names this model lacks
    monkeypatch.setitem(
        __import__("llmos_jupyter.training.config", fromlist=["x"]).DEFAULT_TARGET_MODULES, "bert", ["q_proj"]
    )
    api.data_load(
        [{"text": "great movie", "label": "positive"}, {"text": "awful film", "label": "negative"}] * 4, name="sent"
    )
    api.data_load(
        [
            {"text": "great movie", "label": "positive"},
            {"text": "meh", "label": "neutral"},
            {"text": "awful film", "label": "negative"},
        ]
        * 3,
        name="sent3",
    )
    api.data_load([{"prompt": "hello world", "response": "great movie"}] * 4, name="pairs")
    versions = {n: len(api.data_versions(n).data) for n in ("sent", "sent3", "pairs")}
    capsys.readouterr()
    shell.run_line_magic("llm", line)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmos: ") and message in err, err
    assert _registry_rows(api) == [] and _checkpoints(api) == []
    assert api.jobs().data == [] and sorted(api.manager().aliases()) == ["tb", "tl"]
    assert {n: len(api.data_versions(n).data) for n in versions} == versions


def test_finetune_flags_reach_the_config(fresh_api, shell, tiny_bert, capsys):
    """Every FinetuneConfig field the error messages name is a %llm finetune flag."""
    from llmos_jupyter.magics.commands import COMMANDS
    from llmos_jupyter.training.config import FinetuneConfig, flag_of

    flags = {"--" + o.name for o in COMMANDS["finetune"].options}
    named = [f for f in FinetuneConfig.__dataclass_fields__ if f not in ("task", "deterministic", "group_by_length")]
    assert [flag_of(f) for f in named if flag_of(f) not in flags] == []
    api = fresh_api
    api.load(str(tiny_bert), alias="tb", task="seq-cls", labels="negative,positive")
    api.data_load(
        [{"text": "great movie", "label": "positive"}, {"text": "awful film", "label": "negative"}] * 8, name="s"
    )
    api.data_split("s", test=4, seed=0)
    run = shell.run_line_magic(
        "llm",
        "finetune tb s --method lora --target-modules query,value --weight-decay 0 "
        "--warmup-ratio 0 --lr-scheduler constant --grad-accum 2 --max-grad-norm 0.5 "
        "--max-steps 2 --batch-size 2 --no-progress",
    )
    assert capsys.readouterr().err == ""
    c = run.config
    assert (
        c["target_modules"],
        c["weight_decay"],
        c["warmup_ratio"],
        c["lr_scheduler"],
        c["grad_accum"],
        c["max_grad_norm"],
        c["max_steps"],
    ) == (["query", "value"], 0.0, 0.0, "constant", 2, 0.5, 2)
    assert run.status == "completed" and run.metrics["n"] == 4  # evaluated on the 4 test rows
