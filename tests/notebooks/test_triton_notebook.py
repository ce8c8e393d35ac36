"""notebooks/06_triton_attention.ipynb runs top to bottom on this machine's path (CPU: the
interpreter, which the notebook switches on itself; GPU: the benchmark table too)."""
import torch
from notebook_kit import execute_notebook


def test_notebook_06_executes():
    # Without CUDA the kernel must not inherit conftest's TRITON_INTERPRET: the notebook sets it.
    nb = execute_notebook("06_triton_attention.ipynb", drop=() if torch.cuda.is_available() else ("TRITON_INTERPRET",),
                          timeout=600).nb
    text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "(True," in text  # is_available() in the first cell
    logit_err = float(text.split("max |llmos_triton - sdpa| on real tokens:")[1].split()[0])
    assert logit_err < 1e-4
    # the correctness table: 3 dtypes x (out, dq, dk, dv), each within the FlashAttention rule
    rows = [ln.split() for ln in text.splitlines() if ln.split()[:1] in (["float32"], ["float16"], ["bfloat16"])]
    assert len(rows) == 12 and all(r[-1] == "ok" for r in rows), "\n".join(map(" ".join, rows))
