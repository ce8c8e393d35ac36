"""Inference engines: which one serves a model, and what is installed.

One alias, one engine at a time (``ModelRecord.engine``):

=============  ==============================================  ===================================
engine         serves                                          why
=============  ==============================================  ===================================
transformers   every task (causal-lm, seq-cls, embedding),     exact Hugging Face behaviour; the
               HF folders, hub ids and GGUF files (dequantised  weights training updates
               to float32)
llama.cpp      GGUF causal LMs                                 4-9x faster decode on a CPU (the
                                                               engine inside Ollama)
=============  ==============================================  ===================================

``--engine auto`` (the default) picks llama.cpp for a GGUF causal LM when ``llama-cpp-python``
is installed, else transformers with a one-time hint naming the ``[llamacpp]`` extra.
"""

from __future__ import annotations

import sys

from ...errors import LLMOSError, UsageError, opt, unknown

ENGINES = ("transformers", "llama.cpp")
SERVES = {
    "transformers": "causal-lm, seq-cls, embedding; HF folders, hub ids, GGUF (dequantised)",
    "llama.cpp": "causal-lm from a GGUF file",
}
EXTRA_HINT = "pip install 'llmos-jupyter[llamacpp]'"
_hinted: set = set()


def normalize(name: str | None) -> str:
    """``None``/``auto`` → ``auto``; ``llamacpp``/``llama_cpp``/``llama.cpp`` → ``llama.cpp``;
    ``hf``/``transformers`` → ``transformers``.

    Raises:
        NotFoundError: an engine that does not exist (did-you-mean).
    """
    if name is None:
        return "auto"
    key = str(name).strip().lower().replace("_", ".").replace("-", ".")
    aliases = {
        "auto": "auto",
        "llama.cpp": "llama.cpp",
        "llamacpp": "llama.cpp",
        "transformers": "transformers",
        "hf": "transformers",
    }
    if key not in aliases:
        raise unknown("engine", name, ("auto",) + ENGINES, f"use {opt('engine', 'auto')}, transformers or llama.cpp")
    return aliases[key]


def installed() -> dict:
    """``{engine: version or None}`` (never imports the engines' libraries)."""
    import importlib.metadata as md

    from .llamacpp import installed as llamacpp_version

    try:
        tf = md.version("transformers")
    except md.PackageNotFoundError:  # pragma: no cover - a hard dependency
        tf = None
    return {"transformers": tf, "llama.cpp": llamacpp_version()}


def choose(requested: str | None, *, kind: str, task: str, spec: str, notify=None) -> str:
    """The engine that serves ``spec`` (source ``kind`` ``gguf|dir|catalog|hub``, ``task``).

    Raises:
        UsageError: llama.cpp asked for a non-GGUF source or a task other than causal-lm (one
            line saying which engines serve what).
        LLMOSError: llama.cpp asked for but ``llama-cpp-python`` is not installed.
    """
    want = normalize(requested)
    have = installed()
    if want == "auto":
        if kind == "gguf" and task == "causal-lm":
            if have["llama.cpp"]:
                return "llama.cpp"
            if "auto" not in _hinted:
                _hinted.add("auto")
                (notify or (lambda m: print(m, file=sys.stderr)))(
                    f"llmos: hint: llama.cpp decodes GGUF models several times faster on a CPU; `{EXTRA_HINT}` "
                    f"installs it (serving on transformers now)"
                )
        return "transformers"
    if want == "llama.cpp":
        if task != "causal-lm":
            raise UsageError(
                f"llama.cpp serves causal-lm models only, not {task}; load {spec} with "
                f"--engine transformers (it serves {SERVES['transformers']})"
            )
        if kind != "gguf":
            raise UsageError(
                f"llama.cpp serves GGUF files and {spec} is not one; load it with "
                f"{opt('engine', 'transformers')}, "
                f"or write a GGUF with `%llm export ALIAS DIR --format gguf` and load that"
            )
        if not have["llama.cpp"]:
            raise LLMOSError(
                f"the llama.cpp engine is not installed; `{EXTRA_HINT}` installs it "
                f"(or load with {opt('engine', 'transformers')})"
            )
    return want


def summary() -> list[dict]:
    """For ``%llm doctor``: each engine, its version (or "not installed") and what it serves."""
    have = installed()
    return [{"engine": e, "version": have[e] or "not installed", "serves": SERVES[e]} for e in ENGINES]


__all__ = ["ENGINES", "SERVES", "choose", "installed", "normalize", "summary", "LLMOSError"]
