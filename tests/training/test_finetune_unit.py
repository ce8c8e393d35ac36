"""finetune() on tiny random models: learning, determinism, interrupts, errors, the input pipeline."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest

from llmos_jupyter.errors import NotFoundError, UsageError
from llmos_jupyter.training import FinetuneConfig, finetune
from llmos_jupyter.training.batching import clear_cache, collate, length_grouped_batches, tokenize_column
from llmos_jupyter.training.finetune import sha256_file, untrained_head_params


def scramble():
    import torch

    torch.rand(100)
    random.random()
    np.random.rand(3)


def test_learns_and_reports(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    model = tiny_model()
    cfg = FinetuneConfig(epochs=4, lr=1e-2, batch_size=8, seed=1, eval_every=8, warmup_ratio=0.1)
    steps_seen, evals = [], []

    class CB:
        def on_begin(self, total_steps, total_samples, run_id):
            self.begin = (total_steps, total_samples, run_id)

        def on_step(self, step, loss, lr, sps, eta):
            steps_seen.append((step, loss, lr))

        def on_eval(self, step, epoch, metrics):
            evals.append((step, epoch, metrics))

        def on_end(self, status, result):
            self.end = (status, result)

    cb = CB()
    r = finetune(model, tiny_tokenizer, train, ev, config=cfg, callback=cb, run_dir=tmp_path / "run", run_id="ft-test")
    assert r.status == "completed" and r.steps == r.total_steps == 32 and r.epochs == 4.0
    assert cb.begin == (32, 256, "ft-test") and cb.end == ("completed", r)
    assert [s for s, _, _ in steps_seen] == list(range(1, 33))
    assert [loss for _, loss, _ in steps_seen] == r.train_loss
    # linear warmup (ceil(0.1*32) = 4 steps from 0) then linear decay
    lrs = [lr for _, _, lr in steps_seen]
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-2 / 28)
    # it learns the synthetic sentiment: loss falls, held-out accuracy well above chance
    assert np.mean(r.train_loss[-8:]) < np.mean(r.train_loss[:8]) - 0.2
    assert r.metrics["accuracy"] >= 0.8 and r.metrics["n"] == 32
    assert [e[0] for e in evals] == [8, 16, 24, 32] and [h["step"] for h in r.eval_history] == [8, 16, 24, 32]
    assert r.eval.accuracy == r.metrics["accuracy"]
    assert not model.training
    # checkpoint: safetensors + trainer state, sha256 of the weights file
    ck = r.checkpoint
    assert ck == tmp_path / "run" / "checkpoint" and r.checkpoint_sha256 == sha256_file(ck / "model.safetensors")
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["status"] == "completed" and state["steps"] == 32 and state["checkpoint_sha256"] == r.checkpoint_sha256
    assert state["train_loss"] == r.train_loss and state["config"]["lr"] == 1e-2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint"]  # no temporary leftovers
    assert r.samples_per_s > 0 and r.peak_rss_bytes > 0 and r.peak_device_bytes is None
    assert 0 <= r.padded_fraction < 0.5
    assert "completed" in r._repr_mimebundle_()["text/html"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_same_seed_same_result_whatever_the_rng_state(tiny_model, tiny_tokenizer, sentiment, tmp_path, method):
    import torch

    train, ev = sentiment
    cfg = FinetuneConfig(
        epochs=1,
        lr=1e-3,
        batch_size=16,
        seed=7,
        method=method,
        target_modules=["query", "value"] if method == "lora" else None,
    )
    out, body = [], None
    for i in range(2):
        scramble()
        model = tiny_model(seed=i)  # built under another seed: body and head differ ...
        if body is None:
            body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
        else:  # ... so give it the first body: same starting weights, except the never-trained head
            model.load_state_dict(body, strict=False)
        assert untrained_head_params(model) == ["classifier.weight", "classifier.bias"]
        scramble()
        r = finetune(model, tiny_tokenizer, train, ev, config=cfg, run_dir=tmp_path / f"r{i}")
        probe = tiny_tokenizer(["good movie", "dull and boring film"], padding=True, return_tensors="pt")
        with torch.no_grad():
            out.append((r, r.model(**probe).logits))
    (a, la), (b, lb) = out
    assert a.head_reinitialized == ["classifier.weight", "classifier.bias"]
    assert a.metrics == b.metrics and a.train_loss == b.train_loss
    assert torch.equal(la, lb)
    assert a.checkpoint_sha256 == b.checkpoint_sha256
    # a different seed gives a different run
    scramble()
    m3 = tiny_model(seed=0)
    r3 = finetune(m3, tiny_tokenizer, train, ev, config=FinetuneConfig.from_dict({**cfg.to_dict(), "seed": 8}))
    assert r3.train_loss != a.train_loss


def test_trained_head_is_not_reinitialised(tiny_model, tiny_tokenizer, sentiment):
    import torch

    train, _ = sentiment
    model = tiny_model()
    finetune(model, tiny_tokenizer, train, config=FinetuneConfig(max_steps=2, batch_size=8, lr=1e-3))
    assert untrained_head_params(model) == []
    w = model.classifier.weight.detach().clone()
    r = finetune(
        model, tiny_tokenizer, train, config=FinetuneConfig(max_steps=1, batch_size=8, lr=0.0 + 1e-12, warmup_ratio=0.0)
    )
    assert r.head_reinitialized == [] and r.steps == 1
    assert torch.allclose(model.classifier.weight, w, atol=1e-9)


def test_should_stop_interrupts_at_a_step_boundary(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    model = tiny_model()
    seen = []

    class CB:
        def on_step(self, step, *a):
            seen.append(step)

        def on_end(self, status, result):
            self.status = status

    cb = CB()
    r = finetune(
        model,
        tiny_tokenizer,
        train,
        ev,
        config=FinetuneConfig(batch_size=8, lr=1e-3),
        callback=cb,
        run_dir=tmp_path,
        should_stop=lambda: len(seen) >= 3,
    )
    assert r.status == "interrupted" == cb.status
    assert r.steps == 3 and seen == [1, 2, 3] and r.total_steps == 8
    assert not model.training
    assert r.metrics == {} and r.eval is None  # no final evaluation after a stop
    state = json.loads((r.checkpoint / "trainer_state.json").read_text())
    assert state["status"] == "interrupted" and state["steps"] == 3
    assert r.checkpoint_sha256 == sha256_file(r.checkpoint / "model.safetensors")
    # the checkpoint holds the weights after step 3
    from safetensors.torch import load_file

    saved = load_file(r.checkpoint / "model.safetensors")
    assert all(
        np.array_equal(saved[k].numpy(), v.detach().numpy()) for k, v in model.state_dict().items() if k in saved
    )


def test_keyboard_interrupt_and_sigint_stop_the_run(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, _ = sentiment

    class Raise:
        def on_step(self, step, *a):
            if step == 2:
                raise KeyboardInterrupt

    model = tiny_model()
    r = finetune(
        model, tiny_tokenizer, train, config=FinetuneConfig(batch_size=8), callback=Raise(), run_dir=tmp_path / "a"
    )
    assert (
        r.status == "interrupted"
        and r.steps == 2
        and not model.training
        and (r.checkpoint / "model.safetensors").exists()
    )

    class Sigint:  # what "interrupt kernel" sends: the first SIGINT stops at the next step boundary
        def on_step(self, step, *a):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    model = tiny_model()
    r = finetune(
        model, tiny_tokenizer, train, config=FinetuneConfig(batch_size=8), callback=Sigint(), run_dir=tmp_path / "b"
    )
    assert r.status == "interrupted" and r.steps == 2 and not model.training
    assert signal.getsignal(signal.SIGINT) is before


def test_error_leaves_no_checkpoint_and_eval_mode(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, _ = sentiment
    model = tiny_model()
    calls = {"n": 0}
    real_forward = model.forward

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_forward(*a, **k)

    model.forward = flaky

    class CB:
        ended = None

        def on_end(self, status, result):
            CB.ended = (status, result)

    with pytest.raises(RuntimeError, match="boom"):
        finetune(
            model, tiny_tokenizer, train, config=FinetuneConfig(batch_size=8), callback=CB(), run_dir=tmp_path / "run"
        )
    assert not model.training
    assert CB.ended == ("failed", None)
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []


def test_broken_callback_warns_and_training_goes_on(tiny_model, tiny_tokenizer, sentiment):
    train, _ = sentiment

    class Broken:
        def on_step(self, *a):
            raise ValueError("widget gone")

    with pytest.warns(RuntimeWarning, match=r"progress callback on_step failed \(ValueError: widget gone\)"):
        r = finetune(tiny_model(), tiny_tokenizer, train, config=FinetuneConfig(batch_size=16), callback=Broken())
    assert r.status == "completed" and r.steps == 4


def test_user_errors(tiny_model, tiny_tokenizer, sentiment):
    import datasets

    train, _ = sentiment

    class CB:
        status = None

        def on_end(self, status, result):
            CB.status = status

    with pytest.raises(NotFoundError, match=r"unknown column in the train dataset 'sentence'"):
        finetune(tiny_model(), tiny_tokenizer, train, text_column="sentence", callback=CB())
    assert CB.status == "failed"  # a progress display does not stay "waiting"
    bad = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 2]})
    with pytest.raises(UsageError, match=r"has 2 at row 1; labels must be class ids 0..1"):
        finetune(tiny_model(), tiny_tokenizer, bad)
    with pytest.raises(UsageError, match=r"num_labels=1"):
        finetune(tiny_model(num_labels=1), tiny_tokenizer, train)
    with pytest.raises(UsageError, match=r"task='causal-lm' needs a causal LM .*got BertForSequenceClassification"):
        finetune(tiny_model(), tiny_tokenizer, train, config=FinetuneConfig(task="causal-lm"))
    with pytest.raises(UsageError, match=r"epochs[= ]0"):  # "epochs=0" or the flag form "--epochs 0"
        finetune(tiny_model(), tiny_tokenizer, train, config={"epochs": 0})
    with pytest.raises(UsageError, match=r"match no module.*query"):
        finetune(tiny_model(), tiny_tokenizer, train, config=FinetuneConfig(method="lora", target_modules=["q_proj"]))
    with pytest.raises(UsageError, match=r"must be a datasets.Dataset"):
        finetune(tiny_model(), tiny_tokenizer, {"text": ["a"], "label": [0]})


def test_lora_rerun_on_the_same_base_is_refused(tiny_model, tiny_tokenizer, sentiment):
    train, _ = sentiment
    base = tiny_model()
    r = finetune(base, tiny_tokenizer, train, config=FinetuneConfig(method="lora", max_steps=1, batch_size=8))
    assert type(r.model).__name__ == "PeftModelForSequenceClassification"
    assert r.trainable_params < r.total_params / 2
    with pytest.raises(UsageError, match=r"already carries LoRA adapters.*pass result.model"):
        finetune(base, tiny_tokenizer, train, config=FinetuneConfig(method="lora", max_steps=1))
    r2 = finetune(r.model, tiny_tokenizer, train, config=FinetuneConfig(method="lora", max_steps=1, batch_size=8))
    assert r2.model is r.model and r2.status == "completed"
    with pytest.raises(UsageError, match=r"method='full' was given a LoRA"):
        finetune(r.model, tiny_tokenizer, train)


def test_grad_accum_matches_a_bigger_batch(tiny_model, tiny_tokenizer, sentiment):
    import torch

    train, _ = sentiment
    res = []
    for bs, acc in ((16, 1), (8, 2)):
        m = tiny_model(dropout=0.0)
        finetune(
            m,
            tiny_tokenizer,
            train,
            config=FinetuneConfig(batch_size=bs, grad_accum=acc, group_by_length=False, lr=1e-3, seed=3),
        )
        res.append(m.state_dict())
    for k in res[0]:
        torch.testing.assert_close(res[0][k], res[1][k], atol=2e-5, rtol=1e-4)


def test_pad_token_and_dirty_text(tiny_model, tiny_tokenizer):
    import datasets

    model = tiny_model(pad_token_id=None)
    model.config.pad_token_id = None
    ds = datasets.Dataset.from_dict({"text": ["good", None, "", "bad film", "  "], "label": [1, 0, 0, 0, 1]})
    r = finetune(model, tiny_tokenizer, ds, ds, config=FinetuneConfig(batch_size=2, max_steps=2))
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id == 0
    assert r.status == "completed" and r.metrics["n"] == 5


def test_tokenize_once_and_batches(tiny_tokenizer, sentiment):
    import datasets

    clear_cache()
    train, _ = sentiment
    a = tokenize_column(tiny_tokenizer, train, "text", 16)
    assert tokenize_column(tiny_tokenizer, train, "text", 16) is a  # cached
    assert tokenize_column(tiny_tokenizer, train, "text", 8) is not a  # max_length is in the key
    ids0 = tiny_tokenizer(train[0]["text"], truncation=True, max_length=16)["input_ids"]
    assert a.ids[a.offsets[0] : a.offsets[1]].tolist() == ids0
    odd = datasets.Dataset.from_dict({"t": [None, "good", "42"]}).cast_column("t", datasets.Value("string"))
    t = tokenize_column(tiny_tokenizer, odd, "t", 16)
    assert t.lengths.tolist() == [2, 3, 3]  # [CLS] [SEP] for None

    lengths = np.array([len(x) for x in tiny_tokenizer(list(train["text"]))["input_ids"]])
    b1 = length_grouped_batches(lengths, 8, seed=(5, 0))
    assert sorted(np.concatenate(b1).tolist()) == list(range(64))  # every row once
    assert all(len(b) == 8 for b in b1)
    assert [x.tolist() for x in b1] == [x.tolist() for x in length_grouped_batches(lengths, 8, seed=(5, 0))]
    assert [x.tolist() for x in b1] != [x.tolist() for x in length_grouped_batches(lengths, 8, seed=(5, 1))]
    padded = lambda bs: sum(len(b) * lengths[b].max() for b in bs)  # noqa: E731
    rand = length_grouped_batches(lengths, 8, seed=(5, 0), group=False)
    assert padded(b1) < padded(rand)
    batch = collate(a, np.array([0, 1]), pad_id=0, labels=np.array(train["label"]))
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum().item() == a.lengths[:2].sum()
    assert batch["labels"].tolist() == train["label"][:2]


def test_eval_every_epoch_is_steps_per_epoch(tiny_model, tiny_tokenizer, sentiment):
    """eval_every="epoch" (HF Trainer's eval_strategy="epoch") evaluates where eval_every=steps_per_epoch does."""
    train, ev = sentiment
    runs = [
        finetune(
            tiny_model(),
            tiny_tokenizer,
            train,
            ev,
            config=FinetuneConfig(epochs=3, lr=1e-2, batch_size=8, seed=1, eval_every=every, early_stopping_patience=2),
        )
        for every in ("epoch", 8)
    ]  # 64 train rows / batch 8 = 8 steps an epoch
    assert [h["step"] for h in runs[0].eval_history] == [8, 16, 24]
    assert runs[0].eval_history == runs[1].eval_history and runs[0].train_loss == runs[1].train_loss
    with pytest.raises(UsageError, match="eval_every"):
        FinetuneConfig(eval_every="week")
