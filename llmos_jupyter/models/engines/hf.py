"""The transformers engine: ``model.generate`` streamed, with cancel and throughput stats.

``generate`` runs in a worker thread (``llmos-generate``) and hands tokens to the caller through
a :class:`transformers.TextIteratorStreamer`
(https://huggingface.co/docs/transformers/internal/generation_utils#transformers.TextIteratorStreamer).
A stopping criterion reads the stream's cancel event after every token, so closing the stream —
a kernel interrupt included — ends ``generate`` within one token and the thread is joined
before the engine takes the next call. An error raised inside ``generate`` closes the stream at
once and reaches the caller as one line; the model stays usable.
"""
from __future__ import annotations

import threading
import time
from typing import Iterator

from ...errors import UsageError
from .base import Engine, GenerationSettings, GenerationStats

JOIN_S = 5.0  # how long the caller waits for a cancelled generate() to return (one token is ~0.1 s)


def context_window(model, tokenizer=None) -> int:
    """Positions the model can attend to: ``config.max_position_embeddings`` (else the
    tokenizer's ``model_max_length`` when it is a real number, else 2,048)."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if isinstance(m, int) and 0 < m < 10**7 else 2048


class TransformersEngine(Engine):
    """Serve a loaded transformers model (any task; generation for causal LMs).

    Args:
        model: a ``PreTrainedModel`` (or a peft wrapper of one), on its device, in eval mode.
        tokenizer: its tokenizer (``pad_token`` set).
    """

    name = "transformers"

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.n_ctx = context_window(model, tokenizer)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def chat_template(self):
        return getattr(self.tokenizer, "chat_template", None)

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """The tokenizer's own ``apply_chat_template`` (see :func:`..generation.render_chat`)."""
        from ..generation import render_chat

        return render_chat(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)

    def footprint(self) -> dict:
        from ...resources.memory import module_bytes

        return {"tensor_bytes": module_bytes(self.model)}

    def close(self) -> None:
        self.model = self.tokenizer = None

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        extra = dict(settings.extra)
        if extra.get("num_beams", 1) > 1:
            raise UsageError("beam search cannot stream; drop num_beams or use stream=False")
        kw = {"max_new_tokens": settings.max_new_tokens, "do_sample": not settings.greedy}
        if not settings.greedy:
            kw["temperature"] = float(settings.temperature)
            kw["top_p"] = float(settings.top_p) if settings.top_p is not None else 1.0
        else:  # no sampling knobs from the model's generation_config leak into a greedy call
            kw.update(temperature=None, top_p=None, top_k=None)
        kw.update(extra)
        return kw

    def _stream(self, prompt_ids: list[int], settings: GenerationSettings, stats: GenerationStats,
                cancel: threading.Event) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from ...resources.jobs import keep_output_parent

        kw = self._generate_kwargs(settings)
        model, tok = self.model, self.tokenizer
        ids = torch.tensor([prompt_ids], device=model.device)
        eos = _eos_ids(model, tok)

        class Counting(TextIteratorStreamer):
            """Counts generated tokens and notes the last one (the first ``put`` is the prompt)."""

            def put(self, value):
                if not self.next_tokens_are_prompt:
                    flat = value.reshape(-1).tolist()
                    if stats.ttft_s is None:
                        stats.ttft_s = time.perf_counter() - stats.started
                    stats.completion_tokens += sum(1 for t in flat if t not in eos)
                    if flat:
                        self.last = flat[-1]
                super().put(value)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = Counting(tok, skip_prompt=True, skip_special_tokens=True, timeout=300.0)
        streamer.last = None
        failure: list[BaseException] = []

        threads = torch.get_num_threads()  # the caller's setting: OpenMP's is per thread

        @keep_output_parent
        def work():
            try:
                torch.set_num_threads(threads)
                if settings.seed is not None and not settings.greedy:
                    torch.manual_seed(settings.seed)
                with torch.inference_mode():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                   pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                   **kw)
            except BaseException as e:  # hand it to the caller, then close the stream
                failure.append(e)
                streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=work, daemon=True, name="llmos-generate")
        worker.start()
        try:
            for piece in streamer:
                if failure:
                    break
                if piece:
                    yield piece
        finally:
            cancel_requested = cancel.is_set()
            cancel.set()  # stops generate() at its next token if it is still running
            worker.join(timeout=JOIN_S)
        if failure:
            raise failure[0]
        if not cancel_requested:
            stats.finish_reason = "stop" if streamer.last in eos else "length"


def _eos_ids(model, tokenizer) -> set:
    """The token ids that end generation (generation_config's, the config's, the tokenizer's)."""
    out: set = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        v = getattr(src, "eos_token_id", None)
        if isinstance(v, int):
            out.add(v)
        elif isinstance(v, (list, tuple)):
            out.update(int(x) for x in v)
    return out
