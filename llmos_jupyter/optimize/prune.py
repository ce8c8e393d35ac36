"""Prune a loaded transformers model: magnitude (unstructured) or whole heads / FFN neurons.

* :func:`magnitude` — the ``amount`` of the weights of every hidden ``nn.Linear`` with the
  smallest absolute value set to zero, ranked over all of them together
  (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, then
  ``prune.remove``, so the zeros are plain weights and no mask or hook stays behind). Han et
  al. 2015, "Learning both Weights and Connections for Efficient Neural Networks",
  https://arxiv.org/abs/1506.02626; https://docs.pytorch.org/tutorials/intermediate/pruning_tutorial.html.
  **Zeros in a dense matrix save no time and no memory**: the matrices keep their shapes and
  dense kernels multiply the zeros like any other number. It shows how much of a model can go;
  the size only shrinks in a compressed file or with sparse kernels.
* :func:`structured` — removes whole attention heads (``"heads"``) and/or FFN neurons
  (``"ffn"``), so the matrices really get smaller and every matrix multiply does less work.
  The same number is removed in every layer, so the result is again a model of the same
  architecture with a smaller ``intermediate_size`` / ``num_attention_heads`` (Llama-type
  configs carry ``head_dim``; BERT-type configs cannot describe heads of a different count,
  see :func:`exportable`). Matrices shrink with transformers' own ``prune_linear_layer``.

  With training data (``calibration``: ``%llm optimize ... --eval DATA`` uses 1,024 rows of its
  train split, a causal-lm 256) heads and neurons are ranked by their measured first-order Taylor importance,
  (Σ w·∂L/∂w)² over the unit's weights (:func:`taylor_scores`; Molchanov et al. 2019,
  https://arxiv.org/abs/1906.10771). Measured on MiniLM fine-tuned on Rotten Tomatoes, 30% of
  heads and FFN neurons removed, no recovery: 83.75% → 82.34% accuracy ranked by Taylor
  importance, → 73.13% ranked by weight magnitude. Without data, scores are data-free weight
  magnitudes: an FFN neuron j scores ‖W_in[j,:]‖₂ · ‖W_out[:,j]‖₂
  (Llama: ‖W_gate[j]‖₂ · ‖W_up[j]‖₂ · ‖W_down[:,j]‖₂), a head the L2 norm of its rows in the
  query/key/value projections and its columns in the output projection (Li et al. 2017,
  "Pruning Filters for Efficient ConvNets", https://arxiv.org/abs/1608.08710, rank filters by
  weight norm; Michel et al. 2019, "Are Sixteen Heads Really Better than One?",
  https://arxiv.org/abs/1905.10650, show most heads can go). A short fine-tune afterwards
  (``%llm optimize ... --recover-epochs N``) wins back most of what is lost.

Architectures for :func:`structured`: BERT-type encoders (``bert``, ``roberta``,
``xlm-roberta``, ``electra``: ``encoder.layer[i].attention.self.query`` ...) and Llama-type
decoders (``llama``, ``mistral``, ``qwen2``: ``layers[i].self_attn.q_proj`` ...). With grouped
key/value heads (``num_key_value_heads`` < ``num_attention_heads``) the same number of query
heads goes from every group and the key/value heads stay.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

STRUCTURES = ("heads", "ffn")
# output heads: never pruned (tiny, and the classifier's rows are the classes)
HEAD_NAMES = ("classifier", "pre_classifier", "score", "lm_head", "qa_outputs")
BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
LLAMA_TYPES = ("llama", "mistral", "qwen2")


def check_amount(amount: Any) -> float:
    """``amount`` as a float in (0, 1).

    Raises:
        UsageError: not a number strictly between 0 and 1.
    """
    try:
        a = float(amount)
    except (TypeError, ValueError):
        a = float("nan")
    if not 0.0 < a < 1.0:
        raise UsageError(
            f"--prune takes the share of weights to remove, strictly between 0 and 1 (got {amount}); e.g. --prune 0.3"
        )
    return a


def parse_structures(structured: Any) -> tuple[str, ...]:
    """``"heads"``, ``"ffn"``, ``"heads,ffn"`` (or a list of them) as a tuple.

    Raises:
        UsageError: an unknown part.
    """
    parts = structured.split(",") if isinstance(structured, str) else list(structured or ())
    parts = [p.strip() for p in parts if p and p.strip()]
    bad = [p for p in parts if p not in STRUCTURES]
    if bad or not parts:
        raise UsageError(f"unknown --structured '{structured}'; use heads, ffn or heads,ffn")
    return tuple(dict.fromkeys(parts))


def prunable_linears(model: Any) -> list[tuple[str, Any]]:
    """``(name, module)`` of every ``nn.Linear`` of the model's body (the output head excluded)."""
    from torch import nn

    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[0] not in HEAD_NAMES and n.rsplit(".", 1)[-1] not in HEAD_NAMES
    ]


