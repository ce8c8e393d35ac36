"""Live progress of a training run, with a static fallback that survives saved notebooks.

:class:`TrainingProgress` is the ``callback`` object that ``finetune`` calls
(``on_begin`` / ``on_step`` / ``on_eval`` / ``on_end``). What it shows depends on where it runs:

- a Jupyter kernel with ipywidgets ("widget"): a progress bar, a step · loss · lr · samples/s ·
  ETA line, a loss curve (inline SVG) and an eval table, redrawn at most ``1 / min_interval_s``
  times a second (default 4/s) however fast the steps come;
- a kernel without ipywidgets ("html"): the same content as HTML, updated in place;
- a terminal or a script ("text"): one line every ``text_interval_s`` seconds, plus the
  evaluations and the end.

In the kernel modes everything lives in one output made with
``IPython.display.display(..., display_id=True)``; at the end it is replaced
(``DisplayHandle.update``) by static HTML of the final state (table, eval results and the loss
curve as a PNG drawn with matplotlib) plus a text/plain version, so a saved or nbconvert-ed
notebook shows the outcome rather than a dead widget. The widgets are closed afterwards.

All methods are thread-safe (one lock) and cheap when throttled, so a background job thread may
drive it. The display is created when the object is built, in the caller's thread (the cell), so
it lands in the cell that started the run; later updates are routed by display id.

No torch / transformers import: results are read by attribute (duck typing).
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
import threading
import time
from typing import Any, Optional, TextIO

from ..resources.memory import format_size

MODES = ("auto", "widget", "html", "text", "none")
MAX_CURVE_POINTS = 400  # the live SVG curve is downsampled to this many points (cheap to redraw)


def detect_mode() -> str:
    """ "widget" in a Jupyter kernel with ipywidgets, "html" in a kernel without, else "text"."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return "text"
    ip = get_ipython()
    if ip is None or getattr(ip, "kernel", None) is None:
        return "text"
    try:
        import ipywidgets  # noqa: F401  (is it installed?)
    except ImportError:
        return "html"
    return "widget"


