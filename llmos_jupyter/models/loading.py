"""Loading models: sources, tasks, dtype/device, GGUF, estimates before load.

Sources (in the order they are tried): a catalog name (pulled into ``LLMOS_HOME`` on demand),
a local ``.gguf`` file, a local directory with ``config.json``, a LoRA adapter folder
(``adapter_config.json``, as ``%llm export`` writes it: its base is loaded first, then the
adapter on top with peft), a Hugging Face hub id (works offline only when it is in the local HF
cache).

Tasks: ``causal-lm`` (``AutoModelForCausalLM``), ``seq-cls``
(``AutoModelForSequenceClassification``), ``embedding`` (``AutoModel``, mean pooling). Without
``--task``: the catalog's task, ``causal-lm`` for a GGUF, the adapter's ``task_type``, else the
task of the checkpoint's ``config.architectures`` (``*ForCausalLM`` → causal-lm,
``*ForSequenceClassification`` → seq-cls, a bare encoder such as ``BertModel`` → embedding). An
encoder (BERT-type: a masked-LM family, not a decoder) is never loaded for generation.

Checks before weights are read: every ``*.safetensors`` header (a cut or random file is named as
corrupt, with the fix); ``auto_map`` code shipped with a model runs only with
``trust_remote_code`` — without it a note says what was not run and how to allow it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LLMOSError, UsageError, opt

TASKS = ("causal-lm", "seq-cls", "embedding")


@dataclass
class Source:
    """Where a model's files are: ``path`` (dir or file), ``gguf_file`` (name inside ``path``),
    ``catalog`` name or hub ``repo_id``; ``kind`` is ``catalog|gguf|dir|hub``."""

    spec: str
    kind: str
    path: str | None = None
    gguf_file: str | None = None
    catalog: str | None = None
    default_task: str | None = None


@dataclass
class Loaded:
    """A loaded model and what the manager needs to know about it."""

    model: object
    tokenizer: object
    task: str
    source: Source
    dtype: str
    device: str
    params: int
    load_s: float
    labels: list[str] | None = None
    quantization: str | None = None
    extra: dict = field(default_factory=dict)


def auto_class(task: str):
    """The transformers Auto class for ``task`` (see :data:`TASKS`)."""
    import transformers

    try:
        return {
            "causal-lm": transformers.AutoModelForCausalLM,
            "seq-cls": transformers.AutoModelForSequenceClassification,
            "embedding": transformers.AutoModel,
        }[task]
    except KeyError:
        raise UsageError(f"unknown task '{task}'; use one of: {', '.join(TASKS)}") from None


def resolve_source(spec: str, *, pull: bool = True) -> Source:
    """Turn what the user typed into a :class:`Source`.

    Raises:
        NotFoundError / LLMOSError: nothing matches, with the close catalog names.
    """
    from .. import catalog
    from .. import pull as pull_mod

    spec = str(spec)
    if spec in catalog.CATALOG:
        entry = catalog.get(spec)
        if entry.kind != "model":
            raise UsageError(f"'{spec}' is a dataset; load it with `%llm data load {spec}`")
        path = pull_mod.ensure_pulled(spec) if pull else pull_mod.target_dir(spec)
        return Source(
            spec,
            "gguf" if entry.gguf_file else "catalog",
            str(path),
            entry.gguf_file,
            catalog=spec,
            default_task=entry.default_task,
        )
    p = Path(spec).expanduser()
    if p.suffix == ".gguf" or p.is_file():
        if not p.is_file():
            raise LLMOSError(f"no such file: {spec}")
        return Source(spec, "gguf", str(p.parent.resolve()), p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            if (p / "adapter_config.json").is_file():
                return Source(spec, "adapter", str(p.resolve()))
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return Source(spec, "gguf", str(p.resolve()), ggufs[0].name)
            raise LLMOSError(
                f"{spec} has no config.json (nor adapter_config.json, nor exactly one .gguf file); "
                f"point at a model directory"
            )
        check_config_json(p, spec)  # before anything reads it (the task is inferred from it)
        return Source(spec, "dir", str(p.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return Source(spec, "hub", spec)
    from ..errors import unknown

    raise unknown(
        "model",
        spec,
        catalog.names("model"),
        "give a catalog name (`%llm list`), a local directory, a .gguf file or a hub id like org/name",
    )


CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
ADAPTER_TASKS = {"SEQ_CLS": "seq-cls", "CAUSAL_LM": "causal-lm", "FEATURE_EXTRACTION": "embedding"}


def task_of_architectures(architectures) -> str | None:
    """The task a checkpoint was saved for, from ``config.architectures``: ``*ForCausalLM`` /
    ``*LMHeadModel`` → causal-lm, ``*ForSequenceClassification`` → seq-cls, anything else (a
    bare ``BertModel``, ``*ForMaskedLM``) → embedding; None when there are none."""
    archs = [str(a) for a in architectures or []]
    if not archs:
        return None
    if any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "seq-cls"
    return "embedding"


def is_encoder(config: dict) -> bool:
    """True for an encoder-only model (BERT, RoBERTa, MiniLM...): not marked as a decoder, no
    causal architecture saved, and a family that transformers gives a masked-LM head
    (``MODEL_FOR_MASKED_LM_MAPPING_NAMES``). Such a model cannot generate text."""
    if config.get("is_decoder") or config.get("is_encoder_decoder"):
        return False
    if any(str(a).endswith(CAUSAL_SUFFIXES) for a in config.get("architectures") or []):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _config_json(src: Source) -> dict:
    """``config.json`` of a local source as a dict ({} when there is none or it is unreadable)."""
    import json

    f = Path(src.path or "") / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8")) if src.kind in ("dir", "catalog") and f.is_file() else {}
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def resolve_task(src: Source, task: str | None = None) -> str:
    """The task to load ``src`` for: ``task`` when given, else the catalog's, ``causal-lm`` for a
    GGUF, the adapter's ``task_type``, else :func:`task_of_architectures` (``causal-lm`` when the
    config names none).

    Raises:
        UsageError: an unknown task; ``causal-lm`` for an encoder (:func:`is_encoder`); a task
            that is not the adapter's.
    """
    if task is not None and task not in TASKS:
        from ..errors import close_matches

        raise UsageError(f"unknown task '{task}'{close_matches(str(task), TASKS)}; use one of: {', '.join(TASKS)}")
    if src.kind == "gguf":
        return task or src.default_task or "causal-lm"
    if src.kind == "adapter":
        kind = str(_json(Path(src.path) / "adapter_config.json").get("task_type") or "")
        own = ADAPTER_TASKS.get(kind)
        if task is not None and own is not None and task != own:
            raise UsageError(
                f"{src.spec} is a {own} adapter (task_type {kind}); load it with {opt('task', own)} or "
                f"leave the task out"
            )
        return task or own or "causal-lm"
    cfg = _config_json(src)
    task = task or src.default_task or task_of_architectures(cfg.get("architectures")) or "causal-lm"
    if task == "causal-lm" and cfg and is_encoder(cfg):
        arch = (cfg.get("architectures") or [cfg.get("model_type")])[0]
        raise UsageError(
            f"{src.spec} is an encoder ({arch}, model_type '{cfg.get('model_type')}'): it reads text but "
            f"cannot generate it; load it with {opt('task', 'embedding')} or {opt('task', 'seq-cls')}"
        )
    return task


def _fix_for(spec: str) -> str:
    """How to get a damaged model's files back: pull a catalog model again, else save it again."""
    from .. import catalog

    if spec in catalog.CATALOG:
        return f"download it again with `%llm pull {spec} --force`"
    return "copy or save the model again (a catalog model: `%llm pull NAME --force`)"