def sparsity(model: Any) -> float:
    """Share of exact zeros in the weights of :func:`prunable_linears` (0 for a model without)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    total = zeros = 0
    for _, m in prunable_linears(model):
        w = m.weight
        if is_traceable_wrapper_subclass(w):  # torchao's quantised weights: count the zeros of their values
            w = w.dequantize()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def magnitude(model: Any, amount: float) -> dict[str, Any]:
    """Zero the ``amount`` smallest-magnitude weights of :func:`prunable_linears`, ranked
    globally, in place and permanently (see the module docstring).

    Returns:
        ``{"method": "magnitude", "amount", "weights" (count ranked), "zeros", "sparsity"}``
        (``sparsity`` = zeros / weights, measured after pruning).

    Raises:
        UsageError: ``amount`` outside (0, 1); a model without hidden ``nn.Linear`` layers.
    """
    import torch
    from torch.nn.utils import prune

    amount = check_amount(amount)
    layers = prunable_linears(model)
    if not layers:
        raise UsageError("this model has no nn.Linear layers to prune (is it quantised? prune before quantising)")
    params = [(m, "weight") for _, m in layers]
    with torch.no_grad():
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        for m, name in params:
            prune.remove(m, name)
    total = sum(m.weight.numel() for m, _ in params)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return {"method": "magnitude", "amount": amount, "weights": total, "zeros": zeros, "sparsity": zeros / total}


# ----------------------------------------------------------------------------- structured
def _arch(model: Any) -> str:
    mt = getattr(getattr(model, "config", None), "model_type", "")
    if mt in BERT_TYPES:
        return "bert"
    if mt in LLAMA_TYPES:
        return "llama"
    raise UsageError(
        f"structured pruning knows BERT-type ({', '.join(BERT_TYPES)}) and Llama-type "
        f"({', '.join(LLAMA_TYPES)}) layers, not '{mt}'; use --prune AMOUNT without --structured "
        f"(magnitude pruning)"
    )


def _layers(model: Any, arch: str) -> list:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if arch == "bert":
        return list(base.base_model.encoder.layer)
    return list(base.base_model.layers)


def _shrink(layer: Any, index: Any, dim: int) -> Any:
    """``layer`` keeping only ``index`` along ``dim`` (0: output rows, 1: input columns), with
    the same dtype, device, ``requires_grad`` and parameter attributes (transformers'
    ``prune_linear_layer`` builds it in float32 with fresh parameters; the attributes carry
    the marks of loaded and trained weights, without which a fine-tune re-initialises them)."""
    from transformers.pytorch_utils import prune_linear_layer

    new = prune_linear_layer(layer, index, dim=dim).to(layer.weight.dtype)
    new.train(layer.training)
    for name in ("weight", "bias"):  # the marks of loaded / trained weights (a fine-tune re-initialises unmarked ones)
        old_p, new_p = getattr(layer, name), getattr(new, name)
        if old_p is not None and new_p is not None:
            new_p.__dict__.update(old_p.__dict__)
            new_p.requires_grad_(old_p.requires_grad)
    return new


def _attention(layer: Any, arch: str) -> tuple:
    """``(W_q, W_k, W_v, W_o)`` Linears of one layer."""
    if arch == "bert":
        a = layer.attention
        return a.self.query, a.self.key, a.self.value, a.output.dense
    a = layer.self_attn
    return a.q_proj, a.k_proj, a.v_proj, a.o_proj


def _pieces(layer: Any, arch: str, part: str, grouped: bool) -> tuple[list, list]:
    """``(rows, cols)``: the Linears whose output rows / input columns belong to the units
    (heads or FFN neurons) of ``part`` in ``layer``, in the units' order."""
    if part == "ffn":
        if arch == "bert":
            return [layer.intermediate.dense], [layer.output.dense]
        return [layer.mlp.gate_proj, layer.mlp.up_proj], [layer.mlp.down_proj]
    q, k, v, o = _attention(layer, arch)
    return ([q] if grouped else [q, k, v]), [o]


