"""RunRegistry: rows, manifests, transactions, rendering; and a registry fed by a real run."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys

import pytest

from llmos_jupyter.errors import NotFoundError, UsageError
from llmos_jupyter.training import FinetuneConfig, RunRegistry, finetune


def test_start_finish_get_list_compare(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    random.seed(0)
    a = reg.start("finetune", "all-minilm-l6-v2", "rt", {"lr": 5e-5, "epochs": 1}, 0, "fp1")
    random.seed(0)  # seeding Python's RNG must not make ids collide
    b = reg.start("finetune", "all-minilm-l6-v2", "rt", {"lr": 1e-4, "epochs": 1}, 1, "fp1")
    assert a != b and a.startswith("ft-") and len(a) == len("ft-yymmdd-abcd")
    assert reg.get(a).status == "running"
    ck = tmp_path / "ck" / a / "checkpoint"
    ck.mkdir(parents=True)
    ra = reg.finish(a, "completed", {"accuracy": 0.75, "macro_f1": 0.7}, 12.5, ck, "ab" * 32)
    reg.finish(b, "completed", {"accuracy": 0.8, "macro_f1": 0.79}, 10.0, None, None)
    got = reg.get(a)
    assert got == ra
    assert (got.status, got.metrics, got.wall_s, got.checkpoint, got.checkpoint_sha256) == (
        "completed",
        {"accuracy": 0.75, "macro_f1": 0.7},
        12.5,
        str(ck.resolve()),
        "ab" * 32,
    )
    assert got.config == {"lr": 5e-5, "epochs": 1} and got.seed == 0 and got.data_fingerprint == "fp1"
    assert got.packages["torch"] and got.packages["transformers"] and got.hardware["cpu_logical"] >= 1
    manifest = json.loads((ck.parent / "manifest.json").read_text())
    assert (
        manifest["run_id"] == a
        and manifest["checkpoint_sha256"] == "ab" * 32
        and manifest["metrics"]["accuracy"] == 0.75
    )
    assert manifest["config"]["lr"] == 5e-5 and manifest["seed"] == 0 and manifest["data_fingerprint"] == "fp1"
    assert set(manifest["packages"]) >= {"torch", "transformers", "peft", "datasets", "python", "llmos-jupyter"}
    if not b.startswith(a[:-1]):
        assert reg.get(a[:-1]).id == a  # a unique prefix resolves
    runs = reg.list()
    assert [r.id for r in runs] == [b, a]
    html = runs._repr_mimebundle_()["text/html"]
    assert a in html and b in html and "0.75" in html and "<table" in html
    assert a in str(runs)
    # one format per column (a user's report: "1", "0.85", "0.8417" in one column)
    assert [runs._cells(r)[7:10] for r in runs] == [["0.8000", "0.7900", "10.0"], ["0.7500", "0.7000", "12.5"]]
    cmp = reg.compare(a, b)
    assert set(cmp.differences()) >= {
        "seed",
        "config.lr",
        "metrics.accuracy",
        "metrics.macro_f1",
        "wall_s",
        "checkpoint_sha256",
    }
    acc = [r for r in cmp.rows if r[0] == "metrics.accuracy"][0]
    assert acc[3] == pytest.approx(0.05)
    assert "config.lr" in cmp._repr_mimebundle_()["text/html"]
    assert "epochs" not in cmp.differences() and "config.epochs" not in cmp.differences()


def test_user_errors(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    rid = reg.start("finetune", "m", "d", {}, 0, None)
    with pytest.raises(UsageError, match=r"status 'done' is not a final run status"):
        reg.finish(rid, "done")
    reg.finish(rid, "failed", error="boom\nsecond line")
    assert reg.get(rid).error == "boom second line"
    with pytest.raises(UsageError, match=r"already finished \(failed\)"):
        reg.finish(rid, "completed")
    with pytest.raises(NotFoundError, match=r"unknown run 'ft-nope'.*%llm runs"):
        reg.get("ft-nope")
    with pytest.raises(UsageError, match=r"already taken"):
        reg.start("finetune", "m", "d", {}, 0, None, run_id=rid)


def test_finish_is_all_or_nothing(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    rid = reg.start("finetune", "m", "d", {"lr": 1.0}, 0, "fp")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the manifest cannot be written under a file
    with pytest.raises(OSError):
        reg.finish(rid, "completed", {"accuracy": 1.0}, 1.0, blocker / "checkpoint", "cd" * 32)
    row = reg.get(rid)
    assert (row.status, row.metrics, row.checkpoint, row.checkpoint_sha256, row.finished_at) == (
        "running",
        {},
        None,
        None,
        None,
    )
    reg.finish(rid, "failed", error="could not write the manifest")
    assert reg.get(rid).status == "failed"


def test_track_records_failures_and_dead_processes(tmp_path):
    path = tmp_path / "runs.sqlite"
    reg = RunRegistry(path)
    with pytest.raises(ValueError):
        with reg.track("finetune", "m", "d", {}, 0, "fp") as run:
            raise ValueError("bad batch\ndetails")
    r = reg.get(run.id)
    assert r.status == "failed" and r.error == "ValueError: bad batch" and r.wall_s is not None
    with reg.track("evaluate", "m", "d", {}, 0, "fp") as run2:
        pass
    assert reg.get(run2.id).status == "completed" and run2.id.startswith("ev-")
    # a run left "running" by a process that died is marked failed on the next open
    code = (
        "import os; from llmos_jupyter.training.runs import RunRegistry; "
        f"print(RunRegistry({str(path)!r}).start('finetune', 'm', 'd', {{}}, 0, None))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    dead = out.stdout.strip()
    r = RunRegistry(path).get(dead)
    assert r.status == "failed" and "ended before the run finished" in r.error
    # the table never holds a status outside the list
    with sqlite3.connect(path) as db:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("UPDATE runs SET status = 'weird' WHERE id = ?", (dead,))


def test_registry_with_a_real_run(tmp_path, tiny_model, tiny_tokenizer, sentiment):
    train, ev = sentiment
    reg = RunRegistry(tmp_path / "runs.sqlite")
    cfg = FinetuneConfig(max_steps=3, batch_size=8, lr=1e-3, seed=5)
    with reg.track("finetune", "tiny-bert", "sentiment", cfg.to_dict(), cfg.seed, train._fingerprint) as run:
        res = finetune(tiny_model(), tiny_tokenizer, train, ev, config=cfg, run_dir=reg.run_dir(run.id), run_id=run.id)
        row = run.finish_from(res)
    assert row.status == "completed" and row.checkpoint_sha256 == res.checkpoint_sha256
    assert row.metrics == res.metrics and row.metrics["n"] == 32
    m = json.loads((reg.run_dir(run.id) / "manifest.json").read_text())
    assert m["checkpoint_sha256"] == res.checkpoint_sha256 and m["config"]["max_steps"] == 3 and m["seed"] == 5
    assert m["data_fingerprint"] == train._fingerprint and m["status"] == "completed"
    assert sorted(p.name for p in reg.run_dir(run.id).iterdir()) == ["checkpoint", "manifest.json"]
