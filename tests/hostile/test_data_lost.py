"""Data lost: ``--overwrite`` must never delete what llmos did not write.

Every export lists the files it wrote in ``llmos_manifest.json`` (``exported_files``); an
overwrite replaces only those, and refuses — naming them — when the folder holds anything else
(files or folders the user added). An export without that list (an older llmos) is not replaced
either. A failed export leaves the earlier one as it was. ``data export --overwrite`` replaces
only the files it writes.
"""

from __future__ import annotations

import json

import pytest
from hostile_kit import assert_consistent, one_line


@pytest.fixture
def exported(shell, tiny_bert, tmp_path):
    api = shell.api
    api.load(str(tiny_bert), alias="tb", task="seq-cls", labels="neg,pos")
    out = tmp_path / "exp"
    shell.run_line_magic("llm", f"export tb {out}")
    return api, out


def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overwrite_keeps_a_file_the_user_added_and_names_it(shell, capsys, exported):
    api, out = exported
    manifest = json.loads((out / "llmos_manifest.json").read_text())
    written = sorted(p.name for p in out.iterdir() if p.name != "llmos_manifest.json")
    assert sorted(manifest["exported_files"]) == written
    (out / "NOTES.md").write_text("my notes")  # the sweep's input: a file added to an earlier export
    before = _tree(out)
    capsys.readouterr()
    shell.run_line_magic("llm", f"export tb {out} --overwrite")
    one_line(
        capsys.readouterr().err,
        "also holds files the earlier export did not write (NOTES.md)",
        "--overwrite replaces only llmos's own files",
        "nothing was changed",
    )
    assert _tree(out) == before
    (out / "NOTES.md").unlink()
    res = shell.run_line_magic("llm", f"export tb {out} --overwrite")  # only llmos's files: replaced
    assert "exported model" in str(res) and "NOTES.md" not in res.data["files"]
    assert_consistent(api)


def test_overwrite_keeps_a_folder_the_user_added_and_python_names_the_keyword(exported):
    from llmos_jupyter.errors import UsageError

    api, out = exported
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"png")
    before = _tree(out)
    with pytest.raises(UsageError, match=r"did not write \(plots\); overwrite=True replaces only"):
        api.export("tb", str(out), overwrite=True)
    assert _tree(out) == before


def test_an_export_without_a_file_list_is_not_replaced(exported):
    from llmos_jupyter.errors import UsageError

    api, out = exported
    manifest = json.loads((out / "llmos_manifest.json").read_text())
    manifest.pop("exported_files")  # as an older llmos wrote it
    (out / "llmos_manifest.json").write_text(json.dumps(manifest))
    before = _tree(out)
    with pytest.raises(UsageError, match="does not list its files"):
        api.export("tb", str(out), overwrite=True)
    assert _tree(out) == before


def test_overwrite_replaces_the_earlier_exports_own_files_only(shell, exported, tmp_path):
    """A LoRA adapter export, then a merged one into the same folder: the adapter's files go
    (they were listed), the merged model's come."""
    api, out = exported
    rows = [{"text": f"{'good' if i % 2 else 'bad'} film {i}", "label": i % 2} for i in range(16)]
    api.data_load(rows, name="r")
    api.finetune("tb", "r", method="lora", max_steps=2, batch_size=8, progress=False, eval_split=None)
    first = api.export("tb", str(tmp_path / "lora"))
    assert "adapter_config.json" in first.data["files"]
    second = api.export("tb", str(tmp_path / "lora"), merge_lora=True, overwrite=True)
    assert "adapter_config.json" not in second.data["files"] and "model.safetensors" in second.data["files"]
    listed = json.loads((tmp_path / "lora" / "llmos_manifest.json").read_text())["exported_files"]
    assert sorted(listed + ["llmos_manifest.json"]) == sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert_consistent(api)


def test_a_failed_export_leaves_the_earlier_one_intact(exported, monkeypatch):
    api, out = exported
    before = _tree(out)
    from transformers import PreTrainedModel

    def boom(self, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(Exception, match="No space left on device"):
        api.export("tb", str(out), overwrite=True)
    assert _tree(out) == before and not [p for p in out.iterdir() if p.name.startswith(".llmos-export-")]
    assert_consistent(api)


def test_data_export_overwrite_touches_only_its_own_files(shell, capsys, tmp_path):
    api = shell.api
    api.data_load([{"text": f"t {i}", "label": i % 2} for i in range(20)], name="d")
    api.data_split("d", test=5, seed=0)
    out = tmp_path / "d"
    shell.run_line_magic("llm", f"data export d {out}")
    (out / "README.txt").write_text("mine")
    shell.run_line_magic("llm", f"data export d {out}")
    one_line(capsys.readouterr().err, "exists; nothing was written — add --overwrite to replace it")
    shell.run_line_magic("llm", f"data export d {out} --overwrite --format jsonl")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.txt",
        "test.jsonl",
        "test.parquet",
        "train.jsonl",
        "train.parquet",
    ]
    assert (out / "README.txt").read_text() == "mine"