def _first_order(rows: list, cols: list, n_units: int) -> Any:
    """Σ w·∂L/∂w over each unit's weights (and its output biases) after a backward pass:
    the first-order Taylor estimate of the loss change when the unit is removed, ``(n_units,)``."""
    total = 0
    for m in rows:
        wg = (m.weight * m.weight.grad).float().sum(1)
        if m.bias is not None and m.bias.grad is not None:
            wg = wg + (m.bias * m.bias.grad).float()
        total = total + wg.view(n_units, -1).sum(1)
    for m in cols:
        total = total + (m.weight * m.weight.grad).float().sum(0).view(n_units, -1).sum(1)
    return total


def _grouped(model: Any, arch: str) -> bool:
    """Whether query heads share key/value heads (Llama-type with ``num_key_value_heads`` < heads)."""
    cfg = model.config
    return arch == "llama" and (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) < (
        cfg.num_attention_heads
    )


def magnitude_scores(model: Any, parts: Any) -> dict[str, list]:
    """Data-free importance of every head and FFN neuron (see the module docstring): an FFN
    neuron scores the product of the L2 norms of its rows and columns, a head the L2 norm of all
    its rows in W_q (and W_k, W_v without grouping) and its columns in W_o.

    Returns:
        ``{"heads": [(H,) per layer], "ffn": [(intermediate_size,) per layer]}`` for the parts
        asked, float32, higher = keep.

    Raises:
        UsageError: an unknown part or architecture.
    """
    import torch

    parts = parse_structures(parts)
    arch = _arch(model)
    grouped, H = _grouped(model, arch), model.config.num_attention_heads
    out: dict[str, list] = {part: [] for part in parts}
    with torch.no_grad():
        for layer in _layers(model, arch):
            for part in parts:
                rows, cols = _pieces(layer, arch, part, grouped)
                if part == "ffn":
                    score = rows[0].weight.float().norm(dim=1)
                    for m in rows[1:]:
                        score = score * m.weight.float().norm(dim=1)
                    for m in cols:
                        score = score * m.weight.float().norm(dim=0)
                else:  # ‖rows of W_q‖² + ‖columns of W_o‖² (+ ‖rows of W_k, W_v‖²), per head
                    score = rows[0].weight.float().view(H, -1, rows[0].weight.shape[1]).pow(2).sum((1, 2))
                    score = score + cols[0].weight.float().view(-1, H, cols[0].weight.shape[1] // H).pow(2).sum((0, 2))
                    for m in rows[1:]:
                        score = score + m.weight.float().view(H, -1, m.weight.shape[1]).pow(2).sum((1, 2))
                    score = score.sqrt()
                out[part].append(score)
    return out


def taylor_scores(model: Any, parts: Any, batches: list) -> dict[str, list]:
    """Importance of every head and FFN neuron measured on data: per unit, the squared first-
    order Taylor estimate of how the loss changes when it is removed, (Σ w·∂L/∂w)², summed over
    ``batches`` (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning",
    https://arxiv.org/abs/1906.10771; Michel et al. 2019 score heads the same way).

    Args:
        model: a BERT-type or Llama-type transformers model that returns ``.loss``.
        parts: ``"heads"``, ``"ffn"`` or both.
        batches: model inputs with ``labels`` (seq-cls: class ids ``(B,)``; causal-lm: token
            ids ``(B, T)``, -100 where no loss), each a dict of tensors on the model's device.

    Returns:
        ``{"heads": [(H,) per layer], "ffn": [(intermediate_size,) per layer]}`` for the parts
        asked, float32, higher = keep. Gradients are cleared, ``requires_grad`` and the
        train/eval mode restored (dropout is off while scoring).

    Raises:
        UsageError: an unknown part or architecture; no batch.
    """
    import torch

    parts = parse_structures(parts)
    arch = _arch(model)
    if not batches:
        raise UsageError("data-aware pruning needs at least one batch of training data")
    layers = _layers(model, arch)
    grouped, cfg = _grouped(model, arch), model.config
    units = {"heads": cfg.num_attention_heads, "ffn": cfg.intermediate_size}
    params = list(model.parameters())
    flags, was_training = [p.requires_grad for p in params], model.training
    acc = {part: [torch.zeros(units[part]) for _ in layers] for part in parts}
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        for layer in layers:
            for part in parts:
                for m in sum(_pieces(layer, arch, part, grouped), []):
                    for p in (m.weight, m.bias):
                        if p is not None:
                            p.requires_grad_(True)
        for batch in batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            with torch.no_grad():
                for i, layer in enumerate(layers):
                    for part in parts:
                        rows, cols = _pieces(layer, arch, part, grouped)
                        acc[part][i] += _first_order(rows, cols, units[part]).pow(2).cpu()
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return acc


def _keep(scores: Any, n_keep: int) -> Any:
    """Indices of the ``n_keep`` largest scores, in increasing order (the layout is kept)."""
    import torch

    return torch.topk(scores, n_keep).indices.sort().values


def _ffn(model: Any, arch: str, amount: float, scores: list) -> dict[str, Any]:
    """Keep the ``1 - amount`` best-scoring FFN neurons of every layer (``scores``: ``(I,)`` per layer)."""
    import torch

    layers = _layers(model, arch)
    before = model.config.intermediate_size
    n_keep = max(1, round((1 - amount) * before))
    with torch.no_grad():
        for layer, score in zip(layers, scores):
            idx = _keep(score, n_keep)
            if arch == "bert":
                layer.intermediate.dense = _shrink(layer.intermediate.dense, idx, 0)
                layer.output.dense = _shrink(layer.output.dense, idx, 1)
            else:
                mlp = layer.mlp
                mlp.gate_proj = _shrink(mlp.gate_proj, idx, 0)
                mlp.up_proj = _shrink(mlp.up_proj, idx, 0)
                mlp.down_proj = _shrink(mlp.down_proj, idx, 1)
                if hasattr(mlp, "intermediate_size"):
                    mlp.intermediate_size = n_keep
    model.config.intermediate_size = n_keep
    return {"ffn_before": before, "ffn_after": n_keep}


def _head_plan(model: Any, amount: float) -> dict[str, int]:
    """How :func:`_heads` will cut: heads ``H`` of size ``D``, ``n_groups`` groups (key/value
    heads with grouping, else one) of ``per_group`` query heads, ``keep_n`` kept in each.

    Raises:
        UsageError: ``amount`` removes no head, or every head, of a group.
    """
    cfg = model.config
    H = cfg.num_attention_heads
    if _arch(model) == "bert":
        D, kv = cfg.hidden_size // H, H  # head size; no grouping
    else:
        D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
        kv = getattr(cfg, "num_key_value_heads", None) or H
    groups = H // kv  # query heads per key/value head
    n_groups, per_group = (kv, groups) if groups > 1 else (1, H)  # heads are chosen within each group
    drop = round(amount * per_group)
    if drop < 1:
        raise UsageError(
            f"--prune {amount:g} of {per_group} heads per {'group' if groups > 1 else 'layer'} "
            f"removes none; use --prune {1.5 / per_group:.2f} or more"
        )
    if drop >= per_group:
        raise UsageError(f"--prune {amount:g} would remove every head; use a smaller amount")
    return {"H": H, "D": D, "groups": groups, "n_groups": n_groups, "per_group": per_group, "keep_n": per_group - drop}


def check_structured(model: Any, amount: Any, parts: Any) -> None:
    """Everything :func:`structured` would refuse, checked without changing ``model``.

    Raises:
        UsageError: see :func:`structured`.
    """
    amount = check_amount(amount)
    if "heads" in parse_structures(parts):
        _head_plan(model, amount)
    else:
        _arch(model)


def _heads(model: Any, arch: str, amount: float, scores: list) -> dict[str, Any]:
    """Keep the best-scoring heads of every layer (``scores``: ``(H,)`` per layer), the same
    number from each key/value group (see :func:`_head_plan`)."""
    import torch

    cfg = model.config
    plan = _head_plan(model, amount)
    H, D, groups, n_groups, per_group, keep_n = (
        plan[k] for k in ("H", "D", "groups", "n_groups", "per_group", "keep_n")
    )
    layers = _layers(model, arch)
    with torch.no_grad():
        for layer, score in zip(layers, scores):
            q, k, v, o = _attention(layer, arch)
            a = layer.attention if arch == "bert" else layer.self_attn
            score = score.view(n_groups, per_group)
            heads = torch.cat([g * per_group + _keep(row, keep_n) for g, row in enumerate(score)])  # kept, sorted
            rows = (heads[:, None] * D + torch.arange(D, device=heads.device)).reshape(-1)  # rows of W_q, cols of W_o
            if arch == "bert":
                a.self.query, a.output.dense = _shrink(q, rows, 0), _shrink(o, rows, 1)
                a.self.key, a.self.value = _shrink(k, rows, 0), _shrink(v, rows, 0)
                a.self.num_attention_heads = len(heads)
                a.self.all_head_size = len(heads) * D
            else:
                a.q_proj, a.o_proj = _shrink(q, rows, 0), _shrink(o, rows, 1)
                if groups == 1:
                    a.k_proj, a.v_proj = _shrink(k, rows, 0), _shrink(v, rows, 0)
                else:
                    a.num_key_value_groups = keep_n
    after = keep_n * n_groups
    if arch == "llama":  # a Llama-type config describes it: head_dim stays, the head counts shrink
        cfg.head_dim = D
        cfg.num_attention_heads = after
        if groups == 1:
            cfg.num_key_value_heads = after
    else:  # BERT derives the head size from hidden_size / num_attention_heads: keep both, note the change
        cfg.llmos_attention_heads = after
    return {"heads_before": H, "heads_after": after}


def exportable(model: Any) -> bool:
    """Whether ``save_pretrained`` + ``from_pretrained`` reproduce this model: False for a
    BERT-type model with pruned heads (its config cannot say so: transformers 5 dropped
    ``pruned_heads``, and the head size comes from ``hidden_size / num_attention_heads``)."""
    return getattr(getattr(model, "config", None), "llmos_attention_heads", None) is None


def structured(
    model: Any, amount: float, parts: Any = ("heads", "ffn"), calibration: list | None = None
) -> dict[str, Any]:
    """Remove ``amount`` of the attention heads and/or FFN neurons of every layer, in place
    (see the module docstring). Numbers are rounded to whole heads (per key/value group with
    grouped heads) and neurons, the same in every layer.

    Args:
        amount: share to remove, in (0, 1).
        parts: ``"heads"``, ``"ffn"`` or both (a comma-separated string or a sequence).
        calibration: batches with labels (see :func:`taylor_scores`) to rank heads and neurons
            by measured importance; None (default): by weight magnitude.

    Returns:
        ``{"method": "structured", "amount", "parts", "scores" (how they were ranked),
        "heads_before", "heads_after", "ffn_before", "ffn_after"}`` (the heads/ffn keys for the
        parts pruned).

    Raises:
        UsageError: ``amount`` outside (0, 1); an unknown part; an architecture other than
            BERT-type or Llama-type; an amount that removes no head or every head.
    """
    amount = check_amount(amount)
    parts = parse_structures(parts)
    arch = _arch(model)
    if "heads" in parts:
        _head_plan(model, amount)  # refuse before any work
    scores = taylor_scores(model, parts, calibration) if calibration else magnitude_scores(model, parts)
    out: dict[str, Any] = {
        "method": "structured",
        "amount": amount,
        "parts": list(parts),
        "scores": (
            f"first-order Taylor importance on {len(calibration)} batch{'es' if len(calibration) != 1 else ''}"
            if calibration
            else "weight magnitude"
        ),
    }
    if "heads" in parts:
        out.update(_heads(model, arch, amount, scores["heads"]))
    if "ffn" in parts:
        out.update(_ffn(model, arch, amount, scores["ffn"]))
    return out
