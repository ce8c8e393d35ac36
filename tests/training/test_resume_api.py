"""`api.finetune(..., resume=RUN_ID)` and `%llm finetune ... --resume/--eval-every/--patience/--metric`
on a tiny random BERT saved from a config.

Run: ``.venv/bin/python -m pytest tests/training/test_resume_api.py -q``.
"""

from __future__ import annotations

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell

from llmos_jupyter.errors import NotFoundError, UsageError

ROWS = [
    {"text": t, "label": y}
    for t, y in [
        ("great movie", 1),
        ("awful film", 0),
        ("a gorgeous, witty, seductive movie", 1),
        ("this film was a complete waste of two hours", 0),
        ("hello world great", 1),
        ("the lazy dog awful", 0),
    ]
    * 6
]
OPTS = dict(epochs=2, batch_size=4, lr=1e-3, seed=4, eval_every=3, early_stopping_patience=50, progress=False)


def test_resume_a_run_through_the_api(fresh_api, tiny_bert, monkeypatch):
    api = fresh_api
    for alias in ("m", "ref"):
        api.load(str(tiny_bert), alias=alias, task="seq-cls", labels="negative,positive")
    api.data_load(ROWS, name="toy")
    api.data_split("toy", test=0.25, seed=0)
    ref = api.finetune("ref", "toy", **OPTS)
    assert ref.status == "completed"

    real_on_step = api._JobProgress.on_step

    def ctrl_c_at_4(self, step, *a):  # a KeyboardInterrupt from the progress display, as Ctrl-C would be
        real_on_step(self, step, *a)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(api._JobProgress, "on_step", ctrl_c_at_4)
    cut = api.finetune("m", "toy", **OPTS)
    monkeypatch.undo()
    assert cut.status == "interrupted"

    # refusals: one line each, before any registry row or checkpoint is written
    api.data_load(ROWS[::-1], name="other")
    api.data_split("other", test=0.25, seed=0)
    api.load(str(tiny_bert), alias="three", task="seq-cls", labels="a,b,c")
    cases = [
        (dict(resume="ft-000000-none"), NotFoundError, "run"),
        (dict(resume=ref.id), UsageError, "completed; nothing to resume"),
        (dict(resume=cut.id, dataset="other"), UsageError, "dataset fingerprint"),
        (dict(resume=cut.id, alias="three"), UsageError, "different model"),
        (dict(resume=cut.id, lr=5e-3), UsageError, "lr=0.001"),
    ]
    n_runs, ckpts = len(api.runs(100)), sorted((api.registry().path.parent / "checkpoints").iterdir())
    for over, err, msg in cases:
        kw = dict(alias="m", dataset="toy", progress=False) | over
        with pytest.raises(err, match=msg) as e:
            api.finetune(kw.pop("alias"), kw.pop("dataset"), **kw)
        assert "\n" not in str(e.value)
    assert len(api.runs(100)) == n_runs and sorted((api.registry().path.parent / "checkpoints").iterdir()) == ckpts

    n_runs = len(api.runs(100))
    res = api.finetune("m", "toy", resume=cut.id, progress=False)  # the run's own config comes back
    assert res.status == "completed" and res.id not in (cut.id, ref.id)
    assert res.config["resumed_from"] == cut.id and res.config["eval_every"] == 3 and res.config["lr"] == 1e-3
    assert len(api.runs(100)) == n_runs + 1
    pm = dict(api.manager().get("m").model.named_parameters())
    pr = dict(api.manager().get("ref").model.named_parameters())
    assert pm.keys() == pr.keys() and all(torch.equal(pm[k], pr[k]) for k in pm)
    assert res.metrics == ref.metrics and res.metrics["best_step"] == ref.metrics["best_step"]
    assert res.checkpoint_sha256 == ref.checkpoint_sha256

    # one rule: a run is resumed once; the link is kept both ways and a second resume is refused
    assert api.run(cut.id).resumed_by == res.id and api.run(res.id).config["resumed_from"] == cut.id
    with pytest.raises(UsageError, match=f"already resumed by run {res.id}"):
        api.finetune("m", "toy", resume=cut.id, progress=False)
    assert len(api.runs(100)) == n_runs + 1


def test_magic_options_reach_the_api(monkeypatch):
    from llmos_jupyter import api

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    seen = {}
    monkeypatch.setattr(api, "finetune", lambda alias, dataset, **kw: seen.update(alias=alias, dataset=dataset, **kw))
    ip.run_line_magic("llm", "finetune m toy --eval-every 5 --patience 3 --metric loss --no-progress")
    assert seen == dict(
        alias="m",
        dataset="toy",
        progress=False,
        background=False,
        resume=None,
        eval_every=5,
        early_stopping_patience=3,
        metric_for_best="loss",
    )
    seen.clear()
    ip.run_line_magic("llm", "finetune m toy --resume ft-261129-abcd --background")
    assert seen["resume"] == "ft-261129-abcd" and seen["background"] is True and "eval_every" not in seen
