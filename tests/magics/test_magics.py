"""The %llm grammar and the user-error contract (prompt text reaches the API verbatim; bad input is one line)."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from llmos_jupyter import api


@pytest.fixture
def shell(monkeypatch):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    ip.user_ns["name"] = "Bob"
    calls = []

    def record(alias, message, **kw):
        calls.append({"alias": alias, "message": message, **kw})

    monkeypatch.setattr(api, "chat", record)
    monkeypatch.setattr(
        api, "generate", lambda alias, prompt, **kw: calls.append({"alias": alias, "prompt": prompt, **kw})
    )
    ip.calls = calls
    return ip


@pytest.mark.parametrize(
    "typed, received",
    [
        ("say hi to {name}", "say hi to Bob"),  # documented interpolation
        ("cost is $5 and $name", "cost is $5 and $name"),  # IPython must not expand $
        ("{12} {12} {}", "{12} {12} {}"),  # not identifiers: kept
        ('return JSON like {"a": 1}', 'return JSON like {"a": 1}'),  # JSON braces and quotes survive
        ('héllo wörld 🙂 "quoted"', 'héllo wörld 🙂 "quoted"'),
        ("{{name}} is literal", "{name} is literal"),
        ("{undefined_var} stays", "{undefined_var} stays"),
        ("don't stop", "don't stop"),  # a lone apostrophe is text
        ('"one quoted string"', "one quoted string"),
    ],
)
def test_line_prompt_reaches_api_verbatim(shell, typed, received):
    shell.run_line_magic("llm", f"chat smol {typed}")
    assert shell.calls[-1]["message"] == received


def test_cell_body_verbatim_and_raw(shell):
    body = 'cost is $5 and {name}; JSON {"a": 1}\nsecond line'
    shell.run_cell_magic("llm", "chat smol", body + "\n")
    assert shell.calls[-1]["message"] == 'cost is $5 and Bob; JSON {"a": 1}\nsecond line'
    shell.run_cell_magic("llm", "chat smol --raw", body)
    assert shell.calls[-1]["message"] == body


def test_quoted_option_value(shell):
    shell.run_line_magic("llm", 'chat smol --system "a b" hello there')
    assert shell.calls[-1]["system"] == "a b" and shell.calls[-1]["message"] == "hello there"
    shell.run_line_magic("llm", "generate smol --max-new-tokens 7 --temperature 0.5 Once upon")
    assert shell.calls[-1]["prompt"] == "Once upon"
    assert shell.calls[-1]["max_new_tokens"] == 7 and shell.calls[-1]["temperature"] == 0.5


def test_option_values_and_positionals_take_notebook_variables(shell, capsys):
    """A user's report: ``--max-new-tokens {n}`` in a loop over ``n`` was refused as 'not a whole
    number' (IPython's own ``{var}`` expansion is off so that prompts stay verbatim)."""
    shell.user_ns.update(n=12, t=0.25, who="smol", sys_prompt="be brief")
    shell.run_line_magic("llm", "generate {who} --max-new-tokens {n} --temperature={t} Hi {name}")
    call = shell.calls[-1]
    assert (call["alias"], call["max_new_tokens"], call["temperature"], call["prompt"]) == ("smol", 12, 0.25, "Hi Bob")
    shell.run_line_magic("llm", "chat smol --system '{sys_prompt}!' hi")
    assert shell.calls[-1]["system"] == "be brief!"
    shell.run_line_magic("llm", "chat smol --system 'say {{name}} and {nope}' hi")  # text-like: as for the prompt
    assert shell.calls[-1]["system"] == "say {name} and {nope}"
    capsys.readouterr()
    shell.run_line_magic("llm", "generate smol --max-new-tokens {tokens} Hi")
    assert capsys.readouterr().err == (
        "llmos: --max-new-tokens {tokens}: there is no variable 'tokens' in the notebook; define it first\n"
    )
    # a value that is just {name} can only mean a variable (a user's alias came out as '{nosuch}')
    shell.run_line_magic("llm", "load all-minilm-l6-v2 --as {nosuch}")
    assert (
        capsys.readouterr().err
        == "llmos: --as {nosuch}: there is no variable 'nosuch' in the notebook; define it first\n"
    )
    shell.run_line_magic("llm", "generate {nosuch} Hi")
    assert (
        capsys.readouterr().err
        == "llmos: ALIAS {nosuch}: there is no variable 'nosuch' in the notebook; define it first\n"
    )
    assert api.manager().aliases() == []


@pytest.mark.parametrize(
    "line, cell, expected",
    [
        ("chat smol --system 'unterminated", None, "unterminated ' quote"),
        ("chat smol", "   \n  \t", "cell body is empty"),
        ("chat smol", None, "needs MESSAGE"),
        ("lod x", None, "did you mean: load"),
        ("load x --tsk causal-lm", None, "unknown option --tsk"),
        ("load x --task", None, "--task needs a value"),
        ("load", None, "needs SOURCE"),
        ("finetune m d --epochs two", None, "--epochs takes a whole number"),
        ("data frobnicate x", None, "unknown data subcommand 'frobnicate'"),
        ("ps", "body", "not a cell magic"),
    ],
)
def test_user_errors_are_one_line_on_stderr(shell, capsys, line, cell, expected):
    n = len(shell.calls)
    result = shell.run_cell_magic("llm", line, cell) if cell is not None else shell.run_line_magic("llm", line)
    out, err = capsys.readouterr()
    assert result is None and len(shell.calls) == n  # nothing reached the API
    assert err.count("\n") == 1 and err.startswith("llmos: ") and expected in err, err
    assert "Traceback" not in err + out


def test_unknown_model_lists_close_matches(capsys):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    ip.run_line_magic("llm", "load smollm2-135m --as x")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean: smollm2-135m-instruct" in err
    ip.run_line_magic("llm", "unload nothing-here")
    err = capsys.readouterr().err
    assert err.startswith("llmos: unknown model 'nothing-here'") and err.count("\n") == 1


def test_help_lists_every_subcommand_and_options():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    text = repr(ip.run_line_magic("llm", "help"))
    from llmos_jupyter.magics.commands import COMMANDS

    for name in COMMANDS:
        assert f"  {name} " in text
    load_help = repr(ip.run_line_magic("llm", "help load"))
    for opt in ("--as ALIAS", "--task TASK", "--labels A,B", "--replace"):
        assert opt in load_help


def test_empty_cell_body_through_run_cell(shell, capsys):
    """IPython itself rejects a truly empty body; whitespace-only reaches llmos. Both: one line."""
    for src in ("%%llm chat smol", "%%llm chat smol\n   \n"):
        n = len(shell.calls)
        shell.run_cell(src)
        err = capsys.readouterr().err
        assert len(shell.calls) == n
        assert "cell body is empty" in err and err.strip().count("\n") == 0 and "Traceback" not in err, err


def test_hub_id_offline_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    ip.run_line_magic("llm", "load some-org/not-cached-model --as x")
    err = capsys.readouterr().err
    assert err.startswith("llmos: could not load 'some-org/not-cached-model' from the Hugging Face hub")
    assert err.count("\n") == 1 and "x" not in api.manager().aliases()


def test_serve_magics_reach_the_api_and_help_lists_them(shell, capsys, monkeypatch):
    got = {}
    monkeypatch.setattr(api, "serve", lambda **kw: got.update(kw))
    shell.run_line_magic("llm", "serve --host 0.0.0.0 --port 8765 --models a,b --max-queue 4 --max-batch 1")
    assert got == {"host": "0.0.0.0", "port": 8765, "models": "a,b", "max_queue": 4, "max_batch": 1}
    text = repr(shell.run_line_magic("llm", "help serve"))
    for want in (
        "%llm serve [--port N] [--host ADDR] [--models A,B]",
        "%llm serve status",
        "%llm serve stop",
        "prints a warning",
    ):
        assert want in text, text
    monkeypatch.undo()  # the real api.serve checks the port before binding anything
    shell.run_line_magic("llm", "serve --port 70000")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port must be a whole number 0..65535" in err
    shell.run_line_magic("llm", "serve --host notahost.invalid")  # the fix is spelled as a flag here
    err = capsys.readouterr().err
    assert err.startswith("llmos: cannot listen on notahost.invalid:0 (") and err.endswith("; use --host 127.0.0.1\n")


def test_serve_start_status_stop_through_the_magics(capsys):
    import httpx

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    started = ip.run_line_magic("llm", "serve")
    try:
        assert "api_key: llmos-" in started.text and started["models"] == []
        r = httpx.get(started["base_url"] + "/models", headers={"Authorization": f"Bearer {started['token']}"})
        assert r.status_code == 200 and r.json() == {"object": "list", "data": []}
        status = ip.run_line_magic("llm", "serve status")
        assert status.text.startswith(f"serving at {started['base_url']}") and "requests: 1 served" not in status.text
        ip.run_line_magic("llm", "serve")
        assert "a server is already running" in capsys.readouterr().err
    finally:
        stopped = ip.run_line_magic("llm", "serve stop")
    assert stopped.text.startswith("stopped the server at")
    assert ip.run_line_magic("llm", "serve status").text.startswith("no server is running")


def test_finetune_help_defaults_are_the_config_defaults():
    """Every "(default X)" in `%llm finetune`'s option help is FinetuneConfig's default for that
    field (the help is written by hand; this keeps it from drifting from the dataclass)."""
    import dataclasses
    import re

    from llmos_jupyter.magics.commands import COMMANDS
    from llmos_jupyter.training.config import FinetuneConfig

    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    checked = []
    for opt in COMMANDS["finetune"].options:
        m = re.search(r"\(default ([^;:)]+)\)", opt.help or "")
        if not m or opt.key not in defaults:
            continue
        said, want = m.group(1), defaults[opt.key]
        assert said == str(want) or float(said) == want, (opt.name, said, want)
        checked.append(opt.key)
    assert len(checked) >= 12, checked  # epochs, lr, batch_size, seed, max_length, method, lora_*, ...
