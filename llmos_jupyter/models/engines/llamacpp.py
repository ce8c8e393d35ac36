"""The llama.cpp engine: fast GGUF inference of causal LMs through ``llama-cpp-python``.

https://github.com/abetlen/llama-cpp-python (``Llama``: ``tokenize``, ``generate``, ``detokenize``).
What llmos adds on top, so that it behaves like the transformers engine:

* the chat prompt is rendered from the GGUF's own ``tokenizer.chat_template`` exactly as
  transformers' ``apply_chat_template`` renders it (:func:`..chat_template.render_template`), and
  tokenised with special tokens parsed, so both engines see the same token ids;
* decoding stops at any end-of-generation token of the vocabulary (``llama_vocab_is_eog``:
  ``<|im_end|>``, ``<|eot_id|>``…), which never reaches the text;
* pieces are decoded from each token's bytes with an incremental UTF-8 decoder, so a character
  split over two tokens is never printed half, and the pieces join to the full text;
* decoding runs in the caller's thread, one ``llama_decode`` per token, and checks the cancel
  event between tokens: a kernel interrupt (``KeyboardInterrupt``) or a closed stream stops it
  within one token. The KV cache keeps the conversation's prefix between turns (the library's
  prefix match), and is reset after a cancelled or failed decode.
* threads: the physical cores the manager hands it (``n_threads``), never a fixed number.
"""

from __future__ import annotations

import atexit
import codecs
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator, Optional

from ...errors import LLMOSError, UsageError, opt
from .base import Engine, GenerationSettings, GenerationStats

DEFAULT_N_CTX = 4096  # Ollama's default context; `--n-ctx` up to the model's own limit
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16
# What a llama.cpp context costs beyond weights and KV cache: compute buffers, the vocabulary's
# tables and the library's own allocations. Measured on SmolLM2-135M Q4_1 (49,152 tokens,
# 2 threads), RSS delta after load + one decode minus weights (92.1 MiB) minus KV: 32.7 MiB at
# n_ctx 1024, 33.2 at 4096, 35.4 at 8192 — flat, so 24 MiB + 192 B per vocabulary entry (33 MiB).
FIXED_OVERHEAD = 24 * 2**20
PER_VOCAB_OVERHEAD = 192


