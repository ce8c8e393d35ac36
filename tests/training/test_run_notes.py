"""Notes a fine-tune prints on stderr when its numbers would mislead: a run whose final evaluation
predicts one class for every row (a user's report: a 15-step run kept 0.5 accuracy on a balanced
set and nothing said it had learnt nothing). Tiny random BERT saved from a config.

Run: ``.venv/bin/python -m pytest tests/training/test_run_notes.py -q``.
"""

from __future__ import annotations

# 4 of 5 rows positive: a short run with a high learning rate predicts the majority class only
ROWS = [
    {"text": f"good great movie {i}" if i % 5 else f"bad awful film {i}", "label": int(i % 5 != 0)} for i in range(100)
]


def test_a_run_that_predicts_one_class_says_so(fresh_api, tiny_bert, capsys):
    api = fresh_api
    api.data_load(ROWS, name="u")
    api.data_split("u", test=0.3)
    api.load(str(tiny_bert), alias="tb", task="seq-cls", labels="neg,pos")
    capsys.readouterr()
    run = api.finetune("tb", "u", epochs=1, batch_size=8, lr=1e-3, progress=False)
    ev = api.evaluate("tb", "u")
    assert run.status == "completed" and set(ev.predictions.tolist()) == {1} and ev.n == 30
    assert run.metrics["accuracy"] == ev.accuracy == 0.8  # the share of 'pos' among the 30 held-out rows
    assert capsys.readouterr().err == (
        # 70 training rows in batches of 8: 9 steps
        "llmos: note: after 9 steps 'tb' predicts 'pos' "
        "for every one of the 30 evaluation rows (accuracy 0.8000 is that class's share); train longer (epochs=3) "
        "or try another learning rate than lr=0.001\n"
    )
    api.load(str(tiny_bert), alias="tb2", task="seq-cls", labels="neg,pos")
    capsys.readouterr()
    run = api.finetune("tb2", "u", epochs=1, batch_size=8, lr=1e-5, progress=False)  # a low rate: both classes come out
    assert len(set(api.evaluate("tb2", "u").predictions.tolist())) == 2
    assert capsys.readouterr().err == ""
