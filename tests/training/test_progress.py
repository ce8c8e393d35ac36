"""TrainingProgress: text fallback, thread safety, and in a real kernel (nbclient) a live widget
that a saved notebook shows as the final static HTML."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from llmos_jupyter.training import FinetuneConfig, finetune
from llmos_jupyter.widgets.progress import TrainingProgress, detect_mode, loss_svg

REPO = Path(__file__).resolve().parents[2]


def test_text_mode_in_a_script(tiny_model, tiny_tokenizer, sentiment, tmp_path):
    train, ev = sentiment
    out = io.StringIO()
    p = TrainingProgress("fine-tune", mode="auto", stream=out, text_interval_s=0.0)
    assert p.mode == "text" == detect_mode()  # no kernel here
    r = finetune(
        tiny_model(),
        tiny_tokenizer,
        train,
        ev,
        config=FinetuneConfig(batch_size=16, eval_every=2, lr=1e-3),
        callback=p,
        run_dir=tmp_path,
        run_id="ft-x",
    )
    text = out.getvalue()
    assert text.splitlines()[0] == "fine-tune ft-x: 4 steps, 64 samples"
    assert "step 4/4" in text and "eval at step 2 (epoch 0.50): accuracy" in text
    assert f"final train loss  {r.train_loss[-1]:.4f}" in text and "fine-tune ft-x: completed" in text
    assert r.checkpoint_sha256 in text
    assert p.losses == r.train_loss and p.status == "completed" and p.result is r
    assert [e["step"] for e in p.evals] == [2, 4]
    assert p.renders == 0  # nothing live in a script
    bundle = p._repr_mimebundle_()
    assert "completed" in bundle["text/html"] and "data:image/png;base64," in bundle["text/html"]
    assert f"{r.metrics['accuracy']:.4f}" in bundle["text/plain"]


def test_thread_safe_updates():
    p = TrainingProgress(mode="none")
    p.on_begin(4000, 4000, None)

    def drive(k):
        for i in range(1000):
            p.on_step(k * 1000 + i + 1, 0.5, 1e-3, 10.0, 1.0)

    ts = [threading.Thread(target=drive, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(p.losses) == len(p.loss_steps) == 4000
    p.on_end("completed", None)
    assert "completed" in p._repr_mimebundle_()["text/plain"]


def test_loss_svg_is_bounded():
    svg = loss_svg(list(range(10_000)), [1.0 / (1 + i) for i in range(10_000)])
    assert svg.count(",") <= 400 and svg.startswith("<svg")
    assert loss_svg([1], [0.5]) == ""


NOTEBOOK_CELL_1 = """
import json, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
import torch; torch.set_num_threads(1)
from tiny_kit import make_sentiment, tiny_model, word_tokenizer
import datasets
from llmos_jupyter.training import finetune, FinetuneConfig
from llmos_jupyter.widgets.progress import TrainingProgress
d = datasets.Dataset.from_dict(make_sentiment()); tr, ev = d.select(range(64)), d.select(range(64, 96))
tok = word_tokenizer()
p = TrainingProgress("fine-tune")
t0 = time.monotonic()
r = finetune(tiny_model('bert-cls', tok).eval(), tok, tr, ev,
             config=FinetuneConfig(epochs=25, batch_size=8, lr=1e-2, eval_every=100), callback=p, run_id="ft-nb")
elapsed = time.monotonic() - t0
print(json.dumps(dict(mode=p.mode, renders=p.renders, steps=r.steps, elapsed=elapsed, loss=r.train_loss[-1],
                      acc=r.metrics["accuracy"], evals=len(p.evals))))
"""

NOTEBOOK_CELL_2 = """
import threading
p2 = TrainingProgress("background")   # built in the cell; driven from a job thread
box = {}
def job():
    box["r"] = finetune(tiny_model('bert-cls', tok, seed=1).eval(), tok, tr,
                        config=FinetuneConfig(batch_size=8, lr=1e-2), callback=p2, run_id="ft-bg")
t = threading.Thread(target=job); t.start(); t.join()
print(json.dumps(dict(steps=box["r"].steps, loss=box["r"].train_loss[-1])))
"""


@pytest.mark.slow
def test_saved_notebook_shows_the_final_state():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(NOTEBOOK_CELL_1.format(repo=str(REPO), tests=str(REPO / "tests"))),
        nbformat.v4.new_code_cell(NOTEBOOK_CELL_2),
    ]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    for cell in nb.cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors

    outs = nb.cells[0].outputs
    info = json.loads(
        [o for o in outs if o.output_type == "stream" and o.name == "stdout"][-1].text.strip().splitlines()[-1]
    )
    assert info["mode"] == "widget" and info["steps"] == 200 and info["evals"] == 2
    # throttled: at most 4 redraws a second (plus the forced ones at begin and at each evaluation)
    assert info["renders"] <= 4 * info["elapsed"] + 1 + info["evals"] + 1, info
    displays = [o for o in outs if o.output_type == "display_data"]
    assert len(displays) == 1
    data = displays[0].data
    assert "application/vnd.jupyter.widget-view+json" not in data  # the live view was replaced ...
    html, plain = data["text/html"], data["text/plain"]  # ... by the final state
    assert "fine-tune ft-nb" in html and "completed" in html and "data:image/png;base64," in html
    assert f"{info['loss']:.4f}" in html and f"{info['acc']:.4f}" in html
    assert plain.startswith("fine-tune ft-nb: completed") and "steps             200/200" in plain

    outs2 = nb.cells[1].outputs
    info2 = json.loads([o for o in outs2 if o.output_type == "stream"][-1].text.strip().splitlines()[-1])
    d2 = [o for o in outs2 if o.output_type == "display_data"]
    assert len(d2) == 1 and "background ft-bg" in d2[0].data["text/html"] and "completed" in d2[0].data["text/html"]
    assert f"{info2['loss']:.4f}" in d2[0].data["text/plain"]
