"""``%llm`` / ``%%llm``: parse with :mod:`.parsers`, call :mod:`llmos_jupyter.api`, show the result.

Magics hold no state of their own. A user error prints one line on stderr
(``llmos: <message>``) and no traceback; ``%config LLMMagics.debug = True`` shows tracebacks
of unexpected errors.
"""

from __future__ import annotations

import sys

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Bool, Int

from ..errors import LLMOSError, UsageError, on_surface, unknown
from .commands import COMMANDS, GROUPS
from .parsers import parse_args

HELP_HEADER = """%llm — the LLM operating system in this kernel. Subcommands:"""
HELP_FOOTER = """Text after ALIAS (prompts, messages, queries) is taken as typed ($ and braces kept); {name} inserts a
notebook variable (--raw: off). Options may come before or after the text; a --word that is not an
option of the subcommand is an error; `--` ends the options (all after it is text); quoted text keeps
--words as text. `%llm help SUBCOMMAND` for options. Every subcommand is also a Python call in
llmos_jupyter.api."""


@magics_class
class LLMMagics(Magics):
    """The ``%llm`` line magic and ``%%llm`` cell magic."""

    debug = Bool(False, help="show full tracebacks for unexpected errors").tag(config=True)
    max_new_tokens = Int(256, help="default --max-new-tokens for chat and generate").tag(config=True)

    @no_var_expand
    @line_cell_magic
    def llm(self, line: str = "", cell: str | None = None):
        """Run ``%llm SUBCOMMAND ...`` (see ``%llm help``)."""
        try:
            with on_surface("magic"):  # hints name --flags, not Python keywords
                return self._dispatch(line, cell)
        except LLMOSError as e:
            print(f"llmos: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("llmos: interrupted", file=sys.stderr)
        except Exception as e:  # a bug in llmos or a library: still one line unless debugging
            if self.debug:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(
                f"llmos: unexpected {type(e).__name__}: {first[:200]} "
                f"(`%config LLMMagics.debug = True` shows the traceback)",
                file=sys.stderr,
            )
        return None

    # ------------------------------------------------------------------
    def _split_command(self, line: str):
        words = line.split(None, 2)
        if not words:
            return COMMANDS["help"], ""
        head = words[0]
        if head in GROUPS and len(words) > 1 and f"{head} {words[1]}" in COMMANDS:
            rest = line.split(None, 2)[2] if len(words) > 2 else ""
            return COMMANDS[f"{head} {words[1]}"], rest
        if head in ("data", "job"):
            sub = words[1] if len(words) > 1 else ""
            raise unknown(
                f"{head} subcommand",
                sub,
                [c.split()[1] for c in COMMANDS if c.startswith(head + " ")],
                f"see `%llm help {head}`",
            )
        if head in COMMANDS:
            return COMMANDS[head], line.split(None, 1)[1] if len(words) > 1 else ""
        raise unknown("subcommand", head, [c for c in COMMANDS if " " not in c] + ["data"], "see `%llm help`")

    def _dispatch(self, line: str, cell: str | None):
        cmd, rest = self._split_command(line.strip())
        if cell is not None and not cmd.cell:
            raise UsageError(
                f"`%%llm {cmd.name}` is not a cell magic; use `%llm {cmd.name}` on one line "
                f"(cell magics: {', '.join(c.name for c in COMMANDS.values() if c.cell)})"
            )
        ns = self.shell.user_ns if self.shell else {}
        p = parse_args(cmd, rest, body=cell.rstrip("\n") if cell is not None else None, namespace=ns)
        handler = getattr(self, "do_" + cmd.name.replace(" ", "_"))
        return handler(p)

    # ------------------------------------------------------------ handlers
    def do_help(self, p):
        from ..display import Message

        sub = " ".join(w for w in (p.get("subcommand"), p.get("word")) if w)
        if sub:
            if sub in ("data", "job", "serve"):
                cmds = [c for n, c in COMMANDS.items() if n == sub or n.startswith(sub + " ")]
            elif sub in COMMANDS:
                cmds = [COMMANDS[sub]]
            else:
                raise unknown("subcommand", sub, list(COMMANDS), "see `%llm help`")
            out = []
            for c in cmds:
                out.append(f"{c.usage()}\n    {c.summary}")
                for o in c.options:
                    flag = f"--{o.name}" if o.type is bool else f"--{o.name} {o.metavar}"
                    out.append(f"    {flag:<28} {o.help}")
                if c.example:
                    out.append("  example:\n    " + c.example.replace("\n", "\n    "))
            return Message("\n".join(out))
        lines = [HELP_HEADER] + [f"  {c.name:<14} {c.summary}" for c in COMMANDS.values()] + [HELP_FOOTER]
        return Message("\n".join(lines))

    def do_doctor(self, p):
        from .. import api

        return api.doctor()

    def do_list(self, p):
        from .. import api

        return api.catalog_list()

    def do_pull(self, p):
        from .. import api

        return api.pull(p["name"], force=p["force"])

    def do_load(self, p):
        from .. import api

        return api.load(
            p["source"],
            alias=p["alias"],
            task=p["task"],
            labels=p["labels"],
            dtype=p["dtype"],
            device=p["device"],
            attn=p["attn"],
            replace=p["replace"],
            pin=p["pin"],
            keep_alive=p["keep_alive"],
            trust_remote_code=p["trust_remote_code"],
            engine=p["engine"],
            n_ctx=p["n_ctx"],
            threads=p["threads"],
            allow_pickle=p["allow_pickle"],
        )

    def do_unload(self, p):
        from .. import api

        return api.unload(p["alias"])

    def do_ps(self, p):
        from .. import api

        return api.ps()

    def do_pin(self, p):
        from .. import api

        return api.pin(p["alias"], True)

    def do_unpin(self, p):
        from .. import api

        return api.pin(p["alias"], False)

    def do_budget(self, p):
        from .. import api

        return api.budget(cpu=p["cpu"], gpu=p["gpu"])

    def do_hw(self, p):
        from .. import api

        return api.hw()

    def _gen_kw(self, p) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens if p["max_new_tokens"] is None else p["max_new_tokens"]}
        for k in ("temperature", "top_p", "seed"):
            if p[k] is not None:
                kw[k] = p[k]
        return kw

    def do_generate(self, p):
        from .. import api

        api.generate(p["alias"], p["prompt"], **self._gen_kw(p))

    def do_chat(self, p):
        from .. import api

        api.chat(p["alias"], p["message"], system=p["system"], reset=p["reset"], **self._gen_kw(p))

    def do_classify(self, p):
        from .. import api

        return api.classify(p["alias"], p["text"])

    def do_embed(self, p):
        from .. import api
        from ..display import Message

        vec = api.embed(p["alias"], p["text"])[0]
        head = ", ".join(f"{x:.4f}" for x in vec[:6])
        return Message(
            f"{p['alias']}: embedding of {len(vec)} dims, L2 norm {float((vec**2).sum()) ** 0.5:.4f}: "
            f"[{head}, …]  (the vector: `llmos_jupyter.api.embed(alias, text)`)",
            vector=vec,
        )

    def do_data_load(self, p):
        from .. import api

        ns = self.shell.user_ns if self.shell else {}
        dv = api.data_load(
            p["source"],
            name=p["name"],
            text_column=p["text_column"],
            label_column=p["label_column"],
            prompt_column=p["prompt_column"],
            response_column=p["response_column"],
            namespace=ns,
        )
        return _dataset_message(dv)

    def do_data_sample(self, p):
        from .. import api

        try:
            n = int(p["n"])
        except ValueError:
            raise UsageError(f"%llm data sample takes a whole number of rows, got '{p['n']}'") from None
        dv = api.data_sample(
            p["name"], n, seed=p["seed"] or 0, stratify=None if p["no_stratify"] else "label", version=p["version"]
        )
        return _dataset_message(dv)

    def do_data_show(self, p):
        from .. import api

        report = api.data_show(p["name"], version=p["version"], tokenizer=p["tokenizer"], max_length=p["max_length"])
        return _show_report(report)

    def do_data_split(self, p):
        from .. import api

        stratify = None if p["no_stratify"] else (p["stratify"] or "label")
        kw = {}
        for k in ("test", "validation"):  # 0.15 = a fraction, 300 = a row count, 1.5 = an error (in the store)
            if p[k] is not None:
                kw[k] = int(p[k]) if p[k] >= 1 and float(p[k]).is_integer() else p[k]
        dv = api.data_split(
            p["name"], seed=p["seed"] if p["seed"] is not None else 0, stratify=stratify, version=p["version"], **kw
        )
        return _dataset_message(dv)

    def do_data_prompt(self, p):
        from .. import api

        if not p["prompt"] or not p["response"]:
            raise UsageError(
                "`%llm data prompt` needs --prompt and --response templates, e.g. "
                '--prompt "Review: {text}\\nSentiment:" --response "{label}"'
            )
        dv = api.data_prompts(
            p["name"], prompt=_unescape(p["prompt"]), response=_unescape(p["response"]), version=p["version"]
        )
        return _dataset_message(dv)

    def do_data_clean(self, p):
        from .. import api

        label_map = None
        if p["label_map"]:
            try:
                label_map = dict(kv.split("=", 1) for kv in p["label_map"].split(","))
            except ValueError:
                raise UsageError(
                    "--label-map takes OLD=NEW pairs separated by commas, e.g. neg=negative,pos=positive"
                ) from None
        return api.data_clean(
            p["name"],
            dedupe=p["dedupe"],
            strip_html=p["strip_html"],
            drop_empty=not p["keep_empty"],
            min_chars=p["min_chars"],
            max_chars=p["max_chars"],
            normalize_whitespace=p["normalize_whitespace"],
            label_map=label_map,
        )

    def do_data_versions(self, p):
        from .. import api

        return api.data_versions(p["name"])

    def do_data_list(self, p):
        from .. import api

        return api.data_list()

    def do_data_search(self, p):
        from .. import api

        return api.data_search(
            p["name"], p["query"], k=5 if p["k"] is None else p["k"], model=p["model"] or "all-minilm-l6-v2"
        )

    def do_data_export(self, p):
        from .. import api

        return api.data_export(
            p["name"], p["path"], format=p["format"], split=p["split"], version=p["version"], overwrite=p["overwrite"]
        )

    def do_finetune(self, p):
        from .. import api

        kw = {k: p[k] for k in ("epochs", "lr", "batch_size", "seed", "max_length", "method") if p[k] is not None}
        for k in (
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "weight_decay",
            "warmup_ratio",
            "lr_scheduler",
            "grad_accum",
            "max_grad_norm",
            "max_steps",
        ):
            if p[k] is not None:
                kw[k] = p[k]
        if p["target_modules"] is not None:
            kw["target_modules"] = [t.strip() for t in p["target_modules"].split(",") if t.strip()]
        for opt, k in (
            ("eval_every", "eval_every"),
            ("patience", "early_stopping_patience"),
            ("metric", "metric_for_best"),
        ):
            if p[opt] is not None:
                kw[k] = p[opt]
        if isinstance(kw.get("eval_every"), str) and kw["eval_every"] != "epoch":
            try:
                kw["eval_every"] = int(kw["eval_every"])
            except ValueError:
                raise UsageError(
                    f"--eval-every takes a whole number of steps or 'epoch', got '{kw['eval_every']}'"
                ) from None
        for k in ("nproc", "nnodes", "backend", "launcher", "rdzv_endpoint", "export_launch"):
            if p[k] is not None:
                kw[k] = p[k]
        if p["fsdp"]:
            kw["fsdp"] = True
        return api.finetune(
            p["alias"],
            p["dataset"],
            progress=not p["no_progress"],
            background=p["background"],
            resume=p["resume"],
            **kw,
        )

    def do_jobs(self, p):
        from .. import api

        return api.jobs()

    def do_job_cancel(self, p):
        from .. import api

        return api.cancel(p["job_id"])

    def do_job_wait(self, p):
        from .. import api

        return api.job_wait(p["job_id"])

    def do_eval(self, p):
        from .. import api

        dataset, _, split = p["dataset"].partition(":")
        if split and p["split"] and split != p["split"]:
            raise UsageError(f"two splits given ({dataset}:{split} and --split {p['split']}); name one")
        kw = {"batch_size": p["batch_size"]} if p["batch_size"] is not None else {}
        if p["max_new_tokens"] is not None and not p["generate"]:
            raise UsageError("--max-new-tokens goes with --generate (greedy answers); add --generate or drop it")
        return api.evaluate(
            p["alias"],
            dataset,
            split=p["split"] or split or "test",
            limit=p["limit"],
            generate=p["generate"],
            max_new_tokens=p["max_new_tokens"],
            engine=p.get("engine"),
            **kw,
        )

    def do_optimize(self, p):
        from .. import api

        kw = {k: p[k] for k in ("limit", "batch_size", "repeats", "max_new_tokens") if p[k] is not None}
        return api.optimize(
            p["alias"],
            quantize=p["quantize"],
            prune=p["prune"],
            structured=p["structured"],
            compile=p["compile"],
            eval=p["eval"],
            generate=p["generate"],
            recover_epochs=p["recover_epochs"] or 0,
            as_=p["new_alias"],
            progress=not p["no_progress"],
            **kw,
        )

    def do_runs(self, p):
        from .. import api

        return api.runs(limit=p["limit"] if p["limit"] is not None else 20)

    def do_runs_show(self, p):
        from .. import api

        return api.run(p["run_id"])

    def do_runs_compare(self, p):
        from .. import api

        return api.runs_compare(p["run_a"], p["run_b"])

    def do_export(self, p):
        from .. import api

        if p["merge_lora"] and p["no_merge"]:
            raise UsageError("--merge-lora and --no-merge contradict each other; give one")
        merge = True if p["merge_lora"] else (False if p["no_merge"] else None)
        return api.export(
            p["alias"],
            p["path"],
            merge_lora=merge,
            overwrite=p["overwrite"],
            format=p.get("format") or "hf",
            quantize=p.get("quantize"),
        )

    def do_serve(self, p):
        from .. import api

        kw = {k: p[k] for k in ("port", "max_queue", "max_batch") if p[k] is not None}
        if p["host"] is not None:
            kw["host"] = p["host"]
        return api.serve(models=p["models"], **kw)

    def do_serve_status(self, p):
        from .. import api

        return api.serve_status()

    def do_serve_stop(self, p):
        from .. import api

        return api.serve_stop()

    def do_seed(self, p):
        from .. import api

        try:
            n = int(p["n"])
        except ValueError:
            raise UsageError(f"%llm seed takes a whole number, got '{p['n']}'") from None
        return api.seed(n)


def _dataset_message(dv):
    from ..display import Message

    rows = ", ".join(f"{k} {v:,}" for k, v in dv.num_rows.items())
    labels = f"; labels {dv.label_names}" if dv.label_names else ""
    return Message(
        f"{dv.name} v{dv.version} ({dv.fingerprint[:12]}): {rows} rows; text '{dv.text_column}', "
        f"label '{dv.label_column}'{labels}",
        **dv.summary(),
    )


def _show_report(report):
    """Show the inspector widget in a live kernel (with the static HTML kept for saved notebooks)."""
    widget = getattr(report, "widget", None)
    if widget is not None:
        try:
            from IPython import get_ipython

            ip = get_ipython()
            if ip is not None and getattr(ip, "kernel", None) is not None:
                from IPython.display import display

                display(widget())
                return None
        except Exception:
            pass
    return report


def _unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed in a magic option become a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")
