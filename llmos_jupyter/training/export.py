"""Export a model as a plain Hugging Face directory: safetensors weights, config, tokenizer (and,
for a model trained by a run, ``llmos_manifest.json``), loadable with
``transformers.AutoModelFor*.from_pretrained(path)`` and nothing of llmos.

Safety (exports never write outside the folder named): every file is written
inside the folder named — first into a hidden staging folder inside it, then renamed into place —
and after writing, every path under the folder is checked to resolve inside it (no symlink
escapes). An existing non-empty folder is refused unless ``overwrite=True``; then its old entries
are removed only after the new export is complete. A failure removes what this call created.

LoRA models (``peft.PeftModel``): ``merge_lora=True`` writes the merged full model (W + (α/r)·B·A,
peft's ``merge_and_unload`` on a copy, so the in-memory model keeps its adapters);
``merge_lora=False`` writes the adapter (``adapter_model.safetensors``, ``adapter_config.json``)
plus the tokenizer; transformers then loads it with peft installed, fetching the base from
``base_model_name_or_path``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError, opt

MANIFEST = "llmos_manifest.json"


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def quiet_saving():
    """Silence transformers' "Writing model shards" progress bars (llmos reports the save itself)."""
    from ..models.loading import quiet_transformers

    return quiet_transformers()


def check_target(path: os.PathLike | str, overwrite: bool) -> bool:
    """Validate the destination before anything is converted or written; return True when the
    folder existed before.

    Raises:
        UsageError: as :func:`export_model` for its ``path`` (a symlink or file there, a protected
            folder, a non-empty folder without ``overwrite``, one llmos did not export with it).
    """
    path = Path(path).expanduser().absolute()
    if path.is_symlink():
        raise UsageError(
            f"{path} is a symbolic link; export into a real folder (exports never write outside the folder named)"
        )
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} exists and is a file; name a folder to export into")
    protected = {Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()}
    try:
        from ..paths import home

        protected.add(home().resolve())
    except Exception:  # pragma: no cover - paths always importable
        pass
    if path.resolve() in protected:
        raise UsageError(
            f"refusing to export into {path} (the file-system root, your home, the working directory or "
            "LLMOS_HOME); name a new sub-folder"
        )
    try:
        from ..paths import home

        owned = [home().resolve() / sub for sub in ("models", "datasets", "checkpoints")]
    except Exception:  # pragma: no cover - paths always importable
        owned = []
    if any(o == path.resolve() or o in path.resolve().parents for o in owned):
        raise UsageError(
            f"refusing to export into {path}: LLMOS_HOME's models, datasets and checkpoints "
            f"belong to llmos; name a folder outside them"
        )
    if path.exists() and any(path.iterdir()):
        is_export = (path / MANIFEST).is_file()  # written by every llmos export
        if not overwrite:
            hint = f" or pass {opt('overwrite', True)} to replace that earlier export" if is_export else ""
            raise UsageError(f"{path} exists and is not empty; pick a new folder{hint}")
        if not is_export:  # --overwrite never empties a folder llmos did not export (a model's own folder, say)
            raise UsageError(
                f"{path} is not empty and is not an llmos export (no {MANIFEST}); "
                f"{opt('overwrite', True)} only replaces an earlier export — pick a new folder"
            )
        ours = previous_files(path)
        if ours is None:
            raise UsageError(
                f"{path} holds an export that does not list its files (an older llmos); "
                f"{opt('overwrite', True)} replaces only listed files — pick a new folder, or empty "
                f"this one yourself"
            )
        others = sorted(
            p.name for p in path.iterdir() if p.name not in ours and not p.name.startswith(".llmos-export-")
        )
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise UsageError(
                f"{path} also holds files the earlier export did not write ({shown}); "
                f"{opt('overwrite', True)} replaces only llmos's own files — move those out first, or "
                f"pick a new folder (nothing was changed)"
            )
    return path.exists()