_open: "weakref.WeakSet[LlamaCppEngine]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Free every open context while the interpreter can still run llama.cpp's destructors
    (left to ``Llama.__del__`` at shutdown they print an 'Exception ignored' traceback)."""
    for engine in list(_open):
        try:
            engine.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass


def installed() -> Optional[str]:
    """The installed ``llama-cpp-python`` version, or ``None`` (does not import it)."""
    import importlib.metadata as md

    try:
        return md.version("llama_cpp_python")
    except md.PackageNotFoundError:
        return None


def physical_cores() -> int:
    """Physical CPU cores (psutil), the thread count llama.cpp decodes fastest with."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def gguf_metadata(path: str | os.PathLike) -> dict:
    """The key/value metadata of a GGUF file (header only). Arrays longer than 64 are left out;
    ``meta["_array_lengths"][key]`` has every array's length (e.g. the vocabulary size)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as e:
        raise LLMOSError(
            f"{Path(path).name} is not a readable GGUF file ({type(e).__name__}); "
            f"download it again (`%llm pull NAME --force`)"
        ) from None
    meta = {}
    for key, f in reader.fields.items():
        if not f.types:
            continue
        try:
            if len(f.types) > 1 or f.types[0].name == "ARRAY":
                meta.setdefault("_array_lengths", {})[key] = len(f.data)
                if len(f.data) <= 64:
                    meta[key] = [f.parts[i].tolist() for i in f.data]
                continue
            v = f.parts[f.data[0]]
            meta[key] = bytes(v).decode("utf-8", "replace") if f.types[0].name == "STRING" else v.tolist()[0]
        except Exception:
            continue
    return meta


def supported_architectures() -> set:
    """Architecture names the GGUF format defines (``gguf.MODEL_ARCH_NAMES``, the list llama.cpp
    implements)."""
    import gguf

    return set(gguf.MODEL_ARCH_NAMES.values())


def kv_cache_bytes(meta: dict, n_ctx: int) -> int:
    """Bytes of llama.cpp's f16 KV cache for ``n_ctx`` positions:
    ``n_ctx × n_layers × 2 (K and V) × n_kv_heads × head_dim × 2 bytes``."""
    arch = meta.get("general.architecture", "llama")
    layers = int(meta.get(f"{arch}.block_count", 0))
    heads = int(meta.get(f"{arch}.attention.head_count", 1))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", 0)) or int(meta.get(f"{arch}.embedding_length", 0)) // heads
    return n_ctx * layers * 2 * kv_heads * head_dim * KV_BYTES_PER_ELEMENT


def context_limit(meta: dict) -> int:
    """The context length the model was trained for (``{arch}.context_length``)."""
    arch = meta.get("general.architecture", "llama")
    return int(meta.get(f"{arch}.context_length", 0)) or DEFAULT_N_CTX


def plan(path: str | os.PathLike, n_ctx: Optional[int] = None) -> dict:
    """Check a GGUF file for llama.cpp and size what loading it costs, before loading.

    Returns:
        ``{"n_ctx", "n_ctx_train", "tensor_bytes", "kv_bytes", "bytes" (estimated real cost),
        "params", "architecture", "meta"}``.

    Raises:
        LLMOSError: not a GGUF file, truncated (expected vs actual bytes).
        UsageError: ``n_ctx`` < 16 or larger than the model's trained context.
    """
    from ..gguf_check import inspect_gguf

    info = inspect_gguf(path)
    if info.actual_bytes < info.expected_bytes:
        raise LLMOSError(
            f"{Path(path).name} is truncated or corrupt: its tensors need {info.expected_bytes:,} bytes but the "
            f"file has {info.actual_bytes:,}; download it again (`%llm pull NAME --force`)"
        )
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture", "?")
    known = supported_architectures()
    if arch not in known:
        raise LLMOSError(
            f"GGUF architecture '{arch}' is not supported by llama.cpp (nor by transformers' GGUF "
            f"loader unless listed there); llama.cpp runs {len(known)} architectures, e.g. "
            f"{', '.join(sorted(known)[:8])}…; llmos exports llama, mistral (as llama) and qwen2"
        )
    limit = context_limit(meta)
    if n_ctx is None:
        n_ctx = min(limit, DEFAULT_N_CTX)
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 16:
        raise UsageError(f"--n-ctx must be a whole number ≥ 16, got {n_ctx!r}")
    if n_ctx > limit:
        raise UsageError(
            f"--n-ctx {n_ctx:,} is more than this model allows ({limit:,} positions, its "
            f"context_length); use {opt('n_ctx', limit)} or less"
        )
    vocab = (
        int(meta.get(f"{arch}.vocab_size", 0)) or meta.get("_array_lengths", {}).get("tokenizer.ggml.tokens") or 32000
    )
    tensor = info.tensor_bytes
    kv = kv_cache_bytes(meta, n_ctx)
    total = tensor + kv + FIXED_OVERHEAD + vocab * PER_VOCAB_OVERHEAD
    return {
        "n_ctx": n_ctx,
        "n_ctx_train": limit,
        "tensor_bytes": tensor,
        "kv_bytes": kv,
        "bytes": total,
        "params": info.params,
        "architecture": arch,
        "meta": meta,
    }


class LlamaCppEngine(Engine):
    """Serve a GGUF causal LM with llama.cpp.

    Args:
        path: the ``.gguf`` file.
        n_ctx: context window in positions (default ``min(context_length, 4096)``).
        n_threads: decode threads (default: the physical cores).
        seed: default sampler seed.

    Raises:
        ImportError-free: ``llama-cpp-python`` missing → :class:`LLMOSError` naming the extra.
        LLMOSError: the file cannot be loaded by llama.cpp (unsupported architecture, corrupt).
        UsageError: ``n_ctx`` out of range.
    """

    name = "llama.cpp"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: Optional[int] = None,
        n_threads: Optional[int] = None,
        seed: Optional[int] = None,
    ):
        super().__init__()
        if installed() is None:
            raise LLMOSError(
                "the llama.cpp engine needs llama-cpp-python; install it with "
                "`pip install 'llmos-jupyter[llamacpp]'`, or load with --engine transformers"
            )
        self.path = str(path)
        self.plan = plan(path, n_ctx)
        self.meta = self.plan["meta"]
        self.n_ctx = self.plan["n_ctx"]
        self.n_threads = int(n_threads or physical_cores())
        if self.n_threads < 1:
            raise UsageError(f"--threads must be ≥ 1, got {n_threads}")
        from llama_cpp import Llama

        try:
            self.llm = Llama(
                model_path=self.path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_gpu_layers=0,
                verbose=False,
                **({"seed": seed} if seed is not None else {}),
            )
        except (ValueError, RuntimeError, OSError) as e:
            arch = self.meta.get("general.architecture", "?")
            raise LLMOSError(
                f"llama.cpp could not load {Path(path).name} (architecture '{arch}'): "
                f"{str(e).splitlines()[0][:120]}; check the file, or load with --engine transformers"
            ) from None
        self._vocab = self.llm._model.vocab
        _open.add(self)
        self._specials = {
            "bos_token": self._piece(self.llm.token_bos()),
            "eos_token": self._piece(self.llm.token_eos()),
        }

    def _piece(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    # --- interface ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        add_bos = add_special_tokens and str(self.meta.get("tokenizer.ggml.add_bos_token", "true")).lower() != "false"
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(list(ids), special=False).decode("utf-8", "replace")

    @property
    def chat_template(self):
        return self.meta.get("tokenizer.chat_template")

    def special_tokens(self) -> dict:
        return dict(self._specials)

    def footprint(self) -> dict:
        return {
            "tensor_bytes": {"cpu": self.plan["tensor_bytes"]},
            "kv_bytes": self.plan["kv_bytes"],
            "n_ctx": self.n_ctx,
            "threads": self.n_threads,
        }

    def warm_up(self) -> None:
        """Decode one token so the weights are paged in and buffers allocated (what a load
        really costs is then visible in the process RSS)."""
        with self.lock:
            self.llm.reset()
            self.llm.eval([self.llm.token_bos() if self.llm.token_bos() >= 0 else 0])
            self.llm.reset()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            with self.lock:
                llm.close()
            self.llm = None

    def _stream(
        self, prompt_ids: list[int], settings: GenerationSettings, stats: GenerationStats, cancel: threading.Event
    ) -> Iterator[str]:
        import llama_cpp

        if settings.extra:
            raise UsageError(
                f"the llama.cpp engine does not take {', '.join(sorted(settings.extra))}; "
                f"it takes max_new_tokens, temperature, top_p, seed and stop"
            )
        llm = self.llm
        if llm is None:
            raise LLMOSError("this model was unloaded; load it again with `%llm load`")
        if settings.greedy:
            kw = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0)
        else:
            llm.set_seed(settings.seed if settings.seed is not None else int(time.time_ns() % 2**31))
            kw = dict(temp=float(settings.temperature), top_k=0, top_p=float(settings.top_p or 1.0), min_p=0.0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens = llm.generate(prompt_ids, repeat_penalty=1.0, reset=True, **kw)
        ok = False
        try:
            n = 0
            for tok in tokens:
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - stats.started
                if llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                    stats.finish_reason = "stop"
                    break
                n += 1
                stats.completion_tokens = n
                piece = decoder.decode(llm.detokenize([tok], special=False))
                if piece:
                    yield piece
                if n >= settings.max_new_tokens:
                    stats.finish_reason = "length"
                    break
                if cancel.is_set():
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
            ok = not cancel.is_set() or stats.finish_reason in ("stop", "length")
        finally:
            tokens.close()
            if not ok:  # a decode cut short leaves the cache mid-sequence: start clean next time
                llm.reset()
