"""The walkthrough notebooks execute headless with a real kernel (nbclient) on the real packaged
models and data, and report what they should."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, tmp_path: Path, monkeypatch, **env) -> tuple[list[str], object]:
    import nbformat
    from nbclient import NotebookClient

    shared = Path(os.environ["LLMOS_HOME"])
    home = tmp_path / "home"
    for sub in ("models", "datasets"):
        (home / sub).mkdir(parents=True)
        for entry in (shared / sub).glob("*"):
            if (entry / ".llmos-pulled.json").is_file():
                (home / sub / entry.name).symlink_to(entry)
    monkeypatch.setenv("LLMOS_HOME", str(home))
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    nbformat.write(nb, tmp_path / name)
    lines = [line for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "stream"
             for line in o.get("text", "").splitlines()]
    return lines, nb


@pytest.mark.slow
def test_quickstart_on_a_subset(pulled, tmp_path, monkeypatch):
    rows = 2000
    lines, nb = execute("01_quickstart.ipynb", tmp_path, monkeypatch, LLMOS_QUICKSTART_ROWS=rows)
    results = [l for l in lines if l.startswith("RESULT")]
    assert f"RESULT rows used: {rows:,} of 8,530 Rotten Tomatoes reviews" in results
    acc = float(re.search(r"RESULT test accuracy: ([0-9.]+)", "\n".join(results)).group(1))
    assert acc >= 0.70, results
    assert any(l.startswith("RESULT classify: positive") for l in results), results
    assert "Paris" in next(l for l in results if l.startswith("RESULT chat answer:"))
    speed = re.search(r"RESULT chat speed: ([0-9.]+) tokens/s on llama.cpp", "\n".join(results))
    assert speed and float(speed.group(1)) > 20, results  # llama.cpp serves the GGUF (transformers: ~12 here)
    stats = [l for l in lines if "tokens/s, first token" in l]
    assert stats and "(llama.cpp)" in stats[0], lines  # the dim line under the streamed answer
    # the fine-tune's progress view left readable static HTML in the saved notebook
    html = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", [])
            if "data" in o and "text/html" in o["data"] and "finetune minilm" in o["data"]["text/html"]]
    assert html, "no static HTML progress view in the executed notebook"
    # nothing went to stderr as an error
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.slow
def test_data_walkthrough(pulled, tmp_path, monkeypatch):
    lines, nb = execute("03_data.ipynb", tmp_path, monkeypatch)
    text = "\n".join(l for l in lines if l.startswith("RESULT"))
    assert "RESULT rows loaded: 33,530" in text
    assert re.search(r"RESULT dedupe leaves 33,434 rows", text), text
    m = re.search(r"RESULT search: (\d)/5 of the top rows negative", text)
    assert m and int(m.group(1)) >= 4, text
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
