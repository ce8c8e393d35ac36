"""Half states: the registry, the job table and the manager stay consistent whatever the input.

* Resume (one rule, see ``training/resume.py`` and the README): ``--resume RUN`` starts a new run
  linked both ways (``resumed_from`` on it, ``resumed_by`` on RUN); a second resume of RUN is
  refused and names the run to resume instead — unless that resume failed, which frees RUN.
* A registry written before these fields exists is migrated in place, every row kept.
* A refused or failed load leaves no model record and no loading state behind.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from hostile_kit import assert_consistent, one_line, tiny_classifier


@pytest.fixture
def interrupted(shell, tiny_bert):
    """An interrupted fine-tune run of ``tb`` (a background job cancelled at a step boundary)."""
    import time

    api = tiny_classifier(shell.api, tiny_bert)
    job = api.finetune("tb", "rows", epochs=200, max_steps=60, batch_size=2, progress=False, background=True)
    while job.step < 3 and not job.done:
        time.sleep(0.02)
    api.cancel(job.id)
    job.wait(60)
    run = api.runs(1)[0]
    assert run.status == "interrupted" and job.state == "cancelled"
    return api, run


def test_a_run_is_resumed_once_and_linked_both_ways(shell, capsys, interrupted):
    api, cut = interrupted
    res = api.finetune("tb", "rows", resume=cut.id, progress=False)
    assert res.status == "completed" and res.id != cut.id and res.config["resumed_from"] == cut.id
    assert api.run(cut.id).resumed_by == res.id and api.run(cut.id).status == "interrupted"
    assert api.run(cut.id).manifest()["resumed_by"] == res.id and api.run(res.id).manifest()["resumed_from"] == cut.id
    n = len(api.runs(100))
    capsys.readouterr()
    shell.run_line_magic("llm", f"finetune tb rows --resume {cut.id} --no-progress")  # the sweep's input
    one_line(capsys.readouterr().err, f"run {cut.id} was already resumed by run {res.id}", f"resume {res.id} instead")
    assert len(api.runs(100)) == n  # no duplicate run
    table = str(api.runs(10))
    assert f"interrupted → {res.id}" in table
    assert_consistent(api)


def test_a_resume_that_failed_frees_the_run_for_another_try(interrupted, monkeypatch):
    import importlib

    api, cut = interrupted
    ft = importlib.import_module("llmos_jupyter.training.finetune")  # the module (the package exports the function)

    real = ft.finetune

    def crash(*a, **kw):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(ft, "finetune", crash)
    with pytest.raises(RuntimeError, match="disk went away"):
        api.finetune("tb", "rows", resume=cut.id, progress=False)
    failed = api.runs(1)[0]
    assert failed.status == "failed" and failed.config["resumed_from"] == cut.id
    assert api.run(cut.id).resumed_by is None  # freed: the failed try holds no claim
    monkeypatch.setattr(ft, "finetune", real)
    res = api.finetune("tb", "rows", resume=cut.id, progress=False)
    assert res.status == "completed" and api.run(cut.id).resumed_by == res.id
    assert_consistent(api)


def test_two_claims_on_one_run_cannot_both_win(interrupted):
    from llmos_jupyter.errors import UsageError

    api, cut = interrupted
    reg = api.registry()
    a = reg.start("finetune", "tb", "rows", {"resumed_from": cut.id}, 0, None)
    b = reg.start("finetune", "tb", "rows", {"resumed_from": cut.id}, 0, None)
    reg.link_resume(cut.id, a)
    with pytest.raises(UsageError, match=f"already resumed by run {a}"):
        reg.link_resume(cut.id, b)
    reg.finish(a, "completed")
    reg.finish(b, "cancelled")


def test_an_older_registry_is_migrated_with_every_row(tmp_path):
    from llmos_jupyter.training.runs import SCHEMA, RunRegistry

    old = re.sub(r",\s*\n\s*resumed_by[^\n]*", "", SCHEMA.replace(",'diverged'", ""))  # the column and its comma
    assert "resumed_by" not in old and "'diverged'" not in old
    path = tmp_path / "runs.sqlite"
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute(
        "INSERT INTO runs (id, kind, config, status, created_at, packages, hardware, host, pid) "
        "VALUES ('ft-old-abcd', 'finetune', '{}', 'interrupted', '2026-01-01T00:00:00+00:00', '{}', '{}', "
        "'h', 1)"
    )
    db.commit()
    db.close()
    reg = RunRegistry(path)
    assert reg.get("ft-old-abcd").status == "interrupted" and reg.get("ft-old-abcd").resumed_by is None
    rid = reg.start("finetune", "m", "d", {}, 0, None)
    assert reg.finish(rid, "diverged").status == "diverged"  # the new status is accepted
    reg.link_resume("ft-old-abcd", rid)
    assert RunRegistry(path).get("ft-old-abcd").resumed_by == rid  # and a second open is a no-op


@pytest.mark.parametrize(
    "line, expected",
    [
        ("load {bad} --task seq-cls --as x", "is corrupt or truncated"),
        ("load {bert} --task causal-lm --as x", "is an encoder"),
        ("load {bert} --as x --dtype int3", "unknown dtype 'int3'"),
        ("load {bert} --as x --task seq-cls --labels a", "needs at least two class names"),
    ],
)
def test_a_refused_load_leaves_no_record(shell, capsys, tiny_bert, tmp_path, line, expected):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bert, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # cut in half
    shell.run_line_magic("llm", line.format(bad=bad, bert=tiny_bert))
    one_line(capsys.readouterr().err, expected)
    assert shell.api.manager().aliases() == [] and shell.api.manager().used("cpu") == 0
    shell.api.load(str(tiny_bert), alias="x", task="embedding")  # the alias is free afterwards
    assert_consistent(shell.api)
