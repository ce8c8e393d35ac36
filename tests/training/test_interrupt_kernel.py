"""Interrupt a foreground ``%llm finetune`` in a real Jupyter kernel (the stop button: SIGINT),
then ``%llm finetune ... --resume RUN_ID`` to the weights of a run that was never stopped.

The kernel is started with ``jupyter_client`` (the kernel of this venv), ``LLMOS_HOME`` in the
test's ``tmp_path``. The test watches IOPub for the progress bar's value (an ``IntProgress``
widget, redrawn at most 4×/s) and calls ``km.interrupt_kernel()`` once it shows a few steps —
exactly what JupyterLab's stop button sends. The first redraw comes ~0.25 s after the start
whatever the machine's load; a run is a few hundred tiny steps (~2 s on a shared 2-core
machine), so the stop lands early in it (steps ~30-50 of 240-288 there).

Run: ``.venv/bin/python -m pytest tests/training/test_interrupt_kernel.py -q``.
"""

from __future__ import annotations

import json
import os
import queue
import time

import pytest

pytest.importorskip("jupyter_client")

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
    * 80
]  # 480 rows: 384 train / 96 test → 96 steps an epoch at batch size 4
PAIRS = [
    {"prompt": p, "response": r}
    for p, r in [
        ("hello world", "great movie"),
        ("what is the capital of france?", "paris."),
        ("the quick brown fox", "jumps over the lazy dog"),
        ("a gorgeous, witty, seductive movie", "great movie"),
    ]
    * 60
]  # 240 pairs: 192 train / 48 test → 48 steps an epoch

CLS_OPTS = "--epochs 3 --batch-size 4 --lr 1e-3 --seed 0 --eval-every 40"
SFT_OPTS = "--epochs 5 --batch-size 4 --lr 1e-3 --seed 0 --eval-every 40"


class Kernel:
    """A real ipykernel over ZMQ. ``execute`` sends a cell; ``wait`` collects its IOPub messages
    until it is idle and returns them with the execute_reply."""

    def __init__(self, home, cwd):
        from jupyter_client import KernelManager

        env = {
            **os.environ,
            "LLMOS_HOME": str(home),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
        }
        self.km = KernelManager(kernel_name="python3")  # "python" in the spec → this venv's interpreter
        self.log = open(os.path.join(cwd, "kernel.log"), "wb")  # the kernel's own stdout/stderr
        self.km.start_kernel(env=env, cwd=str(cwd), stdout=self.log, stderr=self.log)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def execute(self, code: str) -> str:
        return self.kc.execute(code)

    def wait(self, msg_id: str, timeout: float = 180.0, until=None) -> tuple[list[dict], dict | None]:
        """IOPub messages of cell ``msg_id`` and its execute_reply. With ``until(msg)``, return
        (messages so far, None) as soon as one message satisfies it."""
        msgs, deadline = [], time.monotonic() + timeout  # a liveness bound, not a speed assertion
        while time.monotonic() < deadline:
            try:
                m = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(m)
            if until is not None and until(m):
                return msgs, None
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                reply = self.kc.get_shell_msg(timeout=30)
                while reply["parent_header"].get("msg_id") != msg_id:
                    reply = self.kc.get_shell_msg(timeout=30)
                return msgs, reply
        raise TimeoutError(f"cell did not finish in {timeout} s")

    def run(self, code: str, timeout: float = 180.0) -> tuple[list[dict], dict]:
        msgs, reply = self.wait(self.execute(code), timeout)
        assert reply["content"]["status"] == "ok", "\n".join(reply["content"].get("traceback", []))
        assert not errors(msgs), msgs
        return msgs, reply

    def value(self, expr: str):
        """``json.loads`` of what ``print(json.dumps(expr))`` writes in the kernel."""
        msgs, _ = self.run(f"print(json.dumps({expr}))")
        return json.loads(stream(msgs, "stdout").strip().splitlines()[-1])

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        self.log.close()


def stream(msgs, name: str) -> str:
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == name)


def errors(msgs) -> list[dict]:
    return [m["content"] for m in msgs if m["msg_type"] == "error"]


def bar_value(m) -> int | None:
    """The step an ``IntProgress`` update shows (ipywidgets 8: comm_msg ``update`` with state)."""
    if m["msg_type"] != "comm_msg":
        return None
    v = ((m["content"].get("data") or {}).get("state") or {}).get("value")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def texts(msgs, msg_type: str) -> list[str]:
    return [m["content"]["data"].get("text/plain", "") for m in msgs if m["msg_type"] == msg_type]


