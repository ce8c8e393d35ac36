"""Results that look fine but are wrong — each now a documented rule or one line.

* Options and free text: one rule (``%llm help``, the README and ``magics/parsers.py``): options
  may come before or after the text, ``--`` ends them, quotes keep ``--words`` as text, and a
  ``--word`` that is no option of the subcommand is an error — never silently part of a prompt.
* A diverging fine-tune (a non-finite or exploding loss or gradient) ends as ``diverged`` with one
  line naming ``--lr``; the alias keeps the weights it had before the run. A batch size larger
  than the training rows is clamped with a note.
* Nonsense settings are refused: ``--temperature nan|-1``, ``--keep-alive -5``, a budget for a
  GPU the machine does not have.
* Loading: shipped model code (``auto_map``) that was not run is said; the task comes from the
  checkpoint's architectures and an encoder never generates; a classifier whose head was never
  trained warns once.
* Data: a CSV without a text-like column is refused naming its columns; an empty text is refused
  the same way by the API and the magics; ``data export NAME out.csv`` writes CSV and shows paths.
* A LoRA model on a GGUF base exports merged (transformers cannot put an adapter on a GGUF-only
  folder); the adapter itself, when asked for, loads with ``%llm load DIR``.
"""

from __future__ import annotations

import json

import pytest
from hostile_kit import assert_consistent, one_line, tiny_classifier


# ---------------------------------------------------------------------------- parser rule
@pytest.fixture
def recorded(shell, monkeypatch):
    """``shell`` whose chat/generate/data_search record what reached the API."""
    calls = []
    api = shell.api
    monkeypatch.setattr(api, "chat", lambda alias, message, **kw: calls.append({"text": message, **kw}))
    monkeypatch.setattr(api, "generate", lambda alias, prompt, **kw: calls.append({"text": prompt, **kw}))
    monkeypatch.setattr(api, "data_search", lambda name, query, **kw: calls.append({"text": query, **kw}))
    shell.calls = calls
    return shell


@pytest.mark.parametrize(
    "line, text, options",
    [
        # the input from the sweep: options after the text are options (it answered "I'm Max-new-tokens-4…")
        ("chat smol --reset Say hi --max-new-tokens 4", "Say hi", {"reset": True, "max_new_tokens": 4}),
        (
            "generate smol Once upon a time --temperature 0.5 --seed 3",
            "Once upon a time",
            {"temperature": 0.5, "seed": 3},
        ),
        ("generate smol a  b --temperature 0.5 c   d", "a  b c   d", {"temperature": 0.5}),  # spacing inside parts kept
        ("generate smol -- Explain what --seed does", "Explain what --seed does", {}),  # `--` ends the options
        ('generate smol "Explain --seed" --max-new-tokens 40', "Explain --seed", {"max_new_tokens": 40}),
        ('chat smol He said "use --force" and left', 'He said "use --force" and left', {}),  # quoted --words are text
        ("generate smol count down --> 5 --- x", "count down --> 5 --- x", {}),  # not option-shaped
        ('data search rt "a boring plot" --k 5', "a boring plot", {"k": 5}),
    ],
)
def test_options_anywhere_double_dash_ends_them_quotes_keep_text(recorded, line, text, options):
    recorded.run_line_magic("llm", line)
    got = recorded.calls[-1]
    assert got["text"] == text and all(got[k] == v for k, v in options.items()), got


@pytest.mark.parametrize(
    "line, expected",
    [
        ("generate smol Write a --verbose flag parser", "unknown option --verbose for `%llm generate`"),
        ("generate smol hello --max-new-token 4", "did you mean: --max-new-tokens"),
        ("chat smol hi --system", "--system needs a value"),
    ],
)
def test_a_word_that_is_no_option_is_an_error_not_prompt_text(recorded, capsys, line, expected):
    recorded.run_line_magic("llm", line)
    err = one_line(capsys.readouterr().err, expected)
    assert recorded.calls == []
    if "unknown option" in err:
        assert "put the text after `--` or in quotes" in err


def test_help_and_readme_state_the_same_rule(shell):
    from pathlib import Path

    help_text = repr(shell.run_line_magic("llm", "help"))
    for phrase in ("Options may come before or after the text", "`--` ends the options", "is an error"):
        assert phrase in help_text
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "options may come before or after the text" in readme and "`--` ends the options" in readme
    for example in ("chat smol --reset Say hi --max-new-tokens 4", "generate smol -- Explain what --seed does"):
        assert example in readme  # the README's examples are the ones tested above


# ---------------------------------------------------------------------------- fine-tuning
@pytest.fixture
def trained(shell, tiny_bert):
    api = tiny_classifier(shell.api, tiny_bert)
    return api


