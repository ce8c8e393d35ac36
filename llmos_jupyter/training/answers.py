"""Score a causal LM as an instruction follower: greedy answers to prompts, compared with the
expected short responses (e.g. ``Review: …\\nSentiment:`` → ``positive`` / ``negative``).

Each prompt is rendered as :func:`~.sft.render_pair` renders it for fine-tuning (the user turn of
the chat template plus the generation prompt), so the model is asked exactly the way it was
trained. Answers are generated greedily (``do_sample=False``), batched with left padding.

Matching (strict, like exact-match scoring in SQuAD-style evaluation, after normalising case and
punctuation): an answer and an expected response are split into lowercase words (runs of letters
and digits); the answer is *correct* when its first k words are the expected response's k words.
"The sentiment is positive" is therefore wrong for "positive": the model must answer with the
label. The answer's *choice* is the longest distinct expected response that prefixes it, else
``other``; accuracy, macro-F1 and the confusion matrix are computed over the choices
(:func:`~.evaluate.classification_metrics`, the ``other`` column counting as wrong).
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import UsageError
from .batching import as_text, check_columns, pad_id_for
from .evaluate import classification_metrics
from .sft import render_pair

OTHER = "other"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> tuple[str, ...]:
    """Lowercase words (runs of letters/digits) of ``text``: ``" Positive."`` → ``("positive",)``."""
    return tuple(w.lower() for w in _WORD.findall(text or ""))


def match_choice(answer: str, choices: list[tuple[str, ...]]) -> int:
    """Index of the longest choice whose words begin ``answer``'s words, or -1 (``other``)."""
    a = words(answer)
    best, best_len = -1, -1
    for i, c in enumerate(choices):
        if c and a[: len(c)] == c and len(c) > best_len:
            best, best_len = i, len(c)
    return best


