"""Tracebacks and unclear lines: every user error is one line naming the fix, spelled for the
surface the user is on (``--flag`` under ``%llm``, ``keyword=`` in Python; ``errors.opt``).

* Wrong argument types in the Python API (``llm.classify("minilm", 123)``, ``llm.load(None)``):
  one helper at the boundary (``argcheck.checked``) wraps every public function.
* ``--dtype int3`` lists the dtypes; ``--device cuda:7`` without CUDA lists the devices there are.
* A cut or random ``model.safetensors`` is named as corrupt, with its path and the fix.
* Rows without a label point at ``data clean``, not ``--labels``.
* ``data export`` hints name ``--overwrite`` / ``--split`` in a magic and ``overwrite=True`` /
  ``split=`` in Python.
"""

from __future__ import annotations

import inspect
import re

import pytest
from hostile_kit import assert_consistent, one_line

# Public helpers that take no user input or hand out objects (singletons, the panel's snapshot).
UNCHECKED = {
    "manager",
    "events",
    "subscribe",
    "store",
    "registry",
    "scheduler",
    "state",
    "model_positions",
    "fit_texts",
}


def test_every_public_api_function_checks_its_argument_types():
    from llmos_jupyter import api

    public = [
        n
        for n, f in vars(api).items()
        if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == api.__name__ and n not in UNCHECKED
    ]
    assert len(public) > 35
    assert [n for n in public if not hasattr(getattr(api, n), "__wrapped__")] == []


@pytest.mark.parametrize(
    "call, expected",
    [
        (
            'classify("minilm", 123)',
            "classify(): texts must be a str or a list of str, got int 123",
        ),  # the sweep's inputs
        ("load(None)", "load(): spec must be a str or a path, got NoneType None"),
        ('generate("m", 5)', "generate(): prompt must be a str, got int 5"),
        ('chat("m", None)', "chat(): message must be a str, got NoneType None"),
        ('embed("m", ["a", 3])', "embed(): texts must be a str or a list of str"),
        ("unload(42)", "unload(): alias must be a str, got int 42"),
        ('finetune("m", "d", epochs="3")', "finetune(): epochs must be a whole number, got str '3'"),
        ('evaluate("m", "d", limit=2.5)', "evaluate(): limit must be a whole number or None"),
        ('data_split("d", test="20%")', "data_split(): test must be a whole number or a number"),
        ('data_export("d", 3)', "data_export(): path must be a str or a path"),
        ('export("m", "out", overwrite="yes")', "export(): overwrite must be True or False"),
        ("budget(cpu=[8])", "budget(): cpu must be a str or a whole number or None"),
        ("runs('5')", "runs(): limit must be a whole number"),
        ("seed(1.5)", "seed(): n must be a whole number"),
        ('serve(port="80")', "serve(): port must be a whole number, got str '80'"),
        ("serve(models=[1])", "serve(): models must be a str or a list of str or None"),
        ('classify("m", "x", max_lenght=3)', "classify() takes no argument 'max_lenght' (did you mean: max_length?)"),
        ("classify()", "classify(): missing a required argument: 'alias'"),
    ],
)
def test_wrong_argument_types_are_one_line(fresh_api, call, expected):
    from llmos_jupyter.errors import UsageError

    with pytest.raises(UsageError) as e:
        eval(call, {n: getattr(fresh_api, n) for n in dir(fresh_api)})
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert "".join(e.value._render_traceback_()).startswith("UsageError: ")  # IPython shows this one line
    assert_consistent(fresh_api)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("load {bert} --as x --dtype int3", ["unknown dtype 'int3'", "--dtype float32, float16 or bfloat16"]),
        ("load {bert} --as x --dtype fp8", ["unknown dtype 'fp8'"]),
        ("load {bert} --as x --device cuda:7", ["--device cuda:7:", "devices here: cpu", "use --device cpu"]),
        ("load {bert} --as x --device gpu7", ["unknown device 'gpu7'", "devices here: cpu"]),
    ],
)
def test_dtype_and_device_list_what_there_is(shell, capsys, tiny_bert, line, expected):
    shell.run_line_magic("llm", line.format(bert=tiny_bert))
    one_line(capsys.readouterr().err, *expected)
    assert shell.api.manager().aliases() == []


