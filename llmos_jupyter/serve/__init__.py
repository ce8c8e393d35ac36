"""``%llm serve``: an OpenAI-compatible HTTP endpoint for the models this kernel holds.

* :mod:`.protocol` — request/response schemas and the error shape (the single source of truth);
* :mod:`.app` — the FastAPI routes (``create_app``);
* :mod:`.workers` — per-model queues, batching, everything through ``manager.use(alias)``;
* :mod:`.server` — uvicorn in a kernel thread, token, settings, start/stop.

FastAPI and uvicorn are imported only when a server starts (``%load_ext`` stays light).
See docs/serve.md.
"""
