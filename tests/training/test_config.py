"""FinetuneConfig validation: every bad value is one UsageError line naming the option and the fix."""

from __future__ import annotations

import pytest

from llmos_jupyter.errors import UsageError
from llmos_jupyter.training import FinetuneConfig


@pytest.mark.parametrize(
    "kw, option, fix",
    [
        ({"epochs": 0}, "epochs", "--epochs 1"),
        ({"epochs": 1.5}, "epochs", "--epochs 1"),
        ({"epochs": True}, "epochs", "--epochs 1"),
        ({"batch_size": 0}, "batch_size", "--batch-size 32"),
        ({"max_length": -4}, "max_length", "--max-length 128"),
        ({"grad_accum": 0}, "grad_accum", "--grad-accum 1"),
        ({"lr": 0}, "lr", "--lr 5e-5"),
        ({"lr": float("nan")}, "lr", "--lr 5e-5"),
        ({"seed": -1}, "seed", "--seed 0"),
        ({"seed": 2**32}, "seed", "--seed 0"),
        ({"weight_decay": -0.1}, "weight_decay", "--weight-decay 0.01"),
        ({"warmup_ratio": 1.0}, "warmup_ratio", "--warmup-ratio 0.06"),
        ({"max_grad_norm": 0}, "max_grad_norm", "--max-grad-norm 1.0"),
        ({"eval_every": 0}, "eval_every", "--eval-every 50, or leave it out"),
        ({"max_steps": 0}, "max_steps", "--max-steps 50, or leave it out"),
        ({"lora_r": 0}, "lora_r", "--lora-r 8"),
        ({"lora_alpha": 0}, "lora_alpha", "--lora-alpha 16"),
        ({"lora_dropout": 1.0}, "lora_dropout", "--lora-dropout 0.05"),
        ({"method": "qlora"}, "method", "full, lora"),
        ({"task": "seq_cls"}, "task", "seq-cls"),
        ({"lr_scheduler": "cosine"}, "lr_scheduler", "linear, constant"),
        ({"method": "lora", "target_modules": []}, "target_modules", "['query', 'value']"),
        ({"target_modules": ["query"]}, "target_modules", "method='lora'"),
    ],
)
def test_bad_value_is_one_line_naming_option_and_fix(kw, option, fix):
    """The message names the keyword and the magic's flag; the fix is given as a flag."""
    with pytest.raises(UsageError) as e:
        FinetuneConfig(**kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(option + "=")
    assert fix in msg


def test_close_match_for_a_misspelt_choice():
    with pytest.raises(UsageError, match=r"did you mean: seq-cls"):
        FinetuneConfig(task="seq_cls")


def test_defaults_and_round_trip():
    cfg = FinetuneConfig()
    d = cfg.to_dict()
    assert d["epochs"] == 1 and d["lr"] == 5e-5 and d["batch_size"] == 32 and d["max_length"] == 128
    assert d["seed"] == 0 and d["weight_decay"] == 0.01 and d["warmup_ratio"] == 0.06 and d["grad_accum"] == 1
    assert d["method"] == "full" and d["lora_r"] == 8 and d["lora_alpha"] == 16 and d["lora_dropout"] == 0.05
    assert d["task"] == "seq-cls" and d["eval_every"] is None and d["target_modules"] is None
    assert FinetuneConfig.from_dict(d) == cfg
    with pytest.raises(UsageError, match=r"unknown fine-tuning option 'learning_rate'"):
        FinetuneConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(UsageError, match=r"did you mean: epochs"):
        FinetuneConfig.from_dict({"epoch": 2})


def test_default_lora_targets_per_architecture():
    cfg = FinetuneConfig(method="lora")
    assert cfg.resolve_target_modules("bert") == ["query", "value"]
    assert cfg.resolve_target_modules("llama") == ["q_proj", "v_proj"]
    assert FinetuneConfig(method="lora", target_modules=("dense",)).resolve_target_modules("bert") == ["dense"]
    with pytest.raises(UsageError, match=r"model_type 'mamba9000'.*target_modules="):
        cfg.resolve_target_modules("mamba9000")


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys; import llmos_jupyter.training as t; import llmos_jupyter.widgets.progress; "
        "t.FinetuneConfig(epochs=2); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=__file__.rsplit("/tests/", 1)[0]
    )
    assert out.stdout.strip() == "[]"
