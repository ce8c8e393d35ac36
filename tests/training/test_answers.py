"""Greedy-answer scoring of a causal LM (training/answers.py) and `%llm eval --generate`."""

from __future__ import annotations

import pytest

from llmos_jupyter.training.answers import match_choice, words


@pytest.mark.parametrize(
    "answer, expected",
    [
        (" Positive.", 1),
        ("positive", 1),
        ("NEGATIVE!", 0),
        ("negative review", 0),
        ("The sentiment is positive", -1),
        ("", -1),
        ("pos", -1),
        ("very positive", 2),
        ("very", -1),
    ],
)
def test_match_choice_takes_the_longest_prefix(answer, expected):
    choices = [("negative",), ("positive",), ("very", "positive")]
    assert match_choice(answer, choices) == expected


def test_words_normalise_case_and_punctuation():
    assert words(" Très-BIEN, ok?\n") == ("très", "bien", "ok")


def _pairs_dataset(n=12):
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt": [f"review {i}: great movie" if i % 2 else f"review {i}: awful film" for i in range(n)],
            "response": ["positive" if i % 2 else "negative" for i in range(n)],
        }
    )


def test_evaluate_answers_counts_what_the_model_says(tiny_llama):
    """Scores exactly what greedy generation returns (checked against a plain generate loop)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos_jupyter.training.answers import evaluate_answers

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ds = _pairs_dataset()
    r = evaluate_answers(model, tok, ds, batch_size=5, max_new_tokens=4)
    for i in (0, 7):  # one at a time, unpadded, must give the same answer as the left-padded batches
        ids = tok.apply_chat_template(
            [{"role": "user", "content": ds[i]["prompt"]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert r.answers[i] == tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    picks = [match_choice(a, [("negative",), ("positive",)]) for a in r.answers]
    expected = [i % 2 for i in range(len(ds))]
    assert r.n == 12 and r.choices == ["negative", "positive"] and r.max_new_tokens == 4
    assert r.accuracy == sum(p == e for p, e in zip(picks, expected)) / 12
    assert r.valid == sum(p >= 0 for p in picks) / 12
    assert sum(map(sum, r.confusion)) == 12 and len(r.confusion[0]) == 3  # negative, positive, other
    assert len(r.mistakes) == min(10, sum(p != e for p, e in zip(picks, expected)))
    assert "greedy answers: accuracy" in str(r) and "<table>" in r._repr_html_()


def test_sft_teaches_the_answer_words(tiny_llama, tmp_path):
    """After SFT on the same pairs, a tiny model answers with the label word (real training, real scoring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos_jupyter.training import FinetuneConfig, finetune
    from llmos_jupyter.training.answers import evaluate_answers

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ds = _pairs_dataset(16)
    before = evaluate_answers(model, tok, ds)
    res = finetune(
        model,
        tok,
        ds,
        None,
        prompt_column="prompt",
        response_column="response",
        config=FinetuneConfig(task="causal-lm", epochs=40, lr=3e-3, batch_size=8, seed=0),
    )
    after = evaluate_answers(res.model, tok, ds)
    assert before.valid < 0.5 and after.valid == 1.0 and after.accuracy == 1.0


def test_eval_generate_user_errors(fresh_api, tiny_bert, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    fresh_api.load(str(tiny_bert), task="seq-cls", labels=["neg", "pos"], alias="bert")
    fresh_api.data_load([{"text": f"t {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)], name="d")
    fresh_api.data_split("d", test=0.25)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    for line, message in [
        ("eval bert d --generate", "--generate scores a causal-lm"),
        ("eval bert d --max-new-tokens 3", "--max-new-tokens goes with --generate"),
        ("eval bert d --limit 0", "limit must be at least 1"),
    ]:
        ip.run_line_magic("llm", line)
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (line, err)
    r = ip.run_line_magic("llm", "eval bert d --limit 3")
    assert r.n == 3
