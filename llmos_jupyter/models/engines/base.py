"""The engine interface: what every inference engine does for the manager and the API.

An *engine* holds one loaded model and serves it: tokenize, render a chat, stream a
generation, report its footprint, close. Two implementations exist:

* :class:`~.hf.TransformersEngine` — transformers' ``generate`` (exact Hugging Face behaviour,
  the weights that training updates; every task).
* :class:`~.llamacpp.LlamaCppEngine` — llama.cpp through ``llama-cpp-python`` (fast GGUF
  inference of causal LMs on CPU).

Both follow the same rules, so a cell behaves the same whichever engine serves it:

* greedy by default (``temperature=0``); ``temperature``/``top_p``/``seed`` when sampling;
* the prompt and ``max_new_tokens`` are checked against the context window *before* decoding
  (:func:`plan_tokens`): a prompt that does not fit is refused in one line, and
  ``max_new_tokens`` larger than what is left is capped, with a note;
* decoding stops at the model's end-of-generation token, which never reaches the text;
* pieces streamed join to exactly the text a non-streamed call returns;
* a :class:`Stream` is cancelled by closing it (``KeyboardInterrupt``, ``break``, a client gone):
  decoding stops within one token and the engine is usable again;
* after the stream ends, :attr:`Stream.stats` holds tokens, tokens/s and time to first token
  (what ``ollama run --verbose`` prints).
"""

from __future__ import annotations

import abc
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional

from ...errors import ContextLengthError, LLMOSError, UsageError, opt, surface

MAX_NEW_TOKENS_DEFAULT = 256


@dataclass
class GenerationSettings:
    """Decoding settings shared by both engines (validated by :meth:`check`).

    Attributes:
        max_new_tokens: tokens to generate at most (≥ 1; capped at the context left).
        temperature: 0 = greedy (default); > 0 samples from softmax(logits / T).
        top_p: nucleus sampling mass in (0, 1] (only when sampling; default 1.0 = off).
        seed: seeds the sampler (only when sampling); ``None`` = not seeded.
        stop: strings that end the answer early (not included in the text).
        extra: more keyword arguments for transformers' ``generate`` (transformers engine only;
            e.g. ``min_new_tokens``, ``repetition_penalty``).
    """

    max_new_tokens: int = MAX_NEW_TOKENS_DEFAULT
    temperature: float = 0.0
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: tuple = ()
    extra: dict = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def check(self) -> "GenerationSettings":
        """Validate every field; return ``self``.

        Raises:
            UsageError: a value out of range (one line naming the option).
        """
        n = self.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UsageError(f"max_new_tokens must be a whole number ≥ 1, got {n!r}; e.g. {opt('max_new_tokens', 64)}")
        t = self.temperature
        if t is None:
            self.temperature = t = 0.0
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise UsageError(
                f"temperature must be a number ≥ 0 (0 = greedy), got {t!r}; e.g. {opt('temperature', 0.7)}"
            )
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise UsageError(f"top_p must be in (0, 1], got {p!r}; e.g. {opt('top_p', 0.9)}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise UsageError(f"seed must be a whole number ≥ 0, got {s!r}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop or ())
        if any(not isinstance(x, str) or not x for x in self.stop):
            raise UsageError("stop must be a non-empty string or a list of them")
        return self


