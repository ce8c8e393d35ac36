"""notebooks/06_triton_attention.ipynb runs top to bottom on this machine's path (CPU: the
interpreter, which the notebook switches on itself; GPU: the benchmark table too)."""
from pathlib import Path

import pytest
import torch

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "06_triton_attention.ipynb"


def test_notebook_06_executes(monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    if not torch.cuda.is_available():
        # The kernel process must not inherit conftest's TRITON_INTERPRET: the notebook sets it.
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "(True," in text  # is_available() in the first cell
    logit_err = float(text.split("max |llmos_triton - sdpa| on real tokens:")[1].split()[0])
    assert logit_err < 1e-4
    # the correctness table: 3 dtypes x (out, dq, dk, dv), each within the FlashAttention rule
    rows = [ln.split() for ln in text.splitlines() if ln.split()[:1] in (["float32"], ["float16"], ["bfloat16"])]
    assert len(rows) == 12 and all(r[-1] == "ok" for r in rows), "\n".join(map(" ".join, rows))