def previous_files(path: Path) -> set[str] | None:
    """Names an earlier export wrote into ``path`` (its manifest's ``exported_files`` plus the
    manifest itself), or None when the manifest does not list them."""
    try:
        listed = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("exported_files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
        return None
    return set(listed) | {MANIFEST}


def _inside(root: Path) -> None:
    """Raise if any path under ``root`` resolves outside it (a symlink escape)."""
    r = root.resolve()
    for p in root.rglob("*"):
        rp = p.resolve()
        if rp != r and r not in rp.parents:
            raise RuntimeError(f"export wrote {p} which resolves outside {root}")


def check_format(format: str, quantize: Optional[str]) -> Optional[str]:
    """Validate an export format and GGUF quantisation; return the quantisation to use
    (``f16`` by default for GGUF, None for ``hf``).

    Raises:
        UsageError: an unknown format or quantisation, or ``quantize`` without ``gguf``.
    """
    if format not in ("hf", "gguf"):
        raise UsageError(f"unknown export format '{format}'; use {opt('format', 'hf')} (a Hugging Face folder) or gguf")
    if quantize is not None and format != "gguf":
        raise UsageError(f"{opt('quantize')} applies to {opt('format', 'gguf')}; add {opt('format', 'gguf')}")
    if format != "gguf":
        return None
    from ..models.gguf_export import GGUF_QUANTS

    if (quantize or "f16") not in GGUF_QUANTS:
        raise UsageError(f"unknown GGUF quantisation '{quantize}'; use one of {', '.join(GGUF_QUANTS)}")
    return quantize or "f16"


def _write_stage(
    model: Any,
    tokenizer: Any,
    stage: Path,
    *,
    format: str,
    quantize: Optional[str],
    source_gguf: Optional[str],
    manifest: Optional[dict[str, Any]],
    merge: bool,
    weights_writer: Any,
) -> list[str]:
    """Write the export into the staging folder ``stage``: the GGUF file, or the weights (LoRA
    merged into a copy when ``merge``), config and tokenizer; then the manifest listing the files.
    Returns the weights file names.

    Raises:
        RuntimeError: no weights file was written, or a file resolves outside ``stage``.
    """
    if format == "gguf":
        from ..models.gguf_export import export_gguf

        export_gguf(
            model,
            tokenizer,
            stage / f"model-{quantize}.gguf",
            quantize=quantize,
            source_gguf=source_gguf,
            name=(manifest or {}).get("exported_alias"),
        )
    else:
        out = copy.deepcopy(model).merge_and_unload() if merge else model  # a copy: the model keeps its adapters
        if weights_writer is not None:
            weights_writer(out, stage)
        else:
            with quiet_saving():
                out.save_pretrained(stage, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
    # always written: it marks the folder as an llmos export and lists its files (what --overwrite may replace)
    written = sorted(p.name for p in stage.iterdir())
    record = dict(manifest if manifest is not None else {"run": None}, exported_files=written)
    (stage / MANIFEST).write_text(json.dumps(record, indent=2, default=str))
    kinds = ("*.gguf",) if format == "gguf" else ("*.safetensors", "*.pt")
    weights = sorted(p.name for k in kinds for p in stage.glob(k))
    if not weights:
        raise RuntimeError(f"the export wrote no weights file in {stage}")
    _inside(stage)
    return weights


def _replace_export(stage: Path, path: Path) -> None:
    """Move the staged files into ``path``, first removing only what the earlier export there
    listed in its manifest (and stale staging folders); nothing else in ``path`` is touched."""
    new = sorted(p.name for p in stage.iterdir())
    ours = previous_files(path) or set()  # only what the earlier export listed (nothing else is there: checked)
    for old in list(path.iterdir()):
        if old == stage or not (old.name in ours or old.name.startswith(".llmos-export-")):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for name in new:
        os.replace(stage / name, path / name)
    stage.rmdir()


def export_model(
    model: Any,
    tokenizer: Any,
    path: os.PathLike | str,
    *,
    merge_lora: bool = False,
    overwrite: bool = False,
    manifest: Optional[dict[str, Any]] = None,
    format: str = "hf",
    quantize: Optional[str] = None,
    source_gguf: Optional[str] = None,
    weights_writer: Any = None,
) -> dict[str, Any]:
    """Write ``model`` and ``tokenizer`` to the folder ``path`` in Hugging Face format, or as one
    GGUF file for llama.cpp / Ollama (``format="gguf"``).

    Args:
        model: a transformers model, or a ``peft.PeftModel`` (see the module docstring).
        tokenizer: its tokenizer (saved with it; None skips it).
        path: the folder; created when absent (parents too).
        merge_lora: merge LoRA adapters into the weights (default False: write the adapter).
        overwrite: replace the contents of a non-empty folder (default False: refuse).
        manifest: the run manifest to write as ``llmos_manifest.json`` (default None: none).
        format: ``hf`` (default: safetensors + config + tokenizer) or ``gguf`` (``model-<quantize>.gguf``
            written by :func:`llmos_jupyter.models.gguf_export.export_gguf`; LoRA is always merged).
        quantize: with ``gguf``: ``f32 | f16 | q8_0 | q4_0`` (default ``f16``).
        source_gguf: with ``gguf``: the GGUF the model was loaded from (its tokenizer metadata is
            copied exactly).
        weights_writer: with ``hf``: ``weights_writer(model, folder)`` writes the weights (and
            config) instead of ``save_pretrained`` — for weights ``save_pretrained`` cannot hold,
            such as a quantised model's (``.pt`` / ``.safetensors`` files count as weights).

    Returns:
        ``{"path", "files", "bytes", "weights", "merged_lora", "adapter"}``: the absolute folder,
        the file names written (sorted), their total size in bytes, the weights file names,
        whether adapters were merged, whether an adapter (not a full model) was written.

    Raises:
        UsageError: a non-empty folder without ``overwrite``, a file or symlink at ``path``, a
            protected folder (root, home, cwd, LLMOS_HOME), ``merge_lora`` on a model with no
            adapters, or a quantised model (bitsandbytes etc.) whose weights are not plain floats.
    """
    quantize = check_format(format, quantize)
    path = Path(path).expanduser().absolute()
    existed = check_target(path, overwrite)
    peft = _is_peft(model)
    if format == "gguf":
        merge_lora = peft  # llama.cpp takes one weights file: adapters are merged in
    if merge_lora and not peft:
        raise UsageError(
            f"{opt('merge_lora', True)} needs a LoRA model; this one has no adapters, so export it "
            f"without {opt('merge_lora', True)}"
        )
    if (
        getattr(model, "is_quantized", False)
        or getattr(getattr(model, "config", None), "quantization_config", None) is not None
    ):
        raise UsageError(
            "this model is quantised and cannot be exported as plain float weights; load it without quantisation first"
        )
    path.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".llmos-export-", dir=path))
    try:
        weights = _write_stage(
            model,
            tokenizer,
            stage,
            format=format,
            quantize=quantize,
            source_gguf=source_gguf,
            manifest=manifest,
            merge=peft and merge_lora,
            weights_writer=weights_writer,
        )
        _replace_export(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        raise
    files = sorted(p.name for p in path.iterdir())
    return {
        "path": os.path.normpath(path),  # "a/../b" shown as "b"; the checks above used the path as given
        "files": files,
        "bytes": sum((path / f).stat().st_size for f in files if (path / f).is_file()),
        "weights": weights,
        "merged_lora": bool(peft and merge_lora),
        "adapter": bool(peft and not merge_lora),
        "format": format,
        "quantize": quantize,
    }