@dataclass
class GenerationStats:
    """What one generation measured (like ``ollama run --verbose``).

    Attributes:
        engine: ``transformers`` | ``llama.cpp``.
        prompt_tokens: tokens of the rendered prompt.
        completion_tokens: tokens generated (the end token not counted).
        ttft_s: seconds from the call to the first generated token (prompt processing included).
        total_s: seconds from the call to the end.
        finish_reason: ``stop`` (end token or a stop string), ``length`` (``max_new_tokens``
            reached) or ``cancelled`` (the stream was closed early).
        capped_from: the ``max_new_tokens`` asked for when it was capped to the context left.
    """

    engine: str
    prompt_tokens: int
    completion_tokens: int = 0
    ttft_s: Optional[float] = None
    total_s: float = 0.0
    finish_reason: str = "stop"
    capped_from: Optional[int] = None
    started: float = field(default_factory=time.perf_counter, repr=False)  # perf_counter() at the call

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first / seconds after the first (0 when < 2 tokens)."""
        if self.completion_tokens < 2 or self.ttft_s is None or self.total_s <= self.ttft_s:
            return 0.0
        return (self.completion_tokens - 1) / (self.total_s - self.ttft_s)

    def line(self) -> str:
        """``"42 tokens, 98.1 tokens/s, first token 0.05 s (llama.cpp)"``."""
        first = "-" if self.ttft_s is None else f"{self.ttft_s:.2f} s"
        n = self.completion_tokens
        speed = f"{self.tokens_per_s:.1f}" if n >= 2 else "-"  # a speed needs two tokens
        line = f"{n} token{'' if n == 1 else 's'}, {speed} tokens/s, first token {first} ({self.engine})"
        if n == 0 and self.finish_reason == "stop":
            line += " — the model's first token was its end-of-text token; try another prompt (or %%llm chat)"
        return line

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("started")
        d["tokens_per_s"] = self.tokens_per_s
        return d


def plan_tokens(
    prompt_tokens: int, max_new_tokens: int, n_ctx: int, *, what: str = "prompt"
) -> tuple[int, Optional[int]]:
    """Fit a generation into the context window of ``n_ctx`` positions.

    Returns:
        ``(max_new_tokens to use, the value asked for if it was capped else None)``.

    Raises:
        ContextLengthError: (a UsageError) the prompt leaves no room for one new token (one line:
            prompt tokens, the limit, the fix spelled for the surface: cell, Python or HTTP).
    """
    room = n_ctx - prompt_tokens
    if room < 1:
        if surface() == "http":
            fix = (
                "shorten the messages (or the prompt), or load the model in the kernel with a larger --n-ctx "
                "if it allows one"
            )
        else:
            fix = (
                f"shorten it (or reset the chat with {opt('reset', True)}), or load with a larger {opt('n_ctx')} "
                f"if the model allows one"
            )
        raise ContextLengthError(
            f"the {what} is {prompt_tokens:,} tokens but this model's context window is {n_ctx:,} positions; {fix}"
        )
    if max_new_tokens > room:
        return room, max_new_tokens
    return max_new_tokens, None


class StopStrings:
    """Hold back text that may be the start of a stop string; cut at the first one found.

    ``feed(piece)`` returns the text safe to emit now; ``stopped`` turns True when a stop
    string appeared; ``flush()`` returns what is held back at the end.
    """

    def __init__(self, stops: tuple):
        self.stops, self.buf, self.stopped = tuple(stops), "", False
        self.keep = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buf += piece
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buf, self.stopped = self.buf[:cut], "", True
            return out
        safe = len(self.buf) - self.keep
        out, self.buf = (self.buf[:safe], self.buf[safe:]) if safe > 0 else ("", self.buf)
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.stopped else self.buf), ""
        return out


class Stream:
    """An iterator of text pieces with its :class:`GenerationStats` once it ends.

    Closing it early (``close()``, ``break`` out of a ``for``, a ``KeyboardInterrupt`` while
    iterating) sets :attr:`cancel`, which the engine checks after every token; the engine is
    then free for the next call.

    Args:
        pieces: the engine's generator of pieces; it reads ``cancel`` and fills ``stats``.
        stats: the stats object the generator fills.
        cancel: the event that stops the generator's decoding.
    """

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, cancel: threading.Event):
        self._pieces, self.stats, self.cancel = pieces, stats, cancel
        self.done = False

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self.done = True
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop decoding (within one token) and release the engine; a no-op once it ended."""
        if not self.done:
            self.cancel.set()
        self._pieces.close()
        self.done = True

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a stream dropped half-way must not keep decoding
        if not self.done:
            self.cancel.set()

    def text(self, on_text: Optional[Callable[[str], None]] = None) -> str:
        """Run to the end; call ``on_text(piece)`` for each piece; return the joined text."""
        parts = []
        with self:
            for piece in self:
                parts.append(piece)
                if on_text is not None:
                    on_text(piece)
        return "".join(parts)