def test_python_names_the_keywords(fresh_api, tiny_bert):
    from llmos_jupyter.errors import UsageError

    with pytest.raises(UsageError, match=r"device='cuda:7': .* use device='cpu'"):
        fresh_api.load(str(tiny_bert), alias="x", device="cuda:7")
    with pytest.raises(UsageError, match="use dtype='float32'"):
        fresh_api.load(str(tiny_bert), alias="x", dtype="int3")
    with pytest.raises(UsageError, match=r"e\.g\. seed\(0\)$"):
        fresh_api.seed(-1)


@pytest.mark.parametrize("line", ["seed -1", "seed 4294967296"])
def test_the_seed_hint_is_a_magic_line_under_llm(shell, capsys, line):
    shell.run_line_magic("llm", line)
    err = one_line(capsys.readouterr().err, "whole number in 0 .. 2**32-1", "e.g. `%llm seed 0`")
    assert "seed=" not in err


@pytest.mark.parametrize("damage", ["cut", "random", "empty"])
def test_a_corrupt_safetensors_file_is_named_with_its_path_and_the_fix(shell, capsys, tiny_bert, tmp_path, damage):
    import os
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_bert, d)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"cut": data[: len(data) - 5000], "random": os.urandom(4096), "empty": b""}[damage])
    shell.run_line_magic("llm", f"load {d} --task embedding --as m")
    one_line(capsys.readouterr().err, f"{f} is corrupt or truncated", "pull NAME --force")
    assert shell.api.manager().aliases() == []


@pytest.mark.parametrize(
    ("text", "why"),
    [('{"model_type": "bert",', "Expecting property name"), ("[1, 2]", "not a JSON object"), ("", "Expecting value")],
)
@pytest.mark.parametrize("task", ["--task seq-cls", ""])  # without --task, the task is inferred from it
def test_a_broken_config_json_is_named_with_its_path_and_the_fix(shell, capsys, tiny_bert, tmp_path, text, why, task):
    """A hand-edited config.json that no longer parses (a user's bug report: transformers' own
    message named neither the file nor a fix) is one line with the path, the reason and the fix;
    so is valid JSON that is not an object (it gave "unexpected AttributeError")."""
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_bert, d)
    (d / "config.json").write_text(text)
    shell.run_line_magic("llm", f"load {d} {task} --as m")
    line = one_line(capsys.readouterr().err, f"{d / 'config.json'} is not a valid config (", why)
    assert line.rstrip().endswith(
        "repair it or copy or save the model again (a catalog model: `%llm pull NAME --force`)"
    )
    assert shell.api.manager().aliases() == []


def test_a_model_type_transformers_does_not_know_names_the_fixes(shell, capsys, tiny_bert, tmp_path):
    """transformers' own message was cut mid-sentence and named no fix."""
    import json
    import shutil

    import transformers

    d = tmp_path / "m"
    shutil.copytree(tiny_bert, d)
    (d / "config.json").write_text(json.dumps({"model_type": "nosucharch"}))
    shell.run_line_magic("llm", f"load {d} --task seq-cls --as m")
    one_line(
        capsys.readouterr().err,
        f"{d} is a 'nosucharch' model, which transformers {transformers.__version__} does not know; upgrade "
        "transformers (pip install -U transformers), or load it with --trust-remote-code if it ships its own",
    )
    assert shell.api.manager().aliases() == []


