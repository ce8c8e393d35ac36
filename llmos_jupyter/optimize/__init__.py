"""Model compression and graph optimisation: quantise, prune, compile — and measure what it did.

* :mod:`.quantize` — int8 dynamic, int8 / int4 weight-only, bf16 / fp16 (torch.ao on the CPU,
  torchao on CUDA), with the measurement that chose each backend.
* :mod:`.prune` — magnitude pruning (``torch.nn.utils.prune``, made permanent) and structured
  pruning of attention heads / FFN neurons that really shrinks the matrices.
* :mod:`.compile` — ``torch.compile`` of the forward, or of a causal LM's decode step with a
  static KV cache.
* :mod:`.measure` / :mod:`.driver` — the before/after measurement behind ``%llm optimize``
  (``llmos_jupyter.api.optimize``): parameters, weight and file bytes, resident memory,
  latency and throughput, the metric on a dataset split.
* :mod:`.command` — the steps of ``%llm optimize`` around the driver: check the request, read
  the evaluation split, build the speed inputs, register the copy, record the run.

Nothing here imports torch at import time; each function imports what it needs.
"""

from __future__ import annotations

__all__ = ["command", "compile", "driver", "measure", "prune", "quantize"]