def _weights(api, alias):
    return {n: p.detach().clone() for n, p in api.manager().get(alias).model.named_parameters()}


def _same(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "options",
    [
        "--lr 1e9 --max-steps 1 --warmup-ratio 0",  # the sweep's input: the one update wrecks the weights
        "--lr 1e9 --max-steps 4 --warmup-ratio 0 --batch-size 8",
        "--lr 1e9 --max-steps 4 --warmup-ratio 0 --batch-size 8 --method lora",
    ],
)
def test_divergence_ends_the_run_as_diverged_and_keeps_the_weights(trained, shell, capsys, options):
    api = trained
    before = _weights(api, "tb")
    capsys.readouterr()
    run = shell.run_line_magic("llm", f"finetune tb rows {options} --no-progress")
    err = capsys.readouterr().err
    assert run.status == "diverged" and run.metrics == {} and run.checkpoint is None
    line = next(x for x in err.splitlines() if "diverged" in x)
    assert f"run {run.id} diverged at step" in line and "--lr 1e+09 is too high" in line
    assert "'tb' keeps the weights it had before the run" in line
    assert _same(_weights(api, "tb"), before)  # nothing of the run is left in the model
    assert type(api.manager().get("tb").model).__name__ == "BertForSequenceClassification"  # no LoRA left either
    last_job = list(api.scheduler().jobs.values())[-1]
    assert api.run(run.id).status == "diverged" and last_job.state == "diverged"
    good = api.finetune("tb", "rows", lr=5e-4, max_steps=3, batch_size=8, progress=False)  # the next run is sound
    assert good.status == "completed" and good.metrics["loss"] < 10
    assert_consistent(api)


def test_a_diverging_background_job_ends_diverged_too(trained):
    api = trained
    before = _weights(api, "tb")
    job = api.finetune(
        "tb", "rows", lr=1e9, max_steps=4, warmup_ratio=0.0, batch_size=8, progress=False, background=True
    )
    job.wait(120)
    assert job.state == "diverged" and job.result.status == "diverged"
    assert _same(_weights(api, "tb"), before)
    assert_consistent(api)


@pytest.mark.parametrize("batch, note", [(1000, True), (30, False), (31, True)])
def test_a_batch_larger_than_the_rows_is_clamped_with_a_note(trained, capsys, batch, note):
    api = trained
    capsys.readouterr()
    run = api.finetune("tb", "rows", batch_size=batch, max_steps=1, progress=False)
    err = capsys.readouterr().err
    assert run.status == "completed" and run.config["batch_size"] == min(batch, 30)  # 30 training rows
    assert ("batch size" in err and "more than the 30 training rows; trained with 30 (batch_size=30)" in err) == note


@pytest.mark.parametrize(
    "options, note",
    [
        ({"max_steps": 1}, "its only step has learning rate 0, so nothing is learned; give warmup_ratio=0"),
        ({"max_steps": 2, "batch_size": 15, "warmup_ratio": 0.9}, "the learning rate never reaches lr=5e-05"),
        ({"max_steps": 4, "batch_size": 8}, None),  # 0.06 x 4 steps: 1 step of warmup, 3 at the learning rate
        ({"max_steps": 1, "warmup_ratio": 0.0}, None),
    ],
)
def test_a_warmup_that_takes_the_whole_run_is_said(trained, capsys, options, note):
    """``--lr 1e9 --max-steps 1`` once reported a sound run: with the default warmup its one step has
    learning rate 0 (the Trainer's linear schedule does the same), so it must say so."""
    api = trained
    capsys.readouterr()
    run = api.finetune("tb", "rows", progress=False, **options)
    err = capsys.readouterr().err
    assert run.status == "completed"
    lines = [x for x in err.splitlines() if "warmup takes all" in x]
    assert (not lines) if note is None else (len(lines) == 1 and note in lines[0]), err


# ---------------------------------------------------------------------------- nonsense settings
@pytest.mark.parametrize(
    "line, expected",
    [
        ("generate m hi --temperature nan", "temperature must be a number ≥ 0"),
        ("generate m hi --temperature -1", "temperature must be a number ≥ 0"),
        ("generate m hi --temperature 0.7 --top-p 1.5", "top_p must be in (0, 1]"),
        ("load {bert} --as k --task embedding --keep-alive -5", "'-5' is not a duration"),
        ("load {bert} --as k --task embedding --keep-alive -2h", "'-2h' is not a duration"),
        ("budget --gpu 0:1GB", "there is no GPU 0 on this machine (devices: cpu"),
        ("budget --gpu 7:1GB --cpu 8GiB", "there is no GPU 7"),
        ("budget --gpu x:1GB", "write INDEX:SIZE, e.g. --gpu 0:20GiB"),
    ],
)
def test_nonsense_settings_are_one_line_and_change_nothing(shell, capsys, tiny_llama, tiny_bert, line, expected):
    api = shell.api
    api.load(str(tiny_llama), alias="m", task="causal-lm")
    budgets = dict(api.manager().budgets)
    capsys.readouterr()
    shell.run_line_magic("llm", line.format(bert=tiny_bert))
    one_line(capsys.readouterr().err, expected)
    assert api.manager().aliases() == ["m"] and api.manager().budgets == budgets
    assert api.manager().get("m").last_generation is None


