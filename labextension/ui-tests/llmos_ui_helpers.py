"""Kernel-side helpers for the UI tests (importable in the test kernels: run.sh puts this folder
on PYTHONPATH).

``save_tiny_llama(path)`` writes a tiny random causal LM for ``%llm load``.
``start_demo_job(seconds)`` shows a background job in the panel. Until the API runs background
jobs itself, it wraps the real API (models, datasets, hardware, unload all real) in a provider
that adds one job advanced by a thread, through ``llmos_jupyter.comm.set_provider``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path


def save_tiny_llama(path) -> str:
    """A 1-layer Llama with a word-level tokenizer trained in memory; no downloads."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["hello world the side panel shows models and jobs"],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


class _WithDemoJobs:
    """The real API plus synthetic jobs (a provider for ``llmos_jupyter.comm``)."""

    def __init__(self):
        from llmos_jupyter import api

        self.api = api
        self.listeners: list = []
        self.jobs: dict[str, dict] = {}

    def state(self):
        s = dict(self.api.state())
        s["jobs"] = list(s.get("jobs") or []) + [dict(j) for j in self.jobs.values()]
        return s

    def hardware(self):
        return self.api.hardware()

    def subscribe(self, cb):
        undo = self.api.subscribe(cb)
        self.listeners.append(cb)

        def unsubscribe():
            undo()
            if cb in self.listeners:
                self.listeners.remove(cb)
        return unsubscribe

    def unload(self, alias):
        return self.api.unload(alias)

    def cancel(self, job_id):
        if job_id not in self.jobs:
            return self.api.cancel(job_id)
        self.jobs[job_id]["state"] = "cancelled"
        self._emit(job_id)

    def _emit(self, job_id):
        for cb in list(self.listeners):
            cb({"type": "job", "id": job_id})

    def run(self, job_id: str, seconds: float, steps: int):
        job = self.jobs[job_id]
        t0 = time.time()
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            if job["state"] != "running":
                return
            elapsed = time.time() - t0
            job.update(step=step, progress=step / steps, loss=2.5 / (1 + 0.1 * step),
                       samples_per_s=round(8 * step / elapsed, 1),
                       eta_s=(steps - step) * elapsed / step)
            self._emit(job_id)
        job["state"] = "done"
        self._emit(job_id)


_demo: _WithDemoJobs | None = None


def start_demo_job(seconds: float = 60.0, steps: int = 120, job_id: str = "demo-1",
                   background: bool = True) -> str:
    """Show a job ``job_id`` in the panel that advances ``steps`` times over ``seconds``: in a
    thread (``background=True``), or in this cell, blocking it like a foreground fine-tune."""
    global _demo
    from llmos_jupyter import comm

    if _demo is None:
        _demo = _WithDemoJobs()
        comm.set_provider(_demo)
    _demo.jobs[job_id] = {"id": job_id, "kind": "finetune", "target": "tiny", "state": "running",
                          "progress": 0.0, "step": 0, "total_steps": steps, "loss": None,
                          "samples_per_s": None, "eta_s": None}
    _demo._emit(job_id)
    if background:
        threading.Thread(target=_demo.run, args=(job_id, seconds, steps), name="llmos-demo-job",
                         daemon=True).start()
    else:
        _demo.run(job_id, seconds, steps)
    return job_id
