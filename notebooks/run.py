"""Execute notebooks headless with a real kernel (nbclient) and print what they report.

    python notebooks/run.py notebooks/01_quickstart.ipynb [--out artifacts/] [--timeout 3600]

Each executed notebook is saved next to ``--out`` with its outputs (widgets' static HTML
included), so it can be opened afterwards. Lines a notebook prints that start with ``RESULT``
are echoed here. Exit status 1 if any cell raised.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def run(path: Path, out_dir: Path, timeout: int) -> bool:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    order = {id(c): i for i, c in enumerate(c for c in nb.cells if c.cell_type == "code")}

    def started(cell, cell_index, **_):  # one line per code cell, so a long run shows where it is
        if cell.cell_type != "code":
            return
        first = next((line for line in cell.source.splitlines() if line.strip()), "")[:70]
        print(f"[{time.perf_counter() - t0:6.0f} s] cell {order.get(id(cell), 0) + 1}/{n_code}: {first}", flush=True)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            on_cell_start=started)
    ok = True
    try:
        client.execute()
    except CellExecutionError as e:
        ok = False
        print(f"{path.name}: a cell failed:\n{str(e)[:3000]}", file=sys.stderr)
    wall = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name.replace(".ipynb", ".executed.ipynb"))
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            text = o.get("text", "") if o.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith("RESULT"):
                    print(line)
    print(f"{path.name}: {'ok' if ok else 'FAILED'} in {wall:.0f} s → {out_dir / path.name.replace('.ipynb', '.executed.ipynb')}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("artifacts"))
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args()
    results = [run(p, args.out, args.timeout) for p in args.notebooks]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
