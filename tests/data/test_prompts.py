"""`%llm data prompt`: prompt/response columns from templates, as a new version (DataStore.prompts)."""

from __future__ import annotations

import pytest

from llmos_jupyter.data.store import DataStore
from llmos_jupyter.errors import UsageError

ROWS = [
    {"text": f"review {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg", "stars": i % 5}
    for i in range(20)
]


@pytest.fixture
def store(tmp_path):
    s = DataStore(tmp_path / "datasets")
    s.load(ROWS, name="rt", text_column="text", label_column="label")
    s.split("rt", test=0.25, seed=0)
    return s


def test_prompts_make_a_new_version_with_roles(store):
    split = store.get("rt")
    v = store.prompts("rt", prompt="Review: {text}\nStars: {stars}\nSentiment:", response="{label}")
    assert v.version == split.version + 1 and v.operation == "prompts" and v.parent == split.fingerprint
    assert (v.prompt_column, v.response_column, v.text_column, v.label_column) == (
        "prompt",
        "response",
        "text",
        "label",
    )
    assert v.num_rows == split.num_rows  # every split, the held-out test split included
    for s in ("train", "test"):
        for row in v.splits[s]:
            name = v.label_names[row["label"]]  # labels stay class ids; the response is the class name
            assert row["prompt"] == f"Review: {row['text']}\nStars: {row['stars']}\nSentiment:"
            assert row["response"] == name and name == ("pos" if row["text"].endswith("good") else "neg")
    # the same templates again: the same version, made current (re-running a cell is harmless)
    again = store.prompts(
        "rt", prompt="Review: {text}\nStars: {stars}\nSentiment:", response="{label}", version=split.version
    )
    assert again.version == v.version and again.fingerprint == v.fingerprint
    # other templates: another version; the earlier ones are untouched
    other = store.prompts("rt", prompt="{text}", response="{label}!", version=split.version)
    assert other.version == v.version + 1 and other.splits["train"][0]["response"].endswith("!")
    assert store.get("rt", split.version).splits["train"].column_names == ["text", "label", "stars"]
    # templating the current (templated) version re-templates its parent: the first templates give v back
    assert store.get("rt").version == other.version and other.parent == split.fingerprint
    back = store.prompts("rt", prompt="Review: {text}\nStars: {stars}\nSentiment:", response="{label}")
    assert back.version == v.version and store.get("rt").version == v.version


@pytest.mark.parametrize(
    "prompt, response, message",
    [
        ("Review: {txt}", "{label}", r"has \{txt\}, not a plain column of rt"),
        ("Review: {text", "{label}", "not a valid format string"),
        ("Review: {}", "{label}", r"has \{\}, not a plain column"),
        ("Review: {text}", "{0}", r"has \{0\}, not a plain column"),
        ("Review: {text.upper}", "{label}", r"has \{text.upper\}"),  # no attribute access (it would store a repr)
        ("Review: {text[0]}", "{label}", r"has \{text\[0\]\}"),
        ("Review: {text!r}", "{label}", r"has \{text!r\}"),
        ("Review: {text:>5}", "{label}", r"has \{text:>5\}"),
    ],
)
def test_bad_templates_are_one_line_and_write_nothing(store, prompt, response, message):
    before = store.versions("rt")
    with pytest.raises(UsageError, match=message) as e:
        store.prompts("rt", prompt=prompt, response=response)
    assert "\n" not in str(e.value)
    assert store.versions("rt") == before and store.get("rt").version == before[-1]["version"]


def test_magic_unescapes_newlines_and_reports_the_version(fresh_api, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    fresh_api.data_load(ROWS, name="rt2")
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    ip.user_ns["text"] = "NOT THIS"  # a template option is not interpolated: {text} is the column
    out = ip.run_line_magic("llm", 'data prompt rt2 --prompt "Review: {text}\\nSentiment:" --response "{label}"')
    v = fresh_api.data_get("rt2")
    assert "rt2 v2" in str(out) and v.splits["train"][0]["prompt"] == f"Review: {ROWS[0]['text']}\nSentiment:"
    ip.run_line_magic("llm", 'data prompt rt2 --prompt "Review: {text}"')
    err = capsys.readouterr().err
    assert "needs --prompt and --response" in err and err.count("\n") == 1 and "Traceback" not in err
