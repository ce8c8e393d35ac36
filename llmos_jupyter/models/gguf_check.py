"""Check a GGUF file before transformers dequantises it: a broken, truncated or unsupported file is one line.

Reads only the header (format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic ``GGUF``, version, tensor count, key/value metadata, tensor infos; then compares the
size the tensor table needs with the file's real size, so a truncated download is reported as
such instead of as a numpy reshape error deep inside the loader.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..errors import LLMOSError

# value type id → struct format of a scalar (gguf spec, "gguf_metadata_value_type")
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFInfo:
    """What the header says: ``architecture``, ``params`` (elements over all tensors),
    ``expected_bytes`` (the size the tensor data needs), ``actual_bytes``."""

    architecture: str
    params: int
    expected_bytes: int
    actual_bytes: int
    tensor_count: int
    tensor_bytes: int = 0  # bytes of tensor data (the weights as stored, quantised or not)


class _Reader:
    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def read(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        data = self.f.read(n)
        if len(data) < n:
            raise EOFError
        return struct.unpack("<" + fmt, data)[0]

    def string(self) -> str:
        n = self.read("Q")
        if n > self.size:
            raise EOFError
        data = self.f.read(n)
        if len(data) < n:
            raise EOFError
        return data.decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.read(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.read("I"), self.read("Q")
            if n > self.size:
                raise EOFError
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def inspect_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Parse the header of ``path`` and size its tensor data.

    Raises:
        LLMOSError: not a GGUF file, or the header itself is cut short.
    """
    from gguf import GGML_QUANT_SIZES  # (block_size, type_size) per ggml type

    actual = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, actual)
        try:
            if f.read(4) != b"GGUF":
                raise LLMOSError(
                    f"{os.path.basename(path)} is not a GGUF file (no GGUF magic); pass a .gguf file or a model "
                    "directory"
                )
            r.read("I")  # version
            n_tensors, n_kv = r.read("Q"), r.read("Q")
            meta = {}
            for _ in range(n_kv):
                key = r.string()
                meta[key] = r.value(r.read("I"))
            infos = []
            for _ in range(n_tensors):
                r.string()
                dims = [r.read("Q") for _ in range(r.read("I"))]
                ttype, offset = r.read("I"), r.read("Q")
                infos.append((dims, ttype, offset))
            header_end = f.tell()
        except EOFError:
            raise LLMOSError(
                f"{os.path.basename(path)} is truncated or corrupt: its header ends past the end of "
                f"the file ({actual:,} bytes); download it again (`%llm pull NAME --force`)"
            ) from None
    align = int(meta.get("general.alignment", 32))
    data_start = (header_end + align - 1) // align * align
    params, end, stored = 0, data_start, 0
    for dims, ttype, offset in infos:
        n = 1
        for d in dims:
            n *= d
        params += n
        block, size = GGML_QUANT_SIZES.get(ttype, (1, 4))
        stored += n // block * size
        end = max(end, data_start + offset + n // block * size)
    return GGUFInfo(str(meta.get("general.architecture", "?")), params, end, actual, len(infos), stored)


def check_gguf(path: str | os.PathLike) -> GGUFInfo:
    """:func:`inspect_gguf`, then raise one line if transformers cannot load the file.

    Raises:
        LLMOSError: truncated/corrupt file (expected vs actual bytes), or an architecture
            transformers' GGUF loader does not support (names the supported ones).
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    info = inspect_gguf(path)
    if info.actual_bytes < info.expected_bytes:
        raise LLMOSError(
            f"{os.path.basename(path)} is truncated or corrupt: its tensors need {info.expected_bytes:,} "
            f"bytes but the file has {info.actual_bytes:,}; download it again (`%llm pull NAME --force`)"
        )
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if info.architecture not in supported:
        raise LLMOSError(
            f"GGUF architecture '{info.architecture}' is not supported by transformers' GGUF loader; "
            f"supported: {', '.join(supported)}"
        )
    return info
