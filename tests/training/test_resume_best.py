"""Resume an interrupted fine-tune to the same final weights; early stopping with the best
checkpoint loaded back (tiny random BERT from a config; CPU).

Run: ``.venv/bin/python -m pytest tests/training/test_resume_best.py -q``.
"""

from __future__ import annotations

import json

import pytest
import torch

from llmos_jupyter.errors import NotFoundError, UsageError
from llmos_jupyter.training import FinetuneConfig, finetune
from llmos_jupyter.training.checkpoint import TRAINING_STATE


def same_weights(a, b) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


class StopAt:
    """should_stop that says yes once ``n`` optimizer steps are done."""

    def __init__(self, n):
        self.n, self.step = n, 0

    def on_step(self, step, *a):
        self.step = step

    def __call__(self):
        return self.step >= self.n


def test_resume_reaches_the_uninterrupted_weights(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    # dropout on (RNG states matter), grad_accum 2, 4 steps an epoch; the stop is mid-epoch 2, after step 5's
    # evaluation was due (eval_every 5) but a stop at a boundary comes before it
    cfg = FinetuneConfig(epochs=3, batch_size=8, lr=1e-2, grad_accum=2, eval_every=5, seed=3, warmup_ratio=0.2)
    ref = finetune(tiny_model(), tiny_tokenizer, train, ev, config=cfg, run_dir=tmp_path / "ref")
    stop = StopAt(5)
    cut = finetune(
        tiny_model(), tiny_tokenizer, train, ev, config=cfg, run_dir=tmp_path / "cut", callback=stop, should_stop=stop
    )
    assert cut.status == "interrupted" and cut.steps == 5
    state = json.loads((cut.checkpoint / "trainer_state.json").read_text())
    assert state["resumable"] is True and (cut.checkpoint / TRAINING_STATE).is_file()
    assert not same_weights(cut.model, ref.model)

    res = finetune(
        tiny_model(seed=9), tiny_tokenizer, train, ev, config=cfg, run_dir=tmp_path / "res", resume_from=cut.checkpoint
    )
    assert res.status == "completed" and res.steps == ref.steps == 12 and res.resumed_from == str(cut.checkpoint)
    assert same_weights(res.model, ref.model)
    assert res.train_loss == ref.train_loss and res.eval_history == ref.eval_history
    assert res.metrics == ref.metrics and res.metrics["n"] == 32
    assert res.checkpoint_sha256 == ref.checkpoint_sha256
    # a completed run has nothing to resume; a second resume of the same stop is fine
    with pytest.raises(UsageError, match="completed.*nothing to resume"):
        finetune(tiny_model(), tiny_tokenizer, train, ev, config=cfg, resume_from=res.checkpoint)


def test_lora_resume_after_keyboard_interrupt(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, seed=2, method="lora", lora_dropout=0.1)

    class Ctrl:
        def on_step(self, step, *a):
            if step == 3:
                raise KeyboardInterrupt

    ref = finetune(tiny_model(), tiny_tokenizer, train, ev, config=cfg)
    cut = finetune(tiny_model(), tiny_tokenizer, train, ev, config=cfg, run_dir=tmp_path / "cut", callback=Ctrl())
    assert cut.status == "interrupted" and cut.steps == 3
    res = finetune(tiny_model(), tiny_tokenizer, train, ev, config=cfg, resume_from=cut.checkpoint)
    assert res.steps == 16 and same_weights(res.model, ref.model) and res.metrics == ref.metrics


def test_resume_refusals_are_one_line_and_write_nothing(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=1e-3)
    stop = StopAt(2)
    cut = finetune(
        tiny_model(), tiny_tokenizer, train, config=cfg, run_dir=tmp_path / "cut", callback=stop, should_stop=stop
    )
    cases = [
        (dict(model=tiny_model(num_labels=3)), UsageError, "different model"),
        (dict(train=ev), UsageError, "different data"),
        (dict(config=FinetuneConfig(epochs=1, batch_size=8, lr=2e-3)), UsageError, "lr=0.001"),
        (dict(resume_from=tmp_path / "nowhere"), NotFoundError, "no checkpoint"),
    ]
    for over, err, msg in cases:
        kw = dict(model=tiny_model(), train=train, config=cfg, resume_from=cut.checkpoint) | over
        with pytest.raises(err, match=msg) as e:
            finetune(
                kw["model"],
                tiny_tokenizer,
                kw["train"],
                config=kw["config"],
                run_dir=tmp_path / "new",
                resume_from=kw["resume_from"],
            )
        assert "\n" not in str(e.value)
    assert not (tmp_path / "new").exists()


def test_early_stopping_keeps_and_loads_the_best(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    # lr 3e-2: macro_f1 climbs to its peak a few evaluations before the end, with dips on the way
    base = dict(epochs=3, batch_size=8, lr=3e-2, seed=1, eval_every=2)
    snaps = {}

    class Snap:
        def __init__(self, model):
            self.model = model

        def on_eval(self, step, epoch, metrics):
            snaps[step] = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    # the patience does not change the trajectory: a run without it shows what every evaluation saw
    m = tiny_model()
    full = finetune(
        m, tiny_tokenizer, train, ev, config=FinetuneConfig(**base, metric_for_best="macro_f1"), callback=Snap(m)
    )
    f1 = [(h["step"], h["macro_f1"]) for h in full.eval_history]
    best_step = max(f1, key=lambda sv: (sv[1], -sv[0]))[0]  # first evaluation reaching the maximum
    assert best_step < full.steps == f1[-1][0]  # the best is not the last: loading it back matters
    assert full.best_step == best_step == full.metrics["best_step"] and full.metrics["metric_for_best"] == "macro_f1"
    assert (
        full.metrics["macro_f1"] == max(v for _, v in f1) == full.best_value and full.metrics["stopped_early"] is False
    )
    assert all(torch.equal(p, snaps[best_step][n]) for n, p in m.named_parameters())

    es = finetune(
        tiny_model(),
        tiny_tokenizer,
        train,
        ev,
        config=FinetuneConfig(**base, early_stopping_patience=2),
        run_dir=tmp_path / "es",
    )
    seen = [(h["step"], h["macro_f1"]) for h in es.eval_history]
    assert seen == f1[: len(seen)]  # same trajectory until the stop
    # it stopped at the second evaluation in a row that did not beat the best so far
    bad, stop = 0, None
    for i, (s, v) in enumerate(f1):
        bad = 0 if i == 0 or v > max(x for _, x in f1[:i]) else bad + 1
        if bad == 2:
            stop = s
            break
    assert es.status == "completed" and es.stopped_early and es.steps == stop < es.total_steps
    assert es.metrics["stopped_early"] is True and es.best_step < stop
    assert es.metrics["macro_f1"] == max(v for _, v in seen) == es.best_value
    state = json.loads((es.checkpoint / "trainer_state.json").read_text())
    assert state["metrics"]["best_step"] == es.best_step and not (es.checkpoint / TRAINING_STATE).exists()

    # lower is better for the loss
    lo = finetune(
        tiny_model(), tiny_tokenizer, train, ev, config=FinetuneConfig(**dict(base, lr=1e-1), metric_for_best="loss")
    )
    losses = [(h["step"], h["loss"]) for h in lo.eval_history]
    assert lo.best_step == min(losses, key=lambda sv: (sv[1], sv[0]))[0] and lo.metrics["loss"] == min(
        v for _, v in losses
    )


def test_best_options_are_checked(tiny_model, tiny_tokenizer, sentiment):
    assert FinetuneConfig(eval_every=2, early_stopping_patience=1).best_metric() == ("macro_f1", True)
    assert FinetuneConfig(task="causal-lm", eval_every=2, metric_for_best="perplexity").best_metric() == (
        "perplexity",
        False,
    )
    assert FinetuneConfig(task="causal-lm").best_metric() == ("loss", False)
    with pytest.raises(UsageError, match="eval_every"):
        FinetuneConfig(early_stopping_patience=2)
    with pytest.raises(UsageError, match="metric_for_best='f1'.*macro_f1"):
        FinetuneConfig(eval_every=2, metric_for_best="f1")
    with pytest.raises(UsageError, match="metric_for_best='accuracy' is not a causal-lm metric"):
        FinetuneConfig(task="causal-lm", eval_every=2, metric_for_best="accuracy")
    with pytest.raises(UsageError, match="early.stopping.patience.*evaluations >= 1"):
        FinetuneConfig(eval_every=2, early_stopping_patience=0)
    train, _ = sentiment
    with pytest.raises(UsageError, match="need an eval set"):
        finetune(tiny_model(), tiny_tokenizer, train, config=FinetuneConfig(eval_every=2, early_stopping_patience=1))