# Defined in the kernel. probe_*: after the stop, is the model still usable, in eval mode (the same
# answer twice: no dropout), and holding exactly the weights of the run's checkpoint? compare: the
# resumed run against the uninterrupted one.
PROBES = """
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

@torch.no_grad()
def probe_seq_cls(alias, run_id):
    rec, texts = api.manager().get(alias), ['great movie', 'awful film', 'the lazy dog']
    a, b = api.classify(alias, texts), api.classify(alias, texts)
    saved = AutoModelForSequenceClassification.from_pretrained(api.registry().get(run_id).checkpoint).eval()
    probs = saved(**rec.tokenizer(texts, padding=True, return_tensors='pt')).logits.softmax(-1)
    return dict(same_twice=[d['scores'] for d in a.data] == [d['scores'] for d in b.data],
                max_diff_vs_checkpoint=max(abs(d['scores'][k] - float(p[i]))
                                           for d, p in zip(a.data, probs) for i, k in enumerate(rec.labels)))

@torch.no_grad()
def probe_causal_lm(alias, run_id):
    rec = api.manager().get(alias)
    a = api.generate(alias, 'hello world', max_new_tokens=6, stream=False)
    b = api.generate(alias, 'hello world', max_new_tokens=6, stream=False)
    saved = AutoModelForCausalLM.from_pretrained(api.registry().get(run_id).checkpoint).eval()
    enc = rec.tokenizer(['hello world what is'], return_tensors='pt')
    return dict(same_twice=str(a) == str(b),
                max_diff_vs_checkpoint=float((rec.model(**enc).logits - saved(**enc).logits).abs().max()))

def compare(alias_a, run_a, alias_b, run_b):
    ra, rb = api.registry().get(run_a), api.registry().get(run_b)
    pa = dict(api.manager().get(alias_a).model.named_parameters())
    pb = dict(api.manager().get(alias_b).model.named_parameters())
    return dict(same_names=pa.keys() == pb.keys(), n_params=len(pa),
                unequal=[k for k in pa if not torch.equal(pa[k], pb[k])],
                metrics=[ra.metrics, rb.metrics], sha=[ra.checkpoint_sha256, rb.checkpoint_sha256],
                status=[ra.status, rb.status], resumed_from=ra.config.get('resumed_from'),
                training=[api.manager().get(alias_a).model.training, api.manager().get(alias_b).model.training],
                ck=[ra.checkpoint, rb.checkpoint])
"""


@pytest.fixture
def kernel(tmp_path):
    k = Kernel(tmp_path / "home", tmp_path)
    k.run("%load_ext llmos_jupyter\nimport json, torch\nfrom llmos_jupyter import api\n" + PROBES)
    yield k
    k.close()