def test_minus_one_is_the_one_forever(shell, tiny_bert):
    shell.api.load(str(tiny_bert), alias="k", task="embedding", keep_alive="-1")
    assert shell.api.manager().get("k").keep_alive is None


# ---------------------------------------------------------------------------- loading
def _with_config(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_shipped_code_that_was_not_run_is_said(shell, capsys, tiny_bert, tmp_path):
    d = _with_config(tiny_bert, tmp_path / "custom", auto_map={"AutoModel": "modeling_x.XModel"})
    shell.run_line_magic("llm", f"load {d} --task embedding --as c")
    err = one_line(
        capsys.readouterr().err,
        "ships its own model code (auto_map: AutoModel → modeling_x.XModel)",
        "which was not run",
        "--trust-remote-code",
    )
    assert "only for a source you trust" in err and shell.api.manager().get("c").task == "embedding"
    shell.api.load(str(tiny_bert), alias="plain", task="embedding")  # no auto_map: no note
    assert capsys.readouterr().err == ""


def test_the_task_comes_from_the_architectures_and_an_encoder_never_generates(
    shell, capsys, tiny_bert, tiny_llama, tmp_path
):
    api = shell.api
    shell.run_line_magic("llm", f"load {tiny_bert} --as b")  # BertModel: an encoder → embedding, not causal-lm
    assert api.manager().get("b").task == "embedding"
    shell.run_line_magic("llm", "generate b hello")
    one_line(capsys.readouterr().err, "'b' is loaded as embedding; generate needs a causal-lm model")
    shell.run_line_magic("llm", f"load {tiny_bert} --as b2 --task causal-lm")
    one_line(
        capsys.readouterr().err, "is an encoder (BertModel, model_type 'bert')", "cannot generate", "--task embedding"
    )
    assert "b2" not in api.manager().aliases()
    shell.run_line_magic("llm", f"load {tiny_llama} --as l")  # LlamaForCausalLM → causal-lm
    seqcls = _with_config(tiny_bert, tmp_path / "cls", architectures=["BertForSequenceClassification"])
    shell.run_line_magic("llm", f"load {seqcls} --as s")
    assert api.manager().get("l").task == "causal-lm" and api.manager().get("s").task == "seq-cls"
    assert_consistent(api)


def test_classify_with_an_untrained_head_warns_once(trained, shell, capsys):
    capsys.readouterr()
    shell.run_line_magic("llm", "classify tb great movie")
    err = capsys.readouterr().err
    one_line(err, "the classification head of 'tb' is not trained yet", "fine-tune first")
    shell.run_line_magic("llm", "classify tb awful film")
    assert capsys.readouterr().err == ""  # once per model
    trained.finetune("tb", "rows", max_steps=2, batch_size=8, progress=False)
    trained.manager().get("tb").noted.clear()
    shell.run_line_magic("llm", "classify tb great movie")
    assert "not trained yet" not in capsys.readouterr().err  # trained now


# ---------------------------------------------------------------------------- data
def test_a_csv_without_a_text_like_column_is_refused_naming_the_columns(shell, capsys, tmp_path):
    (tmp_path / "ids.csv").write_text("id,score\n1,0.5\n2,0.7\n3,0.1\n4,0.9\n")
    (tmp_path / "nums.csv").write_text("a,b,c\n1,2.5,1e3\n4,5.5,2e3\n")
    (tmp_path / "ok.csv").write_text("id,note,label\n1,a fine film,pos\n2,NaN,neg\n3,42,pos\n")
    for f, cols in (("ids.csv", "id, score"), ("nums.csv", "a, b, c")):
        shell.run_line_magic("llm", f"data load {tmp_path / f}")
        one_line(capsys.readouterr().err, f"the columns are {cols}", "--text COLUMN")
    with pytest.raises(Exception, match="text_column='COLUMN'"):  # the Python spelling in Python
        shell.api.data_load(str(tmp_path / "ids.csv"))
    dv = shell.api.data_load(str(tmp_path / "ok.csv"))  # words in most rows: "NaN" and "42" stay text
    assert dv.text_column == "note" and dv.splits["train"]["note"] == ["a fine film", "NaN", "42"]
    assert [d["name"] for d in shell.api.data_list().data] == ["ok"]  # the refused loads left nothing


def test_an_empty_text_is_one_rule_for_the_api_and_the_magics(trained, shell, capsys, tiny_bert):
    from llmos_jupyter.errors import UsageError

    api = trained
    api.load(str(tiny_bert), alias="e", task="embedding")
    for call in (
        lambda: api.classify("tb", ""),
        lambda: api.classify("tb", "   "),
        lambda: api.embed("e", ""),
        lambda: api.classify("tb", ["ok", " "]),
    ):
        with pytest.raises(UsageError, match="empty"):
            call()
    capsys.readouterr()
    for line in ("classify tb ''", 'embed e ""', "classify tb"):
        shell.run_line_magic("llm", line)
        one_line(capsys.readouterr().err, "needs TEXT")
    assert_consistent(api)


def test_data_export_takes_the_format_from_the_name_and_shows_the_paths(trained, shell, capsys, tmp_path):
    import pandas as pd

    out = shell.run_line_magic("llm", f"data export rows {tmp_path / 'test.csv'} --split test")
    assert [p.name for p in out] == ["test.csv"] and str(out).splitlines()[1].strip().startswith("test (10 rows) →")
    assert list(pd.read_csv(tmp_path / "test.csv").columns) == ["text", "label"]
    out = shell.run_line_magic("llm", f"data export rows {tmp_path / 'train.jsonl'} --split train")
    assert json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])["label"] in ("0", "1", 0, 1)
    shell.run_line_magic("llm", f"data export rows {tmp_path / 'all.csv'}")  # two splits, one file named
    one_line(capsys.readouterr().err, "has 2 splits (train 30, test 10 rows)", "--split train", "give a folder")
    shell.run_line_magic("llm", f"data export rows {tmp_path / 'x.csv'} --split test --format parquet")
    one_line(capsys.readouterr().err, "ends in .csv but the format asked for is parquet")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["test.csv", "train.jsonl"]
    folder = shell.run_line_magic("llm", f"data export rows {tmp_path / 'both'}")
    assert sorted(p.name for p in folder) == ["test.parquet", "train.parquet"] and "wrote 2 files" in str(folder)


