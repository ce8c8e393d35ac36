"""How long `%load_ext llmos_jupyter` takes in a fresh kernel, against a bare kernel start.

    python benchmarks/benchmark_load_ext.py [--repeat 5]

Starts real ipykernels (jupyter_client), times the execution of `%load_ext llmos_jupyter`
(round trip from execute request to idle) and, for scale, of `pass` in the same kernel;
prints the median of each, their ratio, and whether torch/transformers were imported.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import time

from jupyter_client.manager import start_new_kernel


def timed(kc, code: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    out = ""
    while True:
        try:
            m = kc.get_iopub_msg(timeout=30)
        except queue.Empty:
            raise TimeoutError(code)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "stream":
            out += m["content"]["text"]
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    load, bare, heavy = [], [], None
    for _ in range(args.repeat):
        km, kc = start_new_kernel(kernel_name="python3")
        try:
            bare.append(timed(kc, "pass")[0])
            load.append(timed(kc, "%load_ext llmos_jupyter")[0])
            _, out = timed(
                kc,
                "import sys, json; print(json.dumps([m for m in ('torch','transformers','datasets') if m in "
                "sys.modules]))",
            )
            heavy = json.loads(out.strip().splitlines()[-1])
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    ml, mb = statistics.median(load), statistics.median(bare)
    print(f"{'what':<28}{'median s':>10}")
    print(f"{'pass (round trip)':<28}{mb:>10.4f}")
    print(f"{'%load_ext llmos_jupyter':<28}{ml:>10.4f}")
    print(f"ratio load_ext / pass: {ml / mb:.1f}x over {args.repeat} fresh kernels; heavy modules imported: {heavy}")


if __name__ == "__main__":
    main()
