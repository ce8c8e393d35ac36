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
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from ...errors import LLMOSError, UsageError
from .base import Engine, GenerationSettings, GenerationStats, StopStrings

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
        """The tokenizer's own ``apply_chat_template`` (see :func:`..chat_template.render_chat`)."""
        from ..chat_template import render_chat

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

    def generate_batch(self, rows: list["BatchRow"]) -> None:
        """Decode several prompts in one ``model.generate`` call (static batching), in this thread.

        The prompts are padded on the left to the longest (``attention_mask`` 0 on the pads, so
        transformers derives each row's positions from its own tokens) and decoded together;
        greedy rows give the same tokens as the prompt alone (tested in
        ``tests/serve/test_batching.py``). Each row keeps its own ``max_new_tokens``, stop
        strings, end token and cancel event: a finished or cancelled row is marked done in a
        ``StoppingCriteria`` (transformers pads it from then on) and ``generate`` returns when
        every row is done. Pieces reach ``row.on_piece`` as they decode (the UTF-8 of a character
        split over two tokens is held back until whole), and join to the row's full text.
        Sampling settings (temperature, top_p, extra) must be the same for every row; a sampling
        row with a ``seed`` must be alone (one seed seeds the whole batch).

        Holds :attr:`lock` for the whole call (one decode at a time per engine). See
        https://huggingface.co/docs/transformers/main_classes/text_generation (``generate``,
        ``streamer``, ``stopping_criteria``) and the padding side note in
        https://huggingface.co/docs/transformers/llm_tutorial#wrong-padding-side.

        Args:
            rows: from :meth:`prepare` (``ids``, ``settings``, ``stats``), a cancel event and a
                callback; ``row.stats`` is filled (tokens, ttft, total, finish reason).

        Raises:
            UsageError: rows with different sampling settings, a seeded sampling row in a batch,
                num_beams > 1.
            LLMOSError: ``generate`` failed (one line; every row gets ``finish_reason='error'``).
        """
        import torch
        from transformers import StoppingCriteriaList

        if not rows:
            return
        first = rows[0].settings
        kw = self._batch_kwargs(rows)
        model, tok = self.model, self.tokenizer
        if model is None:
            raise LLMOSError("this model was unloaded; load it again with `%llm load`")
        eos = _eos_ids(model, tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (min(eos) if eos else 0)
        ids, mask = _left_padded([r.ids for r in rows], pad)
        states = [_RowState(r, StopStrings(r.settings.stop)) for r in rows]
        streamer, done = _batch_hooks(states, eos, tok)
        with self.lock:
            try:
                if first.seed is not None and not first.greedy:
                    torch.manual_seed(first.seed)
                with torch.inference_mode():
                    model.generate(
                        input_ids=ids.to(model.device),
                        attention_mask=mask.to(model.device),
                        streamer=streamer,
                        pad_token_id=pad,
                        stopping_criteria=StoppingCriteriaList([done]),
                        **kw,
                    )
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                for st in states:  # the caller reports the error to the rows still open
                    if not st.done:
                        st.done, st.row.stats.finish_reason = True, "error"
                        st.row.stats.total_s = time.perf_counter() - st.row.stats.started
                raise LLMOSError(f"generation failed: {type(e).__name__}: {msg[:200]}") from None
            finally:
                for st in states:
                    if not st.done:  # generate ended at the batch's max_new_tokens
                        st.finish("length", tok)
                if rows:
                    self.last_stats = rows[-1].stats

    def _batch_kwargs(self, rows: list["BatchRow"]) -> dict:
        """The ``generate`` arguments of a batch: the rows' shared sampling settings and their
        largest ``max_new_tokens`` (each row stops at its own)."""
        first = rows[0].settings
        key = _sampling_key(first)
        if any(_sampling_key(r.settings) != key for r in rows):
            raise UsageError("rows of one batch must share temperature, top_p and extra generate arguments")
        if len(rows) > 1 and not first.greedy and any(r.settings.seed is not None for r in rows):
            raise UsageError("a seeded sampling request decodes alone (one seed seeds the whole batch)")
        return self._generate_kwargs(
            GenerationSettings(
                max(r.settings.max_new_tokens for r in rows),
                first.temperature,
                first.top_p,
                first.seed,
                (),
                dict(first.extra),
            )
        )

    def _stream(
        self, prompt_ids: list[int], settings: GenerationSettings, stats: GenerationStats, cancel: threading.Event
    ) -> Iterator[str]:
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
                    model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        streamer=streamer,
                        pad_token_id=tok.pad_token_id,
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                        **kw,
                    )
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


