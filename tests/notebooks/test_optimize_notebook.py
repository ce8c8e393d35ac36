"""notebooks/07_optimize.ipynb executes headless (nbclient, a real kernel) on a stratified sample
of Rotten Tomatoes: MiniLM fine-tuned, then int8, structured pruning 30% with and without a
recovery epoch, and compile — each through ``%llm optimize`` — one comparison table and one plot.

Run: ``.venv/bin/python -m pytest tests/notebooks/test_optimize_notebook.py -q``. The full split:
``LLMOS_OPT_ROWS=0 .venv/bin/python notebooks/run.py notebooks/07_optimize.ipynb --out artifacts``.
"""
from __future__ import annotations

import re

import pytest

ROWS = 400  # 340 train / 60 test: one test row is 1.67 accuracy points


def _variant(text: str, name: str) -> dict:
    m = re.search(rf"RESULT {re.escape(name)}: accuracy ([0-9.]+) \(([+-][0-9.]+) points\), ([0-9.]+) samples/s "
                  rf"\(([0-9.]+)x\), linear weights ([0-9.]+) MiB, file ([0-9.]+) MiB \(run (op-[\w-]+)\)", text)
    assert m, f"no RESULT line for {name} in:\n{text}"
    keys = ("accuracy", "delta", "sps", "speedup", "linear", "file", "run")
    return {k: (m.group(i + 1) if k == "run" else float(m.group(i + 1))) for i, k in enumerate(keys)}


@pytest.mark.slow
def test_optimize_walkthrough_on_a_subset(notebook):
    from llmos_jupyter.training.runs import RunRegistry

    ex = notebook("07_optimize.ipynb", LLMOS_OPT_ROWS=ROWS)
    nb, text = ex.nb, ex.results
    assert f"RESULT rows used: {ROWS:,} of 8,530 Rotten Tomatoes reviews (train 340, test 60)" in text
    base = re.search(r"RESULT minilm \(fp32\): accuracy ([0-9.]+), ([0-9.]+) samples/s, linear weights ([0-9.]+) MiB, "
                     r"file ([0-9.]+) MiB", text)
    assert base, text
    fp32_acc, fp32_linear, fp32_file = float(base.group(1)), float(base.group(3)), float(base.group(4))
    v = {n: _variant(text, n) for n in ("minilm_int8", "minilm_p30", "minilm_p30r", "minilm_compiled")}

    # sizes are exact properties of the weights: int8 is 1 byte per weight + a scale and zero point per row
    assert fp32_linear == pytest.approx(41.07, abs=0.01) and fp32_file == pytest.approx(86.66, abs=0.01)
    assert fp32_linear / v["minilm_int8"]["linear"] >= 3.8
    assert v["minilm_p30"]["linear"] == v["minilm_p30r"]["linear"] == pytest.approx(28.46, abs=0.01)
    assert v["minilm_compiled"]["linear"] == fp32_linear and v["minilm_compiled"]["file"] == fp32_file
    # compiling changes no weight: the same predictions up to float reassociation (at most one of 60 rows)
    assert abs(v["minilm_compiled"]["accuracy"] - fp32_acc) <= 1 / 60 + 1e-9
    # int8 keeps the predictions within a few rows of 60
    assert abs(v["minilm_int8"]["accuracy"] - fp32_acc) <= 3 / 60 + 1e-9, text
    # every row is a registered run whose metrics are the numbers printed
    reg = RunRegistry(ex.home / "runs.sqlite")
    for name, row in v.items():
        run = reg.get(row["run"])
        assert run.kind == "optimize" and run.status == "completed" and run.config["new_alias"] == name
        assert round(run.metrics["after.accuracy"], 4) == row["accuracy"]
        assert round(run.metrics["before.accuracy"], 4) == fp32_acc  # the same original, measured each time
    assert reg.get(v["minilm_p30r"]["run"]).config["recover_epochs"] == 1
    assert reg.get(v["minilm_compiled"]["run"]).metrics["compile_s"] > 0
    assert float(re.search(r"RESULT compile time: ([0-9.]+) s", text).group(1)) > 0

    # the plot is in the saved notebook, and nothing failed or printed a user error
    plot = next(c for c in nb.cells if "accuracy vs latency" in c.source)
    assert [o for o in plot.get("outputs", []) if "image/png" in o.get("data", {})], plot.get("outputs")
    assert not ex.errors
    stderr = [o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not [s for s in stderr if "llmos:" in s], stderr