# ---------------------------------------------------------------------------- LoRA on a GGUF base
def test_lora_on_a_gguf_base_exports_merged_and_its_adapter_loads(shell, capsys, tiny_llama, tmp_path):
    """A tiny Llama written as a GGUF (its own small tokenizer in the metadata), loaded with
    transformers, LoRA-tuned: the default export merges (and says why); ``--no-merge`` writes the
    adapter, which ``%llm load`` takes (base from the recorded source, then the adapter) with the
    same logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos_jupyter.models.gguf_export import export_gguf

    api = shell.api
    gguf = tmp_path / "tiny.gguf"
    export_gguf(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        AutoTokenizer.from_pretrained(tiny_llama),
        gguf,
        quantize="f32",
    )
    api.load(str(gguf), alias="t", engine="transformers")
    api.data_load([{"prompt": "say hi", "response": "hi"}, {"prompt": "say no", "response": "no"}] * 4, name="p")
    api.finetune("t", "p", method="lora", max_steps=2, batch_size=4, lr=1e-2, progress=False)
    capsys.readouterr()
    merged = shell.run_line_magic("llm", f"export t {tmp_path / 'merged'}")
    assert "merged model" in str(merged) and "its base is a GGUF file" in str(merged) and "--no-merge" in str(merged)
    assert "model.safetensors" in merged.data["files"] and "adapter_config.json" not in merged.data["files"]
    adapter = shell.run_line_magic("llm", f"export t {tmp_path / 'adapter'} --no-merge")
    assert "LoRA adapter" in str(adapter) and f"`%llm load {tmp_path / 'adapter'}`" in str(adapter)
    shell.run_line_magic("llm", f"load {tmp_path / 'adapter'} --as back")
    ids = api.manager().get("t").tokenizer("say hi", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = api.manager().get("t").model(input_ids=ids).logits
        b = api.manager().get("back").model(input_ids=ids).logits
    assert api.manager().get("back").task == "causal-lm" and torch.allclose(a, b, atol=1e-5)
    shell.run_line_magic("llm", f"load {tmp_path / 'merged'} --as flat")
    with torch.no_grad():
        c = api.manager().get("flat").model(input_ids=ids).logits
    assert torch.allclose(a, c, atol=1e-4)
    assert_consistent(api)