def check_config_json(directory: str | os.PathLike, spec: str = "") -> None:
    """Check that ``config.json`` in ``directory``, when there is one, is a JSON object, before
    transformers reads it (its own message names neither the fix nor, in every version, the file).

    Raises:
        LLMOSError: one line with the file's path, why it does not parse, and the fix.
    """
    import json

    config = Path(directory) / "config.json"
    if not config.is_file():
        return
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LLMOSError(f"{config} is not a valid config ({str(e)[:120]}); repair it or {_fix_for(spec)}") from None


def check_safetensors(directory: str | os.PathLike, spec: str = "") -> None:
    """Check the header of every ``*.safetensors`` file in ``directory`` before transformers
    reads it: 8 bytes of little-endian header length N, N bytes of JSON, and tensor data that
    ends within the file (format: https://github.com/huggingface/safetensors#format).

    Raises:
        LLMOSError: a file that is cut or not safetensors at all — one line with its path and
            the fix (``%llm pull NAME --force`` for a catalog model).
    """
    import json

    fix = _fix_for(spec)
    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
                n = int.from_bytes(head, "little")
                if n > size - 8:
                    raise ValueError(f"its header claims {n:,} bytes but the file has {size:,}")
                meta = json.loads(fh.read(n).decode("utf-8"))
            end = max((int(t["data_offsets"][1]) for k, t in meta.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                raise ValueError(f"its tensors need {8 + n + end:,} bytes but the file has {size:,}")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as e:
            raise LLMOSError(f"{f} is corrupt or truncated ({str(e).splitlines()[0][:120]}); {fix}") from None


def _note_remote_code(src: Source, trust_remote_code: bool) -> None:
    """Say, once per load, that code shipped with the model (``auto_map``) was not run."""
    import sys

    auto_map = _config_json(src).get("auto_map")
    if not auto_map or trust_remote_code:
        return
    first = next(iter(auto_map.items()))
    print(
        f"llmos: note: {src.spec} ships its own model code (auto_map: {first[0]} → {first[1]}) which was not run; "
        f"it loads with transformers' built-in classes instead. To run that code, load with "
        f"{opt('trust_remote_code', True)} (only for a source you trust)",
        file=sys.stderr,
        flush=True,
    )


def _hub_kwargs(src: Source) -> dict:
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") else {}


def _load_config(src: Source, trust_remote_code: bool):
    from transformers import AutoConfig

    kw = {"trust_remote_code": trust_remote_code, **_hub_kwargs(src)}
    if src.kind == "gguf":
        kw["gguf_file"] = src.gguf_file
    elif src.kind in ("dir", "catalog"):
        check_config_json(src.path, src.catalog or src.spec)
    try:
        return AutoConfig.from_pretrained(src.path, **kw)
    except (OSError, ValueError) as e:
        if src.kind == "hub":
            raise LLMOSError(
                f"could not load '{src.spec}' from the Hugging Face hub (offline or not cached: "
                f"{str(e).splitlines()[0][:120]}); pull a catalog model (`%llm list`) or give a local path"
            ) from None
        if "trust_remote_code" in str(e):
            raise LLMOSError(
                f"{src.spec} needs the model code shipped with it (its config names a model type "
                f"transformers does not have); load it with {opt('trust_remote_code', True)} if you "
                f"trust the "
                f"source"
            ) from None
        model_type = _config_json(src).get("model_type")
        if model_type and "does not recognize this architecture" in str(e):
            import transformers

            raise LLMOSError(
                f"{src.spec} is a '{model_type}' model, which transformers {transformers.__version__} does not "
                f"know; upgrade transformers (pip install -U transformers), or load it with "
                f"{opt('trust_remote_code', True)} if it ships its own model code and you trust it"
            ) from None
        raise LLMOSError(f"could not read the config of {src.spec}: {str(e).splitlines()[0][:160]}") from None


def estimate(spec: str, task: str | None = None, dtype: str | None = None, *, pull: bool = True) -> dict:
    """Estimate a model's size before loading it.

    GGUF files: parameters from the tensor table, bytes = params × bytes of the target dtype
    (transformers dequantises GGUF to float32 on CPU: 134,515,008 × 4 = 538,060,032 bytes for
    SmolLM2-135M, not the 98 MB file). Others: the model is built on the meta device.

    ``real_bytes`` adds what the tokenizer holds (:func:`~..resources.memory.tokenizer_bytes`
    over its vocabulary and merges): the process RSS a transformers load really costs.

    Returns:
        ``{"params", "bytes" (tensors), "real_bytes", "dtype", "device", "task"}``.
    """
    from ..resources.hardware import choose_device_dtype
    from ..resources.memory import DTYPE_BYTES, estimate_from_config, tokenizer_bytes
    from .gguf_check import check_gguf

    src = resolve_source(spec, pull=pull)
    task = resolve_task(src, task)
    if src.kind == "adapter":  # the base, plus the adapter's own weights
        est = estimate(adapter_base(src), task, dtype, pull=pull)
        extra = sum(f.stat().st_size for f in Path(src.path).glob("*.safetensors"))
        return dict(est, bytes=est["bytes"] + extra, real_bytes=est["real_bytes"] + extra)
    device, dtype = choose_device_dtype(None, dtype)
    nbytes = DTYPE_BYTES[dtype]
    if src.kind == "gguf":
        info = check_gguf(Path(src.path) / src.gguf_file)
        params = info.params
        total = params * nbytes
    else:
        config = _load_config(src, False)
        params, total = estimate_from_config(config, auto_class(task), nbytes)
    real = total + tokenizer_bytes(tokenizer_entries(src))
    return {"params": params, "bytes": total, "real_bytes": real, "dtype": dtype, "device": device, "task": task}


def tokenizer_entries(src: Source) -> int:
    """Vocabulary entries + BPE merges of ``src``'s tokenizer, read without loading it (GGUF
    metadata, ``tokenizer.json`` or ``vocab.txt``); 0 when unknown."""
    import json

    if src.kind == "gguf":
        from .engines.llamacpp import gguf_metadata

        lengths = gguf_metadata(Path(src.path) / src.gguf_file).get("_array_lengths", {})
        return lengths.get("tokenizer.ggml.tokens", 0) + lengths.get("tokenizer.ggml.merges", 0)
    d = Path(src.path or "")
    try:
        if (d / "tokenizer.json").is_file():
            model = json.loads((d / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
            return len(model.get("vocab", ())) + len(model.get("merges", ()))
        if (d / "vocab.txt").is_file():
            return sum(1 for _ in open(d / "vocab.txt", encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return 0


def adapter_base(src: Source) -> str:
    """What a LoRA adapter folder was trained on: the ``source`` llmos recorded in its
    ``llmos_manifest.json`` (a catalog name, a GGUF path, a model folder), else the
    ``base_model_name_or_path`` of its ``adapter_config.json`` — the first that resolves.

    Raises:
        LLMOSError: neither names a model that can be found (one line naming both).
    """
    d = Path(src.path)
    manifest, config = _json(d / "llmos_manifest.json"), _json(d / "adapter_config.json")
    tried = [c for c in (manifest.get("source"), config.get("base_model_name_or_path")) if c]
    for c in tried:
        try:
            resolve_source(str(c), pull=False)
            return str(c)
        except LLMOSError:
            continue
    named = ", ".join(map(str, tried)) or "nothing recorded"
    raise LLMOSError(
        f"the base model of the adapter {src.spec} cannot be found (tried: {named}); "
        f"load the base with `%llm load BASE` and fine-tune it again, or export the adapter merged "
        f"(`%llm export ALIAS DIR --merge-lora`)"
    )


def adapter_labels(src: Source) -> list[str] | None:
    """Class names of a seq-cls adapter: the ``labels`` in its llmos manifest, else ``LABEL_i``
    for each row of the saved classification head (read from the safetensors header)."""
    import json
    import re

    d = Path(src.path)
    labels = _json(d / "llmos_manifest.json").get("labels")
    if labels:
        return [str(x) for x in labels]
    for f in d.glob("*.safetensors"):
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                meta = json.loads(fh.read(n).decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        for k, t in meta.items():
            if re.search(r"(classifier|score)(\.out_proj)?\.weight$", k) and isinstance(t, dict):
                return [f"LABEL_{i}" for i in range(int(t["shape"][0]))]
    return None


def prepare(spec: str) -> None:
    """Import what loading ``spec`` with transformers needs (torch, transformers, the
    architecture's modelling module, the GGUF reader), so that the memory those libraries take
    is not counted as the model's when its real cost is measured."""
    import importlib
    import json

    # imported for their side effect only: the libraries' memory is then already in the process
    import torch  # noqa: F401
    import transformers  # noqa: F401

    src = resolve_source(spec, pull=False)
    model_type = None
    if src.kind == "gguf":
        import transformers.modeling_gguf_pytorch_utils  # noqa: F401  (side effect: the GGUF reader)

        from .engines.llamacpp import gguf_metadata

        model_type = gguf_metadata(Path(src.path) / src.gguf_file).get("general.architecture")
    elif src.path and (Path(src.path) / "config.json").is_file():
        try:
            model_type = json.loads((Path(src.path) / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            model_type = None
    if model_type:
        try:
            importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        except ImportError:
            pass


def _unmark_gguf_quantized(model) -> None:
    """transformers marks a GGUF-loaded model as quantised although its weights are dequantised
    float tensors; Trainer, peft and ``save_pretrained`` then refuse it. Clear the marks."""
    for m in (model, getattr(model, "base_model", None)):
        if m is None:
            continue
        if getattr(m, "hf_quantizer", None) is not None:
            m.hf_quantizer = None
        if getattr(m, "is_quantized", False):
            m.is_quantized = False
        if hasattr(m, "quantization_method"):
            try:
                m.quantization_method = None
            except AttributeError:
                pass
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        try:
            del cfg.quantization_config
        except AttributeError:
            cfg.quantization_config = None


def _own_storage(model) -> None:
    """Give every tensor memory of its own when it is backed by a memory-mapped file.

    safetensors loads map the file; such storages cannot be resized, so an autograd graph that
    still points at a weight would keep the whole mapping alive after unload. Owned
    storages can be released in place (``untyped_storage().resize_(0)``) by the manager.
    """
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device.type == "cpu" and not t.untyped_storage().resizable():
                t.data = t.data.clone()


def quiet_transformers():
    """Silence transformers' load reports and progress bars (GGUF's included) and two peft warnings
    nobody can act on, while llmos loads, wraps or saves a model (it reports itself)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        import functools
        import sys
        import warnings

        level = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # GGUF de-quantisation draws its own tqdm bar, outside transformers' switch above
        gguf = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
        if gguf is None:
            try:
                import transformers.modeling_gguf_pytorch_utils as gguf
            except ImportError:
                gguf = None
        bar = getattr(gguf, "tqdm", None)
        if bar is not None:
            gguf.tqdm = functools.partial(bar, disable=True)
        try:
            with warnings.catch_warnings():
                # peft asks transformers a deprecated question when wrapping, and warns that a GGUF
                # base folder has no config.json when saving adapters: neither is the user's to act on
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning)
                yield
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
            if bar is not None:
                gguf.tqdm = bar

    return quiet()


def _load_impl(
    spec: str,
    task: str | None = None,
    *,
    labels: list[str] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Loaded:
    """See :func:`load`."""
    import torch
    from transformers import AutoTokenizer

    from ..resources.hardware import choose_device_dtype

    t0 = time.perf_counter()
    src = resolve_source(spec)
    task = resolve_task(src, task)
    if src.kind == "adapter":
        return _load_adapter(
            src,
            task,
            t0,
            labels=labels,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
    auto = auto_class(task)
    device, dtype = choose_device_dtype(device, dtype)
    if attn_implementation in ("triton", "llmos_triton"):
        from ..ops import registration

        attn_implementation = registration.register()
    kw, quant = _checked_source(src, spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    config = _load_config(src, trust_remote_code)
    model_kw = {**kw, **_label_kwargs(task, labels, config)}
    try:
        tok = AutoTokenizer.from_pretrained(src.path, **kw)
    except (OSError, ValueError) as e:
        raise LLMOSError(f"could not load the tokenizer of {spec}: {str(e).splitlines()[0][:160]}") from None
    if attn_implementation:
        model_kw["attn_implementation"] = attn_implementation
    model = _from_pretrained(auto, src, spec, task, getattr(torch, dtype), model_kw, allow_pickle=allow_pickle)
    return _finish_load(model, tok, src, task, dtype, device, quant, t0)


def _checked_source(src: Source, spec: str, *, trust_remote_code: bool, allow_pickle: bool) -> tuple[dict, str | None]:
    """Check a non-adapter source before any weight is read (GGUF support, pickle-only folders,
    safetensors headers, a note on remote code not run).

    Returns:
        ``(kw, quantization)``: the ``from_pretrained`` keyword arguments the tokenizer and the
        model share, and ``"gguf"`` for a GGUF file, else None.

    Raises:
        LLMOSError: an unsupported GGUF, pickle weights without ``allow_pickle``, a corrupt
            safetensors file.
    """
    kw: dict = {"trust_remote_code": trust_remote_code, **_hub_kwargs(src)}
    quant = None
    if src.kind == "gguf":
        from .gguf_check import check_gguf

        check_gguf(Path(src.path) / src.gguf_file)
        kw["gguf_file"] = src.gguf_file
        quant = "gguf"
    elif src.kind == "dir" and not allow_pickle:
        d = Path(src.path)
        if not list(d.glob("*.safetensors")) and (list(d.glob("*.bin")) or list(d.glob("*.pt"))):
            raise LLMOSError(
                f"{spec} has only pickle weights (.bin/.pt), which can run code when loaded; "
                f"pass {opt('allow_pickle', True)} if you trust it"
            )
    if src.kind in ("dir", "catalog"):
        check_safetensors(src.path, src.catalog or spec)
        _note_remote_code(src, trust_remote_code)
    return kw, quant


def _label_kwargs(task: str, labels: list[str] | None, config) -> dict:
    """Extra ``from_pretrained`` arguments for a ``seq-cls`` head: the given ``labels`` as
    ``num_labels``/``id2label``/``label2id``, or 2 classes when ``config`` names fewer than 2."""
    if task != "seq-cls":
        return {}
    if labels:
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    if not getattr(config, "id2label", None) or len(config.id2label) < 2:
        return {"num_labels": 2}
    return {}


def _from_pretrained(auto, src: Source, spec: str, task: str, torch_dtype, model_kw: dict, *, allow_pickle: bool):
    """``auto.from_pretrained`` on ``src`` in ``torch_dtype``, its failures as one-line errors.

    Raises:
        LLMOSError: the checkpoint does not load as ``task``, or a weights file is corrupt.
    """
    try:
        return auto.from_pretrained(
            src.path,
            dtype=torch_dtype,
            use_safetensors=None if allow_pickle else (src.kind != "gguf" or None),
            **model_kw,
        )
    except (OSError, ValueError, KeyError) as e:
        raise LLMOSError(f"could not load {spec} as {task}: {str(e).splitlines()[0][:200]}") from None
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise LLMOSError(
            f"a weights file of {spec} is corrupt ({str(e).splitlines()[0][:120]}); copy or save it "
            f"again (a catalog model: `%llm pull NAME --force`)"
        ) from None


def _finish_load(model, tok, src: Source, task: str, dtype: str, device: str, quant: str | None, t0: float) -> Loaded:
    """Make a freshly loaded model ready (own storage, pad token, on ``device``, eval mode; a
    classifier pools by the attention mask) and describe it; ``t0`` is when the load began."""
    from ..resources.memory import count_params

    if quant == "gguf":
        _unmark_gguf_quantized(model)
    _own_storage(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if getattr(model.config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id
    model.to(device)
    model.eval()
    lab = None
    if task == "seq-cls":
        from .pooling import pool_by_attention_mask

        pool_by_attention_mask(model)  # decoder classifiers: last real token by the mask
        lab = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Loaded(
        model,
        tok,
        task,
        src,
        dtype,
        device,
        count_params(model),
        time.perf_counter() - t0,
        labels=lab,
        quantization=quant,
    )


def _load_adapter(src: Source, task: str, t0: float, *, labels=None, **kw) -> Loaded:
    """Load a LoRA adapter folder: its base (:func:`adapter_base`), then the adapter on top with
    ``peft.PeftModel.from_pretrained`` (trainable, so ``finetune`` can continue it)."""
    from peft import PeftModel

    from ..resources.memory import count_params

    base_spec = adapter_base(src)
    if task == "seq-cls":
        labels = labels or adapter_labels(src)
    base = _load_impl(base_spec, task, labels=labels, **kw)
    check_safetensors(src.path, src.spec)
    try:
        model = PeftModel.from_pretrained(base.model, src.path, is_trainable=True)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise LLMOSError(
            f"could not put the adapter {src.spec} on its base {base_spec}: {str(e).splitlines()[0][:160]}"
        ) from None
    model.eval()
    tok = base.tokenizer
    if (Path(src.path) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src.path)
        if tok.pad_token is None:
            tok.pad_token = base.tokenizer.pad_token
    return Loaded(
        model,
        tok,
        task,
        src,
        base.dtype,
        base.device,
        count_params(model),
        time.perf_counter() - t0,
        labels=base.labels,
        quantization=base.quantization,
        extra={"base": base_spec},
    )


def load(spec: str, task: str | None = None, **kw) -> Loaded:
    """Load a model and its tokenizer, with transformers' own load reports silenced.

    Args:
        spec: catalog name, ``.gguf`` path, model directory or hub id.
        task: ``causal-lm`` | ``seq-cls`` | ``embedding``; default: the catalog's or ``causal-lm``.
        labels: class names for ``seq-cls`` (``["negative", "positive"]``); default: the
            config's ``id2label`` when it has real names, else 2 classes ``LABEL_0``, ``LABEL_1``.
        dtype: ``float32|float16|bfloat16``; default from :func:`choose_device_dtype`.
        device: ``cpu`` or ``cuda:N``; default: the first GPU if any.
        attn_implementation: ``sdpa``, ``eager`` or ``llmos_triton`` (registered on demand).
        trust_remote_code: run code from the model repository (off by default).
        allow_pickle: allow ``.bin``/pickle weights (off by default: safetensors/GGUF only).

    Raises:
        LLMOSError: bad source, unsupported/corrupt GGUF, pickle weights without ``allow_pickle``.
    """
    with quiet_transformers():
        return _load_impl(spec, task, **kw)