def interrupt_resume_compare(kernel, alias: str, ref: str, dataset: str, opts: str, probe: str) -> dict:
    """Start ``%llm finetune alias dataset opts`` in the foreground, press the stop button after a
    few steps, check the stop, resume it, train ``ref`` uninterrupted; returns what was seen."""
    cell = kernel.execute(f"%llm finetune {alias} {dataset} {opts}")
    seen, reply = kernel.wait(cell, until=lambda m: (bar_value(m) or 0) >= 3)
    assert reply is None, "the run ended before its progress showed 3 steps"
    kernel.km.interrupt_kernel()  # what JupyterLab's stop button sends: SIGINT
    rest, reply = kernel.wait(cell)
    msgs = seen + rest
    # the cell ends normally: no error reply, no traceback, on stderr only a note saying how to go
    # on (checked below); its result and the progress view say "interrupted"
    assert reply["content"]["status"] == "ok", reply["content"]
    assert not errors(msgs) and "Traceback" not in json.dumps([m["content"] for m in msgs])
    (result,) = texts(msgs, "execute_result")
    run_id = result.split()[0]
    assert result.startswith(f"{run_id} finetune interrupted model={alias}"), result
    final_views = texts(msgs, "update_display_data")  # the progress view, replaced by its final state
    assert any(t.startswith(f"finetune {alias} on {dataset} {run_id}: interrupted") for t in final_views), final_views

    cut = kernel.value(f"""dict(
        row=api.registry().get({run_id!r}).status,
        ck=api.registry().get({run_id!r}).checkpoint,
        training=api.manager().get({alias!r}).model.training,
        job=[j.state for j in api.scheduler().jobs.values()][-1])""")
    assert cut["row"] == "interrupted" and cut["job"] == "interrupted"
    assert cut["training"] is False  # back in eval mode
    state = json.loads(open(os.path.join(cut["ck"], "trainer_state.json")).read())
    assert state["status"] == "interrupted" and state["resumable"] is True
    assert 0 < state["steps"] < state["total_steps"] and len(state["train_loss"]) == state["steps"]
    resume = f"--resume {run_id}"
    assert stream(msgs, "stderr") == (
        f"llmos: note: run {run_id} stopped at step {state['steps']}/{state['total_steps']}; '{alias}' keeps the "
        f"weights of that step — continue this run with {resume}\n"
    )
    assert os.path.isfile(os.path.join(cut["ck"], "model.safetensors"))
    assert os.path.isfile(os.path.join(cut["ck"], "training_state.pt"))
    # the model still serves, in eval mode, with exactly the checkpoint's weights
    used = kernel.value(f"{probe}({alias!r}, {run_id!r})")
    assert used["same_twice"] is True and used["max_diff_vs_checkpoint"] == 0.0, used

    msgs, _ = kernel.run(f"%llm finetune {alias} {dataset} {resume}")  # as the note says
    (resumed,) = texts(msgs, "execute_result")
    res_id = resumed.split()[0]
    assert res_id != run_id and resumed.startswith(f"{res_id} finetune completed model={alias}"), resumed
    assert stream(msgs, "stderr") == ""
    msgs, _ = kernel.run(f"%llm finetune {ref} {dataset} {opts}")
    (full,) = texts(msgs, "execute_result")
    ref_id = full.split()[0]
    assert full.startswith(f"{ref_id} finetune completed model={ref}"), full

    got = kernel.value(f"compare({alias!r}, {res_id!r}, {ref!r}, {ref_id!r})")
    assert got["status"] == ["completed", "completed"] and got["resumed_from"] == run_id
    assert got["same_names"] and got["n_params"] > 0 and got["unequal"] == []  # torch.equal on every parameter
    assert got["metrics"][0] == got["metrics"][1] and got["metrics"][0]  # same final evaluation
    assert got["sha"][0] == got["sha"][1]  # byte-identical checkpoint weights
    assert got["training"] == [False, False]
    rs, fs = (json.loads(open(os.path.join(ck, "trainer_state.json")).read()) for ck in got["ck"])
    assert rs["steps"] == fs["steps"] == fs["total_steps"] > state["steps"]
    assert rs["train_loss"][: state["steps"]] == state["train_loss"]  # the resumed run carries the cut run's losses
    assert rs["train_loss"] == fs["train_loss"] and rs["eval_history"] == fs["eval_history"]
    assert len(fs["eval_history"]) >= 2
    return {"cut_step": state["steps"], "total": fs["total_steps"]}


def test_stop_button_then_resume_seq_cls(kernel, tiny_bert):
    for alias in ("m", "ref"):
        kernel.run(f"%llm load {tiny_bert} --task seq-cls --labels neg,pos --as {alias}")
    kernel.run(f"api.data_load({ROWS!r}, name='toy'); api.data_split('toy', test=0.2, seed=0)")
    seen = interrupt_resume_compare(kernel, "m", "ref", "toy", CLS_OPTS, "probe_seq_cls")
    assert seen["total"] == 288
    print(f"stopped at step {seen['cut_step']}/{seen['total']}")  # shown by pytest -rP


def test_stop_button_then_resume_causal_lm_sft(kernel, tiny_llama):
    for alias in ("g", "gref"):
        kernel.run(f"%llm load {tiny_llama} --task causal-lm --as {alias}")
    kernel.run(f"api.data_load({PAIRS!r}, name='pairs'); api.data_split('pairs', test=0.2, seed=0, stratify=None)")
    seen = interrupt_resume_compare(kernel, "g", "gref", "pairs", SFT_OPTS, "probe_causal_lm")
    assert seen["total"] == 240
    print(f"stopped at step {seen['cut_step']}/{seen['total']}")  # shown by pytest -rP