class Engine(abc.ABC):
    """Base class of the inference engines (see the module docstring for the shared rules).

    Attributes:
        name: ``"transformers"`` or ``"llama.cpp"``.
        n_ctx: the context window in positions (prompt + generated tokens).
        lock: held while a generation decodes (one decode at a time per engine).
    """

    name = "?"
    n_ctx: int = 0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_stats: Optional[GenerationStats] = None

    # --- what each engine implements ------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (``add_special_tokens``: the BOS the model adds, if any)."""

    @abc.abstractmethod
    def detokenize(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens dropped)."""

    @property
    @abc.abstractmethod
    def chat_template(self) -> Optional[str]:
        """The model's chat template (Jinja), or ``None``."""

    @abc.abstractmethod
    def _stream(
        self, prompt_ids: list[int], settings: GenerationSettings, stats: GenerationStats, cancel: threading.Event
    ) -> Iterator[str]:
        """Yield decoded pieces of the continuation of ``prompt_ids``; fill ``stats``."""

    @abc.abstractmethod
    def footprint(self) -> dict:
        """``{"tensor_bytes": {device: n}, ...}``: what the engine's weights take."""

    def close(self) -> None:
        """Free the model (idempotent)."""

    # --- shared ------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """``messages`` rendered with the model's own chat template (as transformers'
        ``apply_chat_template`` renders it).

        Raises:
            LLMOSError: the model has no chat template (one line naming the fix).
            UsageError: a message is not ``{"role", "content"}``.
        """
        from ..chat_template import render_template

        return render_template(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt, special=self.special_tokens()
        )

    def special_tokens(self) -> dict:
        """``{"bos_token": str, "eos_token": str}`` for chat templates that use them."""
        return {}

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Stream:
        """Start generating the continuation of ``prompt``; returns a :class:`Stream`.

        The prompt is tokenised and checked against :attr:`n_ctx` here, before anything runs.

        Args:
            prompt: the text (already chat-rendered for chat).
            settings: decoding settings (default: greedy, 256 tokens).
            add_special_tokens: prepend the model's BOS when it uses one (False for a rendered
                chat, whose template writes its own special tokens).
            cancel: an event that stops decoding when set (a fresh one by default).
            notify: called with a one-line note when ``max_new_tokens`` is capped.

        Raises:
            UsageError: bad settings; a prompt that does not fit the context window.
        """
        ids, settings, stats = self.prepare(prompt, settings, add_special_tokens=add_special_tokens, notify=notify)
        cancel = cancel or threading.Event()
        return Stream(self._guarded(ids, settings, stats, cancel), stats, cancel)

    def prepare(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        notify: Callable[[str], None] | None = None,
    ) -> tuple[list[int], GenerationSettings, GenerationStats]:
        """Tokenise ``prompt`` and fit it into the context window, before anything decodes.

        Returns:
            ``(prompt token ids, the settings with max_new_tokens capped to the room left, a
            fresh GenerationStats whose clock starts now)``.

        Raises:
            UsageError: bad settings; an empty prompt; a prompt that does not fit the context window.
        """
        settings = (settings or GenerationSettings()).check()
        ids = self.tokenize(prompt, add_special_tokens=add_special_tokens)
        if not ids:
            raise UsageError("the prompt is empty after tokenisation; give some text")
        n, capped = plan_tokens(len(ids), settings.max_new_tokens, self.n_ctx)
        if capped is not None and notify is not None:
            notify(
                f"llmos: note: max_new_tokens {capped:,} capped to {n:,} (the context window is {self.n_ctx:,} "
                f"positions and the prompt takes {len(ids):,})"
            )
        settings = GenerationSettings(
            n, settings.temperature, settings.top_p, settings.seed, settings.stop, dict(settings.extra)
        )
        return ids, settings, GenerationStats(self.name, prompt_tokens=len(ids), capped_from=capped)

    def _guarded(self, ids, settings, stats, cancel) -> Iterator[str]:
        """Run :meth:`_stream` under the engine lock, applying stop strings and timing."""
        t0 = stats.started  # set when the stream was made: tokenising the prompt counts
        stops = StopStrings(settings.stop)
        ended = False
        gen = self._stream(ids, settings, stats, cancel)
        with self.lock:
            try:
                for piece in gen:
                    if stats.ttft_s is None:
                        stats.ttft_s = time.perf_counter() - t0
                    out = stops.feed(piece)
                    if out:
                        yield out
                    if stops.stopped:
                        stats.finish_reason = "stop"
                        cancel.set()  # the engine stops decoding at its next token
                        break
                ended = True
                tail = stops.flush()
                if tail:
                    yield tail
            except (LLMOSError, GeneratorExit, KeyboardInterrupt):
                raise
            except Exception as e:  # the engine failed mid-decode: one line, the engine stays usable
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise LLMOSError(f"generation failed: {type(e).__name__}: {msg[:200]}") from None
            finally:
                gen.close()  # ends the engine's decoding (and joins its worker) before the lock is freed
                stats.total_s = time.perf_counter() - t0
                if not ended:
                    stats.finish_reason = "cancelled"
                self.last_stats = stats

    def generate(self, prompt: str, settings: GenerationSettings | None = None, **kw) -> tuple[str, GenerationStats]:
        """Non-streaming: the whole continuation and its stats (see :meth:`stream`)."""
        s = self.stream(prompt, settings, **kw)
        return s.text(), s.stats


@dataclass
class Footprint:
    """Memory of one loaded model, per device, in bytes.

    Attributes:
        tensor_bytes: the weights' tensors (``module_bytes`` for torch; the GGUF tensor data for
            llama.cpp).
        real_bytes: what holding the model really costs: the process RSS delta of the load on
            the CPU (weights, tokenizer, allocator slack; for llama.cpp the mapped weights plus
            KV cache and compute buffers), CUDA allocated + reserved delta on a GPU.
    """

    tensor_bytes: dict = field(default_factory=dict)
    real_bytes: dict = field(default_factory=dict)
