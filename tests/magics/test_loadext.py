"""`%load_ext llmos_jupyter` stays light: no torch, transformers, datasets, llama.cpp or the server's
FastAPI/uvicorn imported."""

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "triton", "llama_cpp", "fastapi", "uvicorn", "starlette", "pydantic")
CODE = f"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
t = time.perf_counter()
ip.run_line_magic('load_ext', 'llmos_jupyter')
dt = time.perf_counter() - t
ip.run_line_magic('llm', 'help')
print(json.dumps({{"s": dt, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_load_ext_imports_no_heavy_modules():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["heavy"] == []
