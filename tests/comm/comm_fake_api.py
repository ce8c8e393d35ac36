"""A stand-in for ``llmos_jupyter.api`` with the same state/hardware/subscribe/unload/cancel
contract, for the side-panel protocol tests (no torch, no models, deterministic sizes).

The tests run it inside a real kernel: ``comm.set_provider(FakeAPI())``.
"""

from __future__ import annotations

import threading
import time

from llmos_jupyter.errors import LLMOSError, unknown


class FakeAPI:
    def __init__(self):
        self.lock = threading.RLock()
        self.models: dict[str, dict] = {}
        self.jobs: dict[object, dict] = {}
        self.datasets = [{"name": "reviews", "version": 1, "rows": 33530, "fingerprint": "ab12"}]
        self.listeners: list = []
        self.hardware_calls = 0
        self.fail_hardware = False
        self.server: dict | None = None

    # -- the contract -----------------------------------------------------------------------
    def state(self) -> dict:
        with self.lock:
            return {
                "models": [dict(m) for m in self.models.values()],
                "jobs": [dict(j) for j in self.jobs.values()],
                "datasets": [dict(d) for d in self.datasets],
                "server": dict(self.server) if self.server else None,
            }

    def hardware(self) -> dict:
        self.hardware_calls += 1
        if self.fail_hardware:
            raise RuntimeError("NVML not found")
        return {
            "cpu_percent": 12.5,
            "ram_used": 3 * 2**30,
            "ram_total": 16 * 2**30,
            "gpus": [
                {
                    "index": 0,
                    "name": "Fake GPU",
                    "util": 40.0,
                    "mem_used": 2**30,
                    "mem_total": 80 * 2**30,
                    "temperature": 51,
                    "power_w": 120.0,
                }
            ],
        }

    def subscribe(self, callback):
        with self.lock:
            self.listeners.append(callback)

        def unsubscribe():
            with self.lock:
                if callback in self.listeners:
                    self.listeners.remove(callback)

        return unsubscribe

    def unload(self, alias: str) -> None:
        with self.lock:
            if alias not in self.models:
                raise unknown("model", alias, self.models, "see `%llm ps`")
            del self.models[alias]
        self.emit({"kind": "unload", "alias": alias})

    def cancel(self, job_id) -> None:
        with self.lock:
            if job_id not in self.jobs:
                raise unknown("job", str(job_id), [str(j) for j in self.jobs], "see `%llm jobs`")
            self.jobs[job_id]["state"] = "cancelled"
        self.emit({"kind": "job", "id": job_id, "state": "cancelled"})

    def serve_stop(self) -> None:
        with self.lock:
            self.server = None
        self.emit({"kind": "serve", "state": "stopped"})

    # -- test helpers -----------------------------------------------------------------------
    def serve(self, models=("tiny",)) -> None:
        """A running `%llm serve` server as ``api.state()["server"]`` shows it (token included:
        the comm must not send it)."""
        with self.lock:
            self.server = {
                "url": "http://127.0.0.1:8765",
                "base_url": "http://127.0.0.1:8765/v1",
                "models": list(models),
                "requests": 12,
                "failed": 1,
                "in_flight": 2,
                "queued": 3,
                "tokens_per_s": 41.5,
                "token": "llmos-secret",
            }
        self.emit({"kind": "serve", "state": "started"})

    def emit(self, event: dict) -> None:
        with self.lock:
            listeners = list(self.listeners)
        for cb in listeners:
            cb(event)

    def load(self, alias: str, nbytes: int = 1_234_567, device: str = "cpu", engine: str = "transformers") -> None:
        """Register a model as ``ModelRecord.summary()`` shows it: ``nbytes`` of tensors; the
        real cost measured at load is ~12% more plus 8 MiB of runtime (tokenizer, allocator),
        and for llama.cpp 64 MiB more (KV cache, compute buffers); no generation yet."""
        llama = engine == "llama.cpp"
        real = nbytes + nbytes // 8 + (72 if llama else 8) * 2**20
        with self.lock:
            self.models[alias] = {
                "alias": alias,
                "task": "causal-lm",
                "source": f"/tmp/{alias}" + (".gguf" if llama else ""),
                "dtype": "gguf" if llama else "float32",
                "device": device,
                "params": nbytes // 4,
                "estimated_bytes": nbytes,
                "bytes": {device: nbytes},
                "state": "ready",
                "pinned": False,
                "keep_alive": None,
                "last_used": time.time(),
                "quantization": "gguf" if llama else None,
                "engine": engine,
                "real_bytes": {device: real},
                "n_ctx": 4096 if llama else 2048,
                "threads": 8 if llama else None,
                "last_generation": None,
            }
        self.emit({"kind": "load", "alias": alias})

    def generate(
        self,
        alias: str,
        completion_tokens: int = 42,
        prompt_tokens: int = 31,
        ttft_s: float = 0.051,
        total_s: float = 0.469,
    ) -> None:
        """Record a finished generate/chat call on ``alias`` (the default: 98.1 tokens/s)."""
        with self.lock:
            model = self.models[alias]
            rate = (completion_tokens - 1) / (total_s - ttft_s) if completion_tokens > 1 and total_s > ttft_s else 0.0
            model["last_generation"] = {
                "engine": model["engine"],
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "ttft_s": ttft_s,
                "total_s": total_s,
                "finish_reason": "stop",
                "capped_from": None,
                "tokens_per_s": rate,
            }
            model["last_used"] = time.time()
        self.emit({"kind": "generate", "alias": alias})

    def start_job(self, job_id, total_steps: int = 10, target: str = "tiny") -> None:
        with self.lock:
            self.jobs[job_id] = {
                "id": job_id,
                "kind": "finetune",
                "target": target,
                "state": "running",
                "progress": 0.0,
                "step": 0,
                "total_steps": total_steps,
                "loss": float("nan"),
                "samples_per_s": None,
                "eta_s": None,
            }
        self.emit({"kind": "job", "id": job_id, "state": "running"})

    def step_job(self, job_id) -> None:
        with self.lock:
            job = self.jobs[job_id]
            job["step"] += 1
            job["progress"] = job["step"] / job["total_steps"]
            job["loss"] = 2.0 / job["step"]
            job["samples_per_s"] = 32.0
            job["eta_s"] = (job["total_steps"] - job["step"]) * 0.1
            if job["step"] >= job["total_steps"]:
                job["state"] = "done"
        self.emit({"kind": "job", "id": job_id, "progress": job["progress"]})


class NoEventsAPI(FakeAPI):
    """A provider whose subscribe() fails: the comm must fall back to polling."""

    def subscribe(self, callback):
        raise LLMOSError("events are not available")
