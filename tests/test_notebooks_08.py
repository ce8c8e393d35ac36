"""notebooks/08_serve.ipynb executes headless (nbclient, a real kernel): `%llm serve` serves SmolLM2
(llama.cpp) and MiniLM, and the notebook calls them with the `openai` client, plain, streamed,
async and concurrent."""
from __future__ import annotations

import re

import pytest

from test_notebooks import execute


@pytest.mark.slow
def test_serve_walkthrough(pulled, tmp_path, monkeypatch):
    lines, nb = execute("08_serve.ipynb", tmp_path, monkeypatch)
    text = "\n".join(line for line in lines if line.startswith("RESULT"))
    assert "RESULT models: smol (causal-lm, llama.cpp), minilm (embedding, transformers)" in text, text
    assert "Paris" in re.search(r"RESULT chat: (.*)", text).group(1), text
    usage = re.search(r"RESULT usage: (\d+) prompt tokens, (\d+) completion tokens, finish_reason (\w+)", text)
    assert usage and int(usage.group(1)) > 20 and usage.group(3) == "stop", text
    assert "RESULT stream equals plain: True" in text
    assert f"RESULT stream usage: {usage.group(2)} completion tokens" in text
    assert "RESULT short: finish_reason length, 8 tokens" in text
    assert "RESULT embeddings: (3, 384) same as llm.embed: True" in text
    assert "RESULT concurrent: 4 of 4 answered" in text
    assert re.search(r"RESULT refused: 404 model 'smollm2-135m-instruct' is not served here", text), text
    status = [o["text"] for c in nb.cells if c.source == "%llm serve status" for o in c.get("outputs", [])
              if "text" in o] + [o["data"]["text/plain"] for c in nb.cells if c.source == "%llm serve status"
                                  for o in c.get("outputs", []) if "data" in o]
    assert status and re.search(r"requests: 8 served, 0 failed, 0 in flight, 0 queued", status[0]), status
    stopped = [o for c in nb.cells if c.source == "%llm serve stop" for o in c.get("outputs", [])]
    assert stopped and "stopped the server" in str(stopped[0])
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    warned = [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not warned, warned