def _fmt_s(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _fmt_num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _downsample(xs: list[float], ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """At most ``n`` points: means of equal-sized buckets."""
    if len(xs) <= n:
        return xs, ys
    k = math.ceil(len(xs) / n)
    return (
        [sum(xs[i : i + k]) / len(xs[i : i + k]) for i in range(0, len(xs), k)],
        [sum(ys[i : i + k]) / len(ys[i : i + k]) for i in range(0, len(ys), k)],
    )


def loss_svg(steps: list[float], losses: list[float], width: int = 420, height: int = 120) -> str:
    """The loss curve as an inline SVG polyline (no matplotlib: cheap enough to redraw 4×/s)."""
    pts = [(s, v) for s, v in zip(steps, losses) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return ""
    xs, ys = _downsample([p[0] for p in pts], [p[1] for p in pts], MAX_CURVE_POINTS)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad = 28
    sx = (width - pad - 6) / ((x1 - x0) or 1)
    sy = (height - 22) / ((y1 - y0) or 1)
    path = " ".join(f"{pad + (x - x0) * sx:.1f},{6 + (y1 - y) * sy:.1f}" for x, y in zip(xs, ys))
    return (
        f"<svg width='{width}' height='{height}' role='img' aria-label='training loss curve'>"
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{path}'/>"
        f"<text x='0' y='12' font-size='10'>{y1:.3f}</text><text x='0' y='{height - 14}' font-size='10'>{y0:.3f}</text>"
        f"<text x='{pad}' y='{height - 2}' font-size='10'>step {x0:g}</text>"
        f"<text x='{width - 60}' y='{height - 2}' font-size='10'>step {x1:g}</text></svg>"
    )


def loss_png(steps: list[float], losses: list[float]) -> Optional[str]:
    """The loss curve as a base64 PNG drawn with matplotlib (no pyplot, no global backend change);
    None when matplotlib is missing or there are fewer than 2 points."""
    if len(steps) < 2:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig = Figure(figsize=(5.0, 2.2), dpi=100)
    ax = fig.subplots()
    ax.plot(steps, losses, lw=1.0, color="#1f77b4", label="train loss")
    if len(steps) >= 20:  # exponential moving average, to see the trend through the noise
        ema, acc = [], losses[0]
        for loss in losses:
            acc = 0.9 * acc + 0.1 * loss
            ema.append(acc)
        ax.plot(steps, ema, lw=1.5, color="#d62728", label="EMA 0.9")
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


class TrainingProgress:
    """Progress display and record of one training run; pass it as ``finetune(callback=...)``.

    Args:
        title: shown above the bar (the run id is appended when known).
        mode: "auto" (see :func:`detect_mode`), "widget", "html", "text" or "none" (record only).
        min_interval_s: least seconds between two live redraws (default 0.25, i.e. ≤ 4/s).
        text_interval_s: least seconds between two progress lines in "text" mode (default 10).
        stream: where "text" mode writes (default ``sys.stdout`` at the time of writing).

    After the run, ``status``, ``steps``, ``losses``, ``evals`` and ``result`` hold what was
    reported, ``renders`` counts live redraws, and the object displays as the final state.
    """

    def __init__(
        self,
        title: str = "fine-tune",
        *,
        mode: str = "auto",
        min_interval_s: float = 0.25,
        text_interval_s: float = 10.0,
        stream: Optional[TextIO] = None,
    ):
        if mode not in MODES:
            from ..errors import UsageError

            raise UsageError(f"mode={mode!r} is not a progress mode; use one of: {', '.join(MODES)}")
        self.title = title
        self.mode = detect_mode() if mode == "auto" else mode
        self.min_interval_s = float(min_interval_s)
        self.text_interval_s = float(text_interval_s)
        self._stream = stream
        self._lock = threading.RLock()
        self.run_id: Optional[str] = None
        self.total_steps = 0
        self.total_samples = 0
        self.step = 0
        self.status = "waiting"
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.lr: Optional[float] = None
        self.samples_per_s: Optional[float] = None
        self.eta_s: Optional[float] = None
        self.evals: list[dict[str, Any]] = []
        self.result: Any = None
        self.renders = 0
        self._last_render = 0.0
        self._last_text = 0.0
        self._t0 = time.monotonic()
        self._handle: Any = None
        self._w: dict[str, Any] = {}
        self._closed = False
        if self.mode in ("widget", "html"):
            self._open_display()

    # ------------------------------------------------------------------ callback API
    def on_begin(self, total_steps: int, total_samples: int, run_id: Optional[str] = None) -> None:
        """The run starts: ``total_steps`` optimizer steps over ``total_samples`` rows."""
        with self._lock:
            self.total_steps, self.total_samples, self.run_id = int(total_steps), int(total_samples), run_id
            self.status = "running"
            self._t0 = time.monotonic()
            self._render(force=True)
            if self.mode == "text":
                self._print(f"{self._title()}: {self.total_steps} steps, {self.total_samples} samples")

    def on_step(self, step: int, loss: float, lr: float, samples_per_s: float, eta_s: float) -> None:
        """Optimizer step ``step`` (1-based) finished with mean train ``loss`` (nats per row) at
        learning rate ``lr``; throughput so far ``samples_per_s``; ``eta_s`` seconds left.
        Recorded every time; redrawn at most every ``min_interval_s``."""
        with self._lock:
            self.step = int(step)
            self.loss_steps.append(int(step))
            self.losses.append(float(loss))
            self.lr, self.samples_per_s, self.eta_s = float(lr), float(samples_per_s), float(eta_s)
            self._render()
            if self.mode == "text":
                now = time.monotonic()
                if now - self._last_text >= self.text_interval_s:
                    self._last_text = now
                    self._print(self._line())

    def on_eval(self, step: int, epoch: float, metrics: dict[str, Any]) -> None:
        """An evaluation at ``step`` (``epoch`` fractional) gave ``metrics``; always redrawn."""
        with self._lock:
            self.evals.append({"step": int(step), "epoch": float(epoch), **dict(metrics)})
            self._render(force=True)
            if self.mode == "text":
                self._print(
                    f"eval at step {step} (epoch {epoch:.2f}): "
                    + ", ".join(f"{k} {_fmt_num(v)}" for k, v in metrics.items())
                )

    def on_end(self, status: str, result: Any = None) -> None:
        """The run ended with ``status`` ("completed", "interrupted", "failed"); ``result`` is the
        FinetuneResult (None on failure). The live view is replaced by the static final state."""
        with self._lock:
            self.status, self.result = status, result
            if result is not None:
                self.step = int(getattr(result, "steps", self.step))
                self.samples_per_s = getattr(result, "samples_per_s", self.samples_per_s)
            if self.mode in ("widget", "html") and self._handle is not None:
                self._handle.update(self._final_bundle(), raw=True)
                self._close_widgets()
            elif self.mode == "text":
                self._print(self._final_text())

    # ------------------------------------------------------------------ display
    def _open_display(self) -> None:
        from IPython.display import display

        if self.mode == "widget":
            import ipywidgets as W

            self._w = {
                "title": W.HTML(value=f"<b>{html.escape(self._title())}</b>"),
                "bar": W.IntProgress(value=0, min=0, max=1, bar_style="info", layout=W.Layout(width="420px")),
                "line": W.HTML(value="waiting…"),
                "curve": W.HTML(value=""),
                "evals": W.HTML(value=""),
            }
            box = W.VBox(list(self._w.values()))
            self._w["box"] = box
            bundle = {
                "application/vnd.jupyter.widget-view+json": {
                    "version_major": 2,
                    "version_minor": 0,
                    "model_id": box.model_id,
                },
                "text/plain": f"{self._title()}: waiting",
            }
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle = display(self._live_bundle(), raw=True, display_id=True)

    def _render(self, force: bool = False) -> None:
        if self.mode not in ("widget", "html") or self._handle is None or self._closed:
            return
        now = time.monotonic()
        if not force and now - self._last_render < self.min_interval_s:
            return
        self._last_render = now
        self.renders += 1
        if self.mode == "widget":
            w = self._w
            w["title"].value = f"<b>{html.escape(self._title())}</b>"
            w["bar"].max = max(1, self.total_steps)
            w["bar"].value = min(self.step, w["bar"].max)
            w["line"].value = html.escape(self._line())
            w["curve"].value = loss_svg(self.loss_steps, self.losses)
            w["evals"].value = self._evals_html()
        else:
            self._handle.update(self._live_bundle(), raw=True)

    def _close_widgets(self) -> None:
        self._closed = True
        for w in self._w.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - a closed comm is fine
                pass
        self._w = {}

    def _print(self, line: str) -> None:
        print(line, file=self._stream or sys.stdout, flush=True)

    # ------------------------------------------------------------------ content
    def _title(self) -> str:
        return f"{self.title} {self.run_id}" if self.run_id else self.title

    def _line(self) -> str:
        loss = f"{self.losses[-1]:.4f}" if self.losses else "-"
        parts = [f"step {self.step}/{self.total_steps}", f"loss {loss}"]
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:.1f} samples/s")
        if self.status == "running":
            parts.append(f"ETA {_fmt_s(self.eta_s)}")
        return " · ".join(parts)

    def _evals_html(self) -> str:
        if not self.evals:
            return ""
        keys = [k for k in self.evals[-1] if k not in ("step", "epoch")]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", "epoch", *keys])
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(_fmt_num(e.get(k)) if k != 'epoch' else f'{e[k]:.2f}')}</td>"
                for k in ["step", "epoch", *keys]
            )
            + "</tr>"
            for e in self.evals
        )
        return f"<table><caption>evaluation</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _live_bundle(self) -> dict[str, str]:
        pct = 100.0 * self.step / self.total_steps if self.total_steps else 0.0
        bar = f"<progress max='100' value='{pct:.1f}' style='width:420px'></progress>"
        curve = loss_svg(self.loss_steps, self.losses)
        title, line = html.escape(self._title()), html.escape(self._line())
        body = f"<b>{title}</b><br>{bar}<br>{line}<br>{curve}{self._evals_html()}"
        return {
            "text/plain": f"{self._title()}: {self._line()}",
            "text/html": f"<div class='llmos-progress'>{body}</div>",
        }

    def _summary_rows(self) -> list[tuple[str, str]]:
        r = self.result
        rows = [("status", self.status), ("steps", f"{self.step}/{self.total_steps}")]
        if r is not None:
            rows.append(("epochs", f"{getattr(r, 'epochs', 0):.2f}"))
        if self.losses:
            rows.append(("final train loss", f"{self.losses[-1]:.4f}"))
        if self.samples_per_s is not None:
            rows.append(("samples/s", f"{self.samples_per_s:.2f}"))
        wall = getattr(r, "wall_s", None) if r is not None else time.monotonic() - self._t0
        rows.append(("wall time", _fmt_s(wall)))
        if r is not None:
            rows.append(
                (
                    "peak memory",
                    format_size(getattr(r, "peak_device_bytes", None) or getattr(r, "peak_rss_bytes", None) or None),
                )
            )
            for k, v in (getattr(r, "metrics", None) or {}).items():
                rows.append((f"eval {k}", _fmt_num(v)))
            if getattr(r, "checkpoint", None):
                rows.append(("checkpoint", str(r.checkpoint)))
                rows.append(("sha256", str(getattr(r, "checkpoint_sha256", ""))))
        return rows

    def _final_text(self) -> str:
        rows = self._summary_rows()
        w = max(len(k) for k, _ in rows)
        lines = [f"{self._title()}: {self.status}"] + [f"  {k:<{w}}  {v}" for k, v in rows[1:]]
        for e in self.evals:
            lines.append(
                f"  eval step {e['step']}: "
                + ", ".join(f"{k} {_fmt_num(v)}" for k, v in e.items() if k not in ("step", "epoch"))
            )
        return "\n".join(lines)

    def _final_html(self) -> str:
        e = html.escape
        color = {"completed": "#2ca02c", "interrupted": "#ff7f0e", "failed": "#d62728"}.get(self.status, "#555")
        head = f"<b>{e(self._title())}</b> <span style='color:{color};font-weight:bold'>{e(self.status)}</span>"
        table = "".join(
            f"<tr><th style='text-align:left'>{e(k)}</th><td style='text-align:left'>{e(v)}</td></tr>"
            for k, v in self._summary_rows()[1:]
        )
        png = loss_png(self.loss_steps, self.losses)
        curve = (
            f"<img alt='training loss curve' src='data:image/png;base64,{png}'/>"
            if png
            else loss_svg(self.loss_steps, self.losses)
        )
        return f"<div class='llmos-progress'>{head}<table>{table}</table>{curve}{self._evals_html()}</div>"

    def _final_bundle(self) -> dict[str, str]:
        return {"text/plain": self._final_text(), "text/html": self._final_html()}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        with self._lock:
            return self._final_bundle()

    def __repr__(self) -> str:
        return f"<TrainingProgress {self._title()!r} {self.status} step {self.step}/{self.total_steps}>"