@dataclass
class AnswerEvalResult:
    """What :func:`evaluate_answers` measured (plain Python numbers, JSON-safe).

    Attributes:
        accuracy: correct answers / n, in [0, 1].
        macro_f1: mean F1 over the expected responses (``other`` never counts as right).
        valid: share of answers that begin with one of the expected responses, in [0, 1].
        n: rows scored. choices: the distinct expected responses (normalised words joined by " ").
        per_class: label, precision, recall, f1, support per choice.
        confusion: ``(C, C+1)`` counts, rows = expected, columns = answered (last: ``other``).
        answers: the generated answer text of every row (dataset order).
        mistakes: up to ``max_mistakes`` wrong rows: row, prompt, expected, answer.
        max_new_tokens: the generation limit used. wall_s: seconds, tokenisation included.
    """

    accuracy: float
    macro_f1: float
    valid: float
    n: int
    choices: list[str]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    answers: list[str] = field(repr=False)
    mistakes: list[dict[str, Any]] = field(repr=False)
    max_new_tokens: int = 0
    wall_s: float = 0.0

    def to_metrics(self) -> dict[str, Any]:
        """Headline numbers for registries and manifests: accuracy, macro_f1, valid, n."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "valid": self.valid, "n": self.n}

    def to_dict(self) -> dict[str, Any]:
        """Everything except the answers, JSON-serialisable."""
        return dict(
            self.to_metrics(),
            choices=self.choices,
            per_class=self.per_class,
            confusion=self.confusion,
            mistakes=self.mistakes,
            max_new_tokens=self.max_new_tokens,
            wall_s=self.wall_s,
        )

    def __str__(self) -> str:
        cols = self.choices + [OTHER]
        w = max([len(c) for c in cols] + [8])
        lines = [
            f"greedy answers: accuracy {self.accuracy:.4f} · macro_f1 {self.macro_f1:.4f} · "
            f"valid {self.valid:.4f} · n {self.n} · max_new_tokens {self.max_new_tokens}",
            "confusion (rows = expected, columns = answered):",
            f"{'':<{w}}  " + " ".join(f"{c[:8]:>8}" for c in cols),
        ]
        for name, row in zip(self.choices, self.confusion):
            lines.append(f"{name:<{w}}  " + " ".join(f"{c:8d}" for c in row))
        for m in self.mistakes[:5]:
            lines.append(f"  row {m['row']}: expected {m['expected']!r}, answered {m['answer'][:40]!r}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        cols = self.choices + [OTHER]
        head = (
            f"<p><b>greedy answers</b>: <b>accuracy</b> {self.accuracy:.4f} &middot; <b>macro_f1</b> "
            f"{self.macro_f1:.4f} &middot; <b>valid</b> {self.valid:.4f} &middot; <b>n</b> {self.n}</p>"
        )
        cm = (
            "<table><caption>rows = expected, columns = answered</caption><thead><tr><th></th>"
            + "".join(f"<th>{e(c)}</th>" for c in cols)
            + "</tr></thead><tbody>"
            + "".join(
                f"<tr><th>{e(n)}</th>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                for n, row in zip(self.choices, self.confusion)
            )
            + "</tbody></table>"
        )
        wrong = ""
        if self.mistakes:
            wrong = (
                "<table><caption>wrong answers</caption><thead><tr><th>row</th><th>expected</th><th>answer</th>"
                "<th>prompt</th></tr></thead><tbody>"
                + "".join(
                    f"<tr><td>{m['row']}</td><td>{e(m['expected'])}</td><td>{e(m['answer'][:80])}</td>"
                    f"<td style='text-align:left'>{e(m['prompt'][:200])}</td></tr>"
                    for m in self.mistakes
                )
                + "</tbody></table>"
            )
        return f"<div class='llmos-eval'>{head}{cm}{wrong}</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": str(self), "text/html": self._repr_html_()}


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16, max_length: int = 512
) -> list[str]:
    """Greedy answers to ``prompts`` (rendered as for fine-tuning), in order.

    Args:
        prompts: ``n`` user messages. max_new_tokens: generation limit per answer.
        batch_size: prompts per ``generate`` call (left-padded, longest first).
        max_length: prompt tokens kept; longer prompts lose their *beginning* (the question at
            the end stays).

    Returns:
        ``n`` decoded answers, special tokens removed. The model is left in eval mode.
    """
    import torch

    from ..models.loading import quiet_transformers

    templated = bool(getattr(tokenizer, "chat_template", None))
    rendered = [render_pair(tokenizer, p, "")[0] for p in prompts]
    ids = tokenizer(rendered, add_special_tokens=not templated, return_attention_mask=False)["input_ids"]
    ids = [list(x)[-max_length:] for x in ids]
    pad = pad_id_for(tokenizer, getattr(model, "config", None))
    device = next(model.parameters()).device
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out: list[Optional[str]] = [None] * len(ids)
    model.eval()
    with torch.inference_mode(), quiet_transformers():
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            L = max(len(ids[i]) for i in rows)
            x = torch.full((len(rows), L), pad, dtype=torch.long)  # (B, L), left-padded
            mask = torch.zeros((len(rows), L), dtype=torch.long)
            for j, i in enumerate(rows):
                x[j, L - len(ids[i]) :] = torch.tensor(ids[i])
                mask[j, L - len(ids[i]) :] = 1
            gen = model.generate(
                input_ids=x.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
            for j, i in enumerate(rows):
                out[i] = tokenizer.decode(gen[j, L:], skip_special_tokens=True)
    return [a or "" for a in out]


def engine_answers(engine: Any, prompts: list[str], *, max_new_tokens: int, max_length: int = 512) -> list[str]:
    """Greedy answers to ``prompts`` from an inference engine (llama.cpp or transformers, see
    :mod:`llmos_jupyter.models.engines`), one prompt at a time, rendered with the engine's chat
    template exactly as :func:`~.sft.render_pair` renders them for fine-tuning (the user turn
    and the generation prompt); prompts keep their last ``max_length`` tokens.

    Returns:
        ``n`` answers (special tokens never in the text).
    """
    from ..models.engines.base import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    out = []
    for p in prompts:
        text = engine.render_chat([{"role": "user", "content": p}]) if engine.chat_template else p
        ids = engine.tokenize(text, add_special_tokens=not engine.chat_template)
        if len(ids) > max_length:
            text = engine.detokenize(ids[-max_length:])
        out.append(engine.generate(text, settings, add_special_tokens=False)[0])
    return out


def evaluate_answers(
    model: Any,
    tokenizer: Any,
    ds: Any,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    batch_size: int = 16,
    max_new_tokens: Optional[int] = None,
    max_length: int = 512,
    max_mistakes: int = 10,
    engine: Any = None,
) -> AnswerEvalResult:
    """Greedy answers of a causal LM to the prompts of ``ds``, scored against its responses.

    Args:
        model, tokenizer: a transformers (or peft) causal LM and its tokenizer; with ``engine``
            both may be None.
        engine: answer with this inference engine instead (e.g. the llama.cpp engine serving an
            alias; :func:`engine_answers`), so both engines are scored by the same rules.
        ds: ``datasets.Dataset`` with ``prompt_column`` and ``response_column`` (short answers:
            labels such as ``positive``/``negative``).
        batch_size: prompts per ``generate`` call (default 16).
        max_new_tokens: default: tokens of the longest expected response + 3.
        max_length: prompt tokens kept (default 512; see :func:`generate_answers`).
        max_mistakes: wrong rows kept for the report.

    Returns:
        :class:`AnswerEvalResult` (matching rules in the module docstring).

    Raises:
        NotFoundError: unknown column. UsageError: no rows, or responses with no words.
    """
    t0 = time.perf_counter()
    check_columns(ds, [prompt_column, response_column], "dataset")
    prompts = [as_text(v) for v in ds[prompt_column]]
    expected = [words(as_text(v)) for v in ds[response_column]]
    if not prompts:
        raise UsageError("the dataset has no rows to evaluate; pick a split with rows")
    if not all(expected):
        raise UsageError("some responses have no words to match an answer against; clean the response column first")
    choices = sorted(set(expected))
    if max_new_tokens is None:

        def count(t):
            return len(
                engine.tokenize(t, add_special_tokens=False)
                if engine is not None
                else tokenizer(t, add_special_tokens=False)["input_ids"]
            )

        max_new_tokens = max(count(" " + " ".join(c)) for c in choices) + 3
    if engine is not None:
        answers = engine_answers(engine, prompts, max_new_tokens=max_new_tokens, max_length=max_length)
    else:
        answers = generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length
        )
    y = np.array([choices.index(e) for e in expected], dtype=np.int64)
    p = np.array([match_choice(a, choices) for a in answers], dtype=np.int64)
    C = len(choices)
    p_cls = np.where(p < 0, C, p)  # "other" is class C
    m = classification_metrics(y, p_cls, C + 1)
    per_class = [
        {
            "label": " ".join(c),
            "precision": m["precision"][i],
            "recall": m["recall"][i],
            "f1": m["f1"][i],
            "support": m["support"][i],
        }
        for i, c in enumerate(choices)
    ]
    f1 = np.asarray(m["f1"][:C])
    cm = np.asarray(m["confusion"])  # (C+1, C+1), rows = expected
    present = [i for i in range(C) if cm[i].sum() > 0 or cm[:, i].sum() > 0]  # expected or answered
    wrong = np.nonzero(p != y)[0]
    mistakes = [
        {"row": int(i), "prompt": prompts[i], "expected": " ".join(expected[i]), "answer": answers[i]}
        for i in wrong[:max_mistakes]
    ]
    return AnswerEvalResult(
        accuracy=float((p == y).mean()),
        macro_f1=float(f1[present].mean()) if present else 0.0,
        valid=float((p >= 0).mean()),
        n=len(prompts),
        choices=[" ".join(c) for c in choices],
        per_class=per_class,
        confusion=[row[: C + 1] for row in m["confusion"][:C]],
        answers=answers,
        mistakes=mistakes,
        max_new_tokens=int(max_new_tokens),
        wall_s=time.perf_counter() - t0,
    )
