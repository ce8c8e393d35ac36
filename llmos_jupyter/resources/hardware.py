"""Hardware: GPUs through NVML (nvidia-ml-py), CPU and RAM through psutil; device/dtype choice.

With no GPU or no NVML everything degrades to the CPU without errors.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def _nvml():
    try:
        import pynvml  # provided by nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no library, no GPU: the CPU path
        return None


def gpus() -> list[dict]:
    """Per-GPU readings from NVML.

    Returns:
        A list of ``{"index", "name", "mem_total", "mem_used" (bytes), "util" (%),
        "temperature" (°C), "power_w" (W)}``; ``[]`` without NVML.
    """
    nv = _nvml()
    if nv is None:
        return []
    out = []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            name = nv.nvmlDeviceGetName(h)
            entry = {
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "mem_total": int(mem.total),
                "mem_used": int(mem.used),
            }
            for key, fn in (
                ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ):
                try:
                    entry[key] = fn()
                except Exception:
                    entry[key] = None
            out.append(entry)
    except Exception:
        return out
    return out


def snapshot() -> dict:
    """CPU, RAM and GPU readings: ``{"cpu_percent", "cpu_count", "ram_used", "ram_total",
    "ram_available", "process_rss" (bytes), "gpus": [...]}``."""
    import psutil

    vm = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": os.cpu_count(),
        "ram_used": int(vm.total - vm.available),
        "ram_total": int(vm.total),
        "ram_available": int(vm.available),
        "process_rss": int(psutil.Process().memory_info().rss),
        "gpus": gpus(),
    }


DTYPES = ("float32", "float16", "bfloat16")
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "half": "float16"}


def check_dtype(dtype: str | None) -> str | None:
    """``dtype`` as one of :data:`DTYPES` (``fp16`` → ``float16``), or None/``auto`` for the
    automatic choice.

    Raises:
        UsageError: any other name (one line listing the dtypes).
    """
    from ..errors import UsageError, close_matches, opt

    if dtype is None or dtype == "auto":
        return None
    name = DTYPE_NAMES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise UsageError(
            f"unknown dtype '{dtype}'{close_matches(str(dtype), DTYPES + tuple(DTYPE_NAMES))}; "
            f"use {opt('dtype', 'float32')}, float16 or bfloat16 (or leave it out: float32 on the cpu, "
            f"bfloat16/float16 on a GPU)"
        )
    return name


def devices() -> list[str]:
    """The devices torch can use here: ``["cpu", "cuda:0", ...]`` (``mps`` on Apple silicon)."""
    import torch

    out = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device: str | None) -> str | None:
    """``device`` checked against :func:`devices` (``cuda`` → ``cuda:0``), or None/``auto``.

    Raises:
        UsageError: a device this machine does not have, or an unknown name (one line listing
            the devices there are).
    """
    from ..errors import UsageError, opt

    if device is None or device == "auto":
        return None
    name = str(device).strip().lower()
    name = "cuda:0" if name in ("cuda", "gpu") else name
    have = devices()
    if name in have:
        return name
    import torch

    if name.startswith("cuda"):
        if not any(d.startswith("cuda") for d in have):
            why = "this torch has no CUDA support" if torch.version.cuda is None else "torch sees no CUDA GPU"
        else:
            why = f"there is no {name}"
        raise UsageError(
            f"{opt('device', device)}: {why}; devices here: {', '.join(have)} — use "
            f"{opt('device', have[-1])} or leave it out"
        )
    raise UsageError(f"unknown device '{device}'; devices here: {', '.join(have)} (cpu, cuda:N or mps)")


def choose_device_dtype(device: str | None = None, dtype: str | None = None) -> tuple[str, str]:
    """Pick ``(device, dtype)`` for a load unless the user fixed them.

    Rule: CUDA available → ``cuda:0`` with bfloat16 on compute capability ≥ 8 (Ampere and
    later), float16 below; otherwise ``cpu`` with float32. Imports torch (call only on load).

    Raises:
        UsageError: an unknown dtype, or a device this machine does not have
            (:func:`check_dtype`, :func:`check_device`).
    """
    import torch

    device, dtype = check_device(device), check_dtype(dtype)
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        if device.startswith("cuda"):
            major, _ = torch.cuda.get_device_capability(torch.device(device))
            dtype = "bfloat16" if major >= 8 else "float16"
        else:
            dtype = "float32"
    return device, dtype


def summary() -> dict:
    """Small hardware summary for run manifests: platform, CPU count, RAM, GPU names."""
    import psutil

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "ram_total": int(psutil.virtual_memory().total),
        "gpus": [g["name"] for g in gpus()],
    }