def _sampling_key(s: GenerationSettings) -> tuple:
    """What rows of one batch must share: greedy, or the same temperature/top_p; extra arguments."""
    return (s.greedy, None if s.greedy else (float(s.temperature), s.top_p), tuple(sorted(map(repr, s.extra.items()))))


@dataclass
class BatchRow:
    """One prompt of :meth:`TransformersEngine.generate_batch`.

    Attributes:
        ids, settings, stats: what :meth:`Engine.prepare` returned for the prompt.
        on_piece: called with each piece of text, from the decoding thread.
        cancel: set it to drop this row at its next token (the others go on).
        on_done: called once when this row ends (its ``stats`` final), while the others may
            still decode.
    """

    ids: list
    settings: GenerationSettings
    stats: GenerationStats
    on_piece: Callable[[str], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    on_done: Optional[Callable[[], None]] = None


class _RowState:
    """Decoding state of one batch row: its tokens, the text sent so far, its stop strings."""

    def __init__(self, row: BatchRow, stops: StopStrings):
        self.row, self.stops, self.tokens, self.sent, self.done = row, stops, [], 0, False

    def _emit(self, text: str) -> None:
        out = self.stops.feed(text)
        if out:
            self.row.on_piece(out)

    def step(self, token: int, eos: set, tok) -> None:
        if self.done:
            return
        st = self.row.stats
        if self.row.cancel.is_set():
            return self.finish("cancelled", tok)
        if st.ttft_s is None:
            st.ttft_s = time.perf_counter() - st.started
        if token in eos:
            return self.finish("stop", tok)
        self.tokens.append(token)
        st.completion_tokens = len(self.tokens)
        text = tok.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # a character split over tokens waits to be whole
            new, self.sent = text[self.sent :], len(text)
            self._emit(new)
            if self.stops.stopped:
                return self.finish("stop", tok)
        if len(self.tokens) >= self.row.settings.max_new_tokens:
            self.finish("length", tok)

    def finish(self, reason: str, tok) -> None:
        if self.done:
            return
        self.done = True
        st = self.row.stats
        if reason != "cancelled" and not self.stops.stopped:
            text = tok.decode(self.tokens, skip_special_tokens=True) if self.tokens else ""
            self._emit(text[self.sent :])
            self.sent = len(text)
            tail = self.stops.flush()
            if tail:
                self.row.on_piece(tail)
        st.finish_reason = "stop" if self.stops.stopped else reason
        st.total_s = time.perf_counter() - st.started
        if self.row.on_done is not None:
            self.row.on_done()


def _left_padded(rows: list[list[int]], pad: int):
    """``(input_ids, attention_mask)``, both ``(B, width)`` long tensors: every row padded on the
    left with ``pad`` (mask 0) so that its last prompt token sits at column ``width - 1``."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _batch_hooks(states: list[_RowState], eos: set, tok):
    """``(streamer, stopping_criterion)`` for one batched ``generate``: the streamer hands each
    row's new token to its state (the first ``put`` is the prompt); the criterion marks cancelled
    rows finished and tells ``generate`` which rows are done."""
    import torch
    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class Rows(BaseStreamer):
        prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            flat = value.reshape(-1).tolist()
            for st, t in zip(states, flat):
                st.step(t, eos, tok)

        def end(self):
            pass

    class Done(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            for st in states:  # a client gone while its row waited for the next token
                if not st.done and st.row.cancel.is_set():
                    st.finish("cancelled", tok)
            return torch.tensor([st.done for st in states], dtype=torch.bool, device=input_ids.device)

    return Rows(), Done()


def stream(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float | None = None,
    add_special_tokens: bool = True,
    **extra,
) -> Iterator[str]:
    """Yield the decoded continuation of ``prompt`` with a transformers ``model``/``tokenizer``
    piece by piece (greedy by default); ``extra`` goes to ``generate``.
    A convenience for callers that hold a bare model; see :class:`TransformersEngine`.

    Raises:
        UsageError: bad settings, a prompt longer than the context window.
        LLMOSError: ``generate`` failed (reported within about a second; the model stays usable).
    """
    settings = GenerationSettings(max_new_tokens, temperature, top_p, extra=extra)
    s = TransformersEngine(model, tokenizer).stream(prompt, settings, add_special_tokens=add_special_tokens)
    with s:
        yield from s


def complete(model, tokenizer, prompt: str, *, on_text: Callable[[str], None] | None = None, **kw) -> str:
    """Run :func:`stream` to the end, calling ``on_text(piece)`` for each piece; return the text."""
    parts = []
    for piece in stream(model, tokenizer, prompt, **kw):
        parts.append(piece)
        if on_text is not None:
            on_text(piece)
    return "".join(parts)
