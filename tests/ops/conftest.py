"""Run the Triton kernels on the CPU: TRITON_INTERPRET=1 must be set before the kernel module is
imported (triton.jit reads it when it decorates). On a machine with CUDA the variable is left
alone, so the same tests run the compiled kernels on the GPU (and the gpu-marked ones run too);
set TRITON_INTERPRET=1 yourself to force the interpreter there.
"""

import importlib
import os
import sys

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Another test module may have imported the kernels before this conftest ran: decorate them again.
_mod = sys.modules.get("llmos_jupyter.ops.attention")
if _mod is not None and _mod.INTERPRET != (os.environ.get("TRITON_INTERPRET") == "1"):
    importlib.reload(_mod)

import pytest  # noqa: E402

from llmos_jupyter.ops import attention  # noqa: E402

DEVICE = "cpu" if attention.INTERPRET else "cuda"


@pytest.fixture
def device() -> str:
    """Where test tensors live: the CPU under the interpreter, else the GPU (compiled kernels)."""
    return DEVICE


def pytest_report_header(config):
    ok, why = attention.is_available()
    return f"llmos_triton attention: {'available' if ok else 'UNAVAILABLE'} ({why}); test device {DEVICE}"


def pytest_terminal_summary(terminalreporter):
    from attention_reference import WORST

    if not WORST:
        return
    terminalreporter.section("llmos_triton worst error vs FlashAttention rule (err <= 2*torch_err + atol)")
    for dtype, w in sorted(WORST.items()):
        terminalreporter.write_line(
            f"{dtype:9s} err {w['err']:.3g}  torch {w['err_torch']:.3g}  atol {w['atol']:g}  "
            f"ratio err/bound {w['ratio']:.2f}  ({w['what']})"
        )
