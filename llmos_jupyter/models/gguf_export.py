"""Write a transformers causal LM as one GGUF file that llama.cpp, llama-cpp-python and Ollama run.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md; written with the ``gguf``
package's ``GGUFWriter`` and tensor names from its ``TensorNameMap`` (the table llama.cpp's own
``convert_hf_to_gguf.py`` uses). What has to be right, or llama.cpp "converts fine and answers
gibberish" (tested in tests/models/test_gguf_export.py):

* **q/k permutation.** transformers' Llama applies rotary embeddings as "rotate half" (the two
  halves of each head); GGUF / llama.cpp rotate interleaved pairs. The rows of ``q_proj`` and
  ``k_proj`` are reordered per head: ``w.reshape(heads, 2, head_dim // 2, -1).swapaxes(1, 2)``,
  with ``num_attention_heads`` for q and ``num_key_value_heads`` for k (grouped-query attention:
  SmolLM2-135M has 9 query and 3 key/value heads). transformers undoes exactly this when it
  reads a GGUF, so a GGUF → transformers → GGUF round trip gives the same tensors.
  Qwen2 uses the "neox" rope layout in llama.cpp and needs no permutation.
* **tied embeddings.** With ``tie_word_embeddings`` no ``output.weight`` is written; llama.cpp
  then uses ``token_embd.weight`` for the output projection.
* **tokenizer metadata** (tokens, token types, merges, bos/eos/pad ids, pre-tokenizer, chat
  template) — copied key for key from the GGUF the model was loaded from when there is one, so
  llama.cpp renders and splits the prompt exactly as before; otherwise built from a byte-level
  BPE (``gpt2``-type) Hugging Face tokenizer.
* **precision.** ``f32`` writes every tensor as float32; ``f16`` writes matrices as float16 and
  1-D tensors (norms, biases) as float32, as llama.cpp's converter does; ``q8_0`` / ``q4_0``
  write a float32 GGUF first and quantise it with llama.cpp's own quantiser
  (``llama_model_quantize``, needs the ``[llamacpp]`` extra).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import LLMOSError, UsageError, opt

GGUF_QUANTS = ("f32", "f16", "q8_0", "q4_0")
# llama.cpp's `enum llama_ftype` (include/llama.h): the file type recorded in general.file_type
_FTYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}
# transformers model_type → (GGUF architecture, permute q/k for llama.cpp's rope layout)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
# pre-tokenizers llama.cpp knows by name (``tokenizer.ggml.pre``), keyed by the Hugging Face
# tokenizer.json pre_tokenizer they implement: GPT-2's byte-level regex, and the SmolLM family's
# digits-one-by-one before it
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_KNOWN_PRE = {
    json.dumps(_BYTE_LEVEL, sort_keys=True): "gpt2",
    json.dumps(
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
        sort_keys=True,
    ): "smollm",
}


def permute_qk(weight, n_head: int):
    """Reorder the rows of a transformers Llama ``q_proj``/``k_proj`` weight (or bias) from
    "rotate half" to llama.cpp's interleaved rope layout.

    Args:
        weight: ``[n_head * head_dim, hidden]`` (or ``[n_head * head_dim]``) numpy array.
        n_head: heads of this projection (``num_key_value_heads`` for ``k_proj``).
    Returns:
        an array of the same shape. Same permutation as llama.cpp's ``convert_hf_to_gguf.py``.
    """
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rope_theta(config) -> float:
    rp = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = rp.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UsageError(f"GGUF export supports plain rotary embeddings; this model uses rope scaling '{kind}'")
    theta = rp.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _field_value(field):
    """(value, type, sub_type) of a GGUFReader field, as ``GGUFWriter.add_key_value`` takes it."""
    from gguf import GGUFValueType

    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else GGUFValueType.INT32
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data], vtype, sub
        return [field.parts[i].tolist()[0] for i in field.data], vtype, sub
    v = field.parts[field.data[0]]
    if vtype == GGUFValueType.STRING:
        return bytes(v).decode("utf-8", "surrogateescape"), vtype, None
    return v.tolist()[0], vtype, None


def tokenizer_fields_from_gguf(path: str | os.PathLike) -> dict[str, tuple]:
    """Every ``tokenizer.*`` key of a GGUF file: ``{key: (value, GGUFValueType, sub_type)}``."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r")
    return {k: _field_value(f) for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def tokenizer_fields_from_hf(tokenizer) -> tuple[dict[str, tuple], Optional[str]]:
    """GGUF tokenizer metadata for a byte-level BPE Hugging Face tokenizer (GPT-2, SmolLM, Llama 3,
    Qwen2 style). Returns ``(fields, warning)``; ``warning`` is a line to show when the
    pre-tokenizer is not one llama.cpp knows by name (it then splits text its default way).

    Raises:
        UsageError: no fast tokenizer, or not a BPE model (SentencePiece/WordPiece vocabularies
            need the source GGUF).
    """
    from gguf import GGUFValueType as T
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError("GGUF export needs a fast (tokenizer.json) tokenizer or the GGUF the model came from")
    spec = json.loads(backend.to_str())
    if spec.get("model", {}).get("type") != "BPE":
        raise UsageError(
            f"GGUF export builds byte-level BPE vocabularies only; this tokenizer is "
            f"{spec.get('model', {}).get('type')} — export a model loaded from a GGUF instead"
        )
    vocab = tokenizer.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [int(TokenType.NORMAL)] * n
    for i in range(n):
        if tokens[i].startswith("[PAD") and tokens[i] not in vocab:
            types[i] = int(TokenType.UNUSED)
    for added in spec.get("added_tokens", []):
        types[added["id"]] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    pre_spec = json.dumps(spec.get("pre_tokenizer"), sort_keys=True)
    pre = _KNOWN_PRE.get(pre_spec, "default")
    warning = (
        None
        if pre != "default"
        else (
            "the tokenizer's pre-tokenizer is not one llama.cpp knows by name; "
            "llama.cpp will split text with its default rules"
        )
    )
    fields = {
        "tokenizer.ggml.model": ("gpt2", T.STRING, None),
        "tokenizer.ggml.pre": (pre, T.STRING, None),
        "tokenizer.ggml.tokens": (tokens, T.ARRAY, T.STRING),
        "tokenizer.ggml.token_type": (types, T.ARRAY, T.INT32),
        "tokenizer.ggml.merges": (merges, T.ARRAY, T.STRING),
    }
    for key, tok in (
        ("bos", tokenizer.bos_token),
        ("eos", tokenizer.eos_token),
        ("unknown", tokenizer.unk_token),
        ("padding", tokenizer.pad_token),
    ):
        if tok is not None and tok in vocab:
            fields[f"tokenizer.ggml.{key}_token_id"] = (vocab[tok], T.UINT32, None)
    fields["tokenizer.ggml.add_bos_token"] = (bool(getattr(tokenizer, "add_bos_token", False)), T.BOOL, None)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        fields["tokenizer.chat_template"] = (template, T.STRING, None)
    return fields, warning


def _unwrap(model):
    """A plain transformers model: LoRA adapters merged into a copy (the caller's keeps them)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()
    if PeftModel and isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, quantize: str, *, threads: int = 0) -> None:
    """Quantise a float GGUF with llama.cpp's quantiser (``llama_model_quantize``; block formats
    documented in ggml's ``ggml-quants.c``: q8_0 = 32 weights + one fp16 scale per block).

    Raises:
        LLMOSError: the llama.cpp extra is not installed, or the quantiser failed.
    """
    from .engines import llamacpp

    if not llamacpp.installed():
        raise LLMOSError(
            "quantising a GGUF needs llama.cpp: pip install 'llmos-jupyter[llamacpp]' "
            f"(or export with {opt('quantize', 'f16')})"
        )
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPE[quantize]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise LLMOSError(f"llama.cpp's quantiser failed (code {rc}) writing {quantize} from {Path(src).name}")


def export_gguf(
    model: Any,
    tokenizer: Any,
    path: str | os.PathLike,
    *,
    quantize: str = "f16",
    source_gguf: Optional[str] = None,
    name: Optional[str] = None,
    notify: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Write ``model`` (a transformers Llama / Mistral / Qwen2 causal LM, or a LoRA ``PeftModel``
    over one — adapters merged) as the GGUF file ``path``.

    Args:
        model: the model; its ``config`` gives the hyper-parameters.
        tokenizer: its Hugging Face tokenizer (used when ``source_gguf`` is None).
        path: the ``.gguf`` file to write (its folder must exist; an existing file is replaced).
        quantize: ``f32 | f16 | q8_0 | q4_0`` (default ``f16``; see the module docstring).
        source_gguf: the GGUF the model was loaded from; its tokenizer metadata is copied.
        name: ``general.name`` (default: the config's ``_name_or_path`` base name).
        notify: where a warning line goes (default: nowhere).

    Returns:
        ``{"path", "bytes", "quantize", "architecture", "tensors", "params"}``.

    Raises:
        UsageError: an unknown ``quantize``, an architecture llama.cpp cannot be given (names
            the supported ones), rope scaling, a tokenizer that cannot be described in GGUF.
        LLMOSError: quantisation without the llama.cpp extra.
    """
    import gguf

    if quantize not in GGUF_QUANTS:
        raise UsageError(f"unknown GGUF quantisation '{quantize}'; use one of {', '.join(GGUF_QUANTS)}")
    model = _unwrap(model)
    cfg = model.config
    mtype = getattr(cfg, "model_type", None)
    if mtype not in ARCHITECTURES:
        raise UsageError(
            f"GGUF export supports {', '.join(sorted(ARCHITECTURES))} causal LMs; this model is "
            f"'{mtype}' — export it with {opt('format', 'hf')}"
        )
    arch, permute = ARCHITECTURES[mtype]
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    theta = _rope_theta(cfg)
    tok_fields = _tokenizer_fields(cfg, tokenizer, source_gguf, notify)

    path = Path(path)
    float_type = "f16" if quantize == "f16" else "f32"
    target = path if quantize in ("f32", "f16") else Path(tempfile.mkstemp(suffix=".f32.gguf", dir=path.parent)[1])
    try:
        w = gguf.GGUFWriter(str(target), arch)
        _add_hyperparameters(w, cfg, name=name, theta=theta, float_type=float_type)
        for key, (value, vtype, sub) in tok_fields.items():
            w.add_key_value(key, value, vtype, sub_type=sub)
        count, params = _add_tensors(w, model, arch, permute=permute, n_head=n_head, n_kv=n_kv, float_type=float_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if target != path:
            quantize_gguf(target, path, quantize)
    except BaseException:
        if target != path:
            target.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    if target != path:
        target.unlink(missing_ok=True)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "quantize": quantize,
        "architecture": arch,
        "tensors": count,
        "params": int(params),
    }


def _tokenizer_fields(cfg, tokenizer, source_gguf: Optional[str], notify) -> dict[str, tuple]:
    """The ``tokenizer.*`` keys to write: copied from ``source_gguf``, else built from ``tokenizer``
    (its warning, if any, goes to ``notify``); the vocabulary must match the embedding rows."""
    if source_gguf is not None:
        tok_fields, warning = tokenizer_fields_from_gguf(source_gguf), None
    else:
        if tokenizer is None:
            raise UsageError("GGUF export needs the model's tokenizer (or the GGUF it was loaded from)")
        tok_fields, warning = tokenizer_fields_from_hf(tokenizer)
    if warning and notify:
        notify(warning)
    n_vocab = len(tok_fields["tokenizer.ggml.tokens"][0])
    if n_vocab != cfg.vocab_size:
        raise UsageError(
            f"the tokenizer has {n_vocab} tokens but the model's embedding has {cfg.vocab_size} rows; "
            f"GGUF needs them equal"
        )
    return tok_fields


def _add_hyperparameters(w, cfg, *, name: Optional[str], theta: float, float_type: str) -> None:
    """The architecture's hyper-parameters as GGUF keys (``set_gguf_parameters`` in llama.cpp's
    converter): name, context, widths, heads, rope, norm epsilon, vocabulary size, file type."""
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w.add_name(name or Path(str(getattr(cfg, "_name_or_path", "") or "model")).name or "model")
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_rope_dimension_count(int(head_dim))
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(_FTYPE[float_type])


def _add_tensors(w, model, arch: str, *, permute: bool, n_head: int, n_kv: int, float_type: str) -> tuple[int, int]:
    """Add every weight under its GGUF name (q/k permuted for llama.cpp's rope layout, no
    ``output.weight`` when the embeddings are tied); returns ``(tensors, parameters)``."""
    import gguf
    import numpy as np
    import torch

    cfg = model.config
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), int(cfg.num_hidden_layers))
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    count = params = 0
    for hf_name, t in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        gg = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg is None:
            raise UsageError(
                f"GGUF export does not know where tensor '{hf_name}' goes; export with {opt('format', 'hf')}"
            )
        data = t.detach().to(torch.float32).cpu().numpy()
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, n_head)
        elif permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, n_kv)
        if float_type == "f16" and data.ndim > 1:
            data = data.astype(np.float16)
        w.add_tensor(gg, np.ascontiguousarray(data))
        count += 1
        params += data.size
    return count, params
