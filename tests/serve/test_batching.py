"""Batched decoding on the transformers engine equals decoding each prompt alone.

Prompts of different lengths are left-padded into one ``generate`` with an attention mask; each
row must give exactly the greedy tokens it gives alone (padding that leaks into attention or
positions changes them within a few tokens). Also: per-row ``max_new_tokens``, stop strings and
cancelling one row while the others go on.
"""

from __future__ import annotations

import threading

import pytest

PROMPTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "a gorgeous, witty, seductive movie",
    "great",
    "what is the capital of france? paris. this film was a complete waste of two hours",
]


def _engine(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos_jupyter.models.engines.hf import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return TransformersEngine(model, AutoTokenizer.from_pretrained(path))


def _batch(engine, prompts, settings_list, cancel_after=None):
    from llmos_jupyter.models.engines.hf import BatchRow

    rows, texts = [], [[] for _ in prompts]
    for i, (p, s) in enumerate(zip(prompts, settings_list)):
        ids, st, stats = engine.prepare(p, s)
        cancel = threading.Event()

        def on_piece(text, i=i, cancel=cancel):
            texts[i].append(text)
            if cancel_after is not None and i == cancel_after[0] and len(texts[i]) >= cancel_after[1]:
                cancel.set()

        rows.append(BatchRow(ids, st, stats, on_piece=on_piece, cancel=cancel))
    engine.generate_batch(rows)
    return ["".join(t) for t in texts], [r.stats for r in rows]


@pytest.mark.parametrize("talk", [False, True], ids=["tiny_llama", "no_end_token"])
def test_batched_greedy_equals_one_by_one(tiny_llama, talkative_llama, talk):
    from llmos_jupyter.models.engines.base import GenerationSettings

    engine = _engine(talkative_llama if talk else tiny_llama)
    alone = [engine.generate(p, GenerationSettings(max_new_tokens=24)) for p in PROMPTS]
    texts, stats = _batch(engine, PROMPTS, [GenerationSettings(max_new_tokens=24) for _ in PROMPTS])
    assert texts == [t for t, _ in alone]
    assert [s.completion_tokens for s in stats] == [s.completion_tokens for _, s in alone]
    assert [s.finish_reason for s in stats] == [s.finish_reason for _, s in alone]
    assert [s.prompt_tokens for s in stats] == [s.prompt_tokens for _, s in alone]
    if talk:
        assert all(s.finish_reason == "length" and s.completion_tokens == 24 for s in stats)


def test_rows_keep_their_own_limits_stops_and_cancel(talkative_llama):
    from llmos_jupyter.models.engines.base import GenerationSettings

    engine = _engine(talkative_llama)
    full, _ = engine.generate(PROMPTS[1], GenerationSettings(max_new_tokens=30))
    stop = full[10:13]  # a stop string from inside the greedy answer
    settings = [
        GenerationSettings(max_new_tokens=5),
        GenerationSettings(max_new_tokens=30, stop=(stop,)),
        GenerationSettings(max_new_tokens=30),
    ]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    texts, stats = _batch(engine, prompts, settings, cancel_after=(2, 3))
    assert stats[0].completion_tokens == 5 and stats[0].finish_reason == "length"
    assert texts[0] == engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=5))[0]
    assert texts[1] == full[: full.index(stop)] and stats[1].finish_reason == "stop"
    assert stats[2].finish_reason == "cancelled" and stats[2].completion_tokens < 30


def test_sampling_rows_must_agree(talkative_llama):
    from llmos_jupyter.errors import UsageError
    from llmos_jupyter.models.engines.base import GenerationSettings

    engine = _engine(talkative_llama)
    with pytest.raises(UsageError, match="share temperature"):
        _batch(
            engine,
            PROMPTS[:2],
            [GenerationSettings(max_new_tokens=4), GenerationSettings(max_new_tokens=4, temperature=0.7)],
        )