def test_a_corrupt_catalog_model_names_its_pull_command(tmp_path):
    from llmos_jupyter.errors import LLMOSError
    from llmos_jupyter.models.loading import check_safetensors

    (tmp_path / "model.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(LLMOSError, match=r"download it again with `%llm pull all-minilm-l6-v2 --force`"):
        check_safetensors(tmp_path, "all-minilm-l6-v2")


def test_rows_without_a_label_point_at_data_clean(shell, capsys, tiny_bert, tmp_path):
    api = shell.api
    (tmp_path / "nl.csv").write_text("text,label\ngreat,pos\nbad,neg\nok,\nfine,pos\nawful,neg\n,pos\nnice,pos\n")
    api.load(str(tiny_bert), alias="tb", task="seq-cls", labels="neg,pos")
    shell.run_line_magic("llm", f"data load {tmp_path / 'nl.csv'} --as nl")
    capsys.readouterr()
    shell.run_line_magic("llm", "finetune tb nl --no-progress")
    err = one_line(capsys.readouterr().err, "1 of 7 rows of 'nl' (train) have no label", "`%llm data clean nl`")
    assert "--labels" not in err  # the old, wrong fix
    shell.run_line_magic("llm", "data clean nl")  # the fix works: the missing label and the blank text go
    shell.run_line_magic("llm", "data split nl --test 2")
    assert capsys.readouterr().err == ""
    run = api.finetune("tb", "nl", max_steps=1, progress=False)
    assert run.status == "completed" and api.data_get("nl").num_rows == {"train": 3, "test": 2}
    assert_consistent(api)


def test_data_export_hints_are_spelled_for_the_surface(shell, capsys, tmp_path):
    from llmos_jupyter.errors import UsageError

    api = shell.api
    api.data_load([{"text": f"t {i}", "label": i % 2} for i in range(12)], name="d")
    api.data_split("d", test=4, seed=0)
    api.data_export("d", str(tmp_path / "d"))
    shell.run_line_magic("llm", f"data export d {tmp_path / 'd'}")
    err = one_line(capsys.readouterr().err, "add --overwrite to replace it")
    assert "overwrite=True" not in err
    shell.run_line_magic("llm", f"data export d {tmp_path / 'one.parquet'}")
    err = one_line(capsys.readouterr().err, "add --split train for one split")
    assert "split=" not in err
    shell.run_line_magic("llm", "data split d --test 2")
    err = one_line(capsys.readouterr().err, "already split", "`%llm data split d --version 1`")
    assert "version=" not in err
    with pytest.raises(UsageError, match="add overwrite=True to replace it"):
        api.data_export("d", str(tmp_path / "d"))
    with pytest.raises(UsageError, match="add split='train' for one split"):
        api.data_export("d", str(tmp_path / "one.parquet"))
    with pytest.raises(UsageError, match="an unsplit version: version=1"):
        api.data_split("d", test=2)


@pytest.mark.parametrize(
    "line, magic, python",
    [
        (
            "data clean d --min-chars -3",
            "--min-chars -3 is not allowed",
            ("data_clean", {"min_chars": -3}, "min_chars=-3"),
        ),
        (
            "data clean d --min-chars 9 --max-chars 2",
            "--min-chars 9 is above --max-chars 2",
            ("data_clean", {"min_chars": 9, "max_chars": 2}, "min_chars=9 is above max_chars=2"),
        ),
        ("data search d hello --k 0", "--k 0 is not allowed", ("data_search", {"query": "hello", "k": 0}, "k=0")),
        ("data search d hello --k -2", "e.g. --k 5", ("data_search", {"query": "hello", "k": -2}, "e.g. k=5")),
    ],
)
def test_clean_and_search_counts_are_checked_and_spelled_for_the_surface(shell, capsys, line, magic, python):
    """``--k 0`` once returned the default 5 rows as if it were not given."""
    from llmos_jupyter.errors import UsageError

    api = shell.api
    api.data_load([{"text": f"t {i}", "label": i % 2} for i in range(12)], name="d")
    shell.run_line_magic("llm", line)
    err = one_line(capsys.readouterr().err, magic)
    assert not re.search(r"\b(k|min_chars|max_chars)=", err), err
    fn, kw, expected = python
    with pytest.raises(UsageError, match=re.escape(expected)):
        getattr(api, fn)("d", **kw)
    assert api.manager().aliases() == []  # a refused search loads no model first
    assert len(api.store().versions("d")) == 1  # nothing was written
