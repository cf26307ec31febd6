"""GPT-2 dropout on CPU under selective activation checkpointing: each mask drawn once, kept as booleans.

Selective checkpointing (`grad_checkpointing_keeps=linear_outputs`) keeps each block's linear outputs and runs
the rest again in backward, dropout included: its mask is drawn a second time from the saved RNG state. On CPUs
where torch's Bernoulli draw is serial (all but Intel CPUs with MKL: one double per element, ~130-150 ms for one
attention map of a full-size step, batch 4 x 16 heads x 409 x 409, 30 maps a step) that second draw was ~8 % of
a LoRA step. Keeping torch's own mask instead would keep a float tensor (43 MB per map, 1.3 GB a step).

Here the mask is drawn by the same Bernoulli draw into a bool tensor, so from the same random stream as torch's
dropout and, element for element, the same mask (10.7 MB per map); the selective checkpointing policy
(`xtts_ft.train.gpt.keep_linear_outputs`) keeps it (`is_kept_dropout_mask`) and recomputes only the cheap
`where`. Without checkpointing torch's dropout stays: its float mask makes the fastest backward (a bool mask's
costs ~40 ms more per map), and the masks are drawn once anyway.

`keep_dropout_masks(transformer)` puts it into a transformers GPT-2 model (coqui's `gpt.gpt`): its attention
through transformers' `AttentionInterface` (sdpa's math path written out, as torch runs it on CPU whenever
dropout is on) and its `nn.Dropout` modules (residual and embedding dropout). Everything but CPU training
with dropout on (inference, eval, CUDA, where torch's fused dropout is one kernel) runs exactly what it ran
before: transformers' sdpa attention and torch's dropout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION = "xtts_ft_kept_dropout_masks"


def dropout_with_bool_mask(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """torch.nn.functional.dropout's contract; on CPU its mask is a bool tensor (see the module's doc)."""
    if not training or p == 0.0 or x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    keep = torch.bernoulli(torch.empty_like(x, dtype=torch.bool), 1.0 - p)  # out of place: checkpointing can keep it
    return torch.where(keep, x, 0.0).mul_(1.0 / (1.0 - p))


def is_kept_dropout_mask(op, *args) -> bool:
    """Whether a dispatched op is the draw of `dropout_with_bool_mask`'s mask (for the selective checkpointing policy)."""
    return op is torch.ops.aten.bernoulli.p and args[0].dtype == torch.bool


class MaskKeepingDropout(nn.Dropout):
    """nn.Dropout through `dropout_with_bool_mask` (the same p, train/eval switch and repr)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout_with_bool_mask(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention (same signature and masks); while training on CPU with dropout on, the
    math torch's sdpa runs then (it has no fused CPU kernel with dropout), its dropout through `dropout_with_bool_mask`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_length, kv_length = query.shape[2], key.shape[2]
    causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and attention_mask is None and q_length > 1
    written_out = (
        module.training and dropout > 0.0 and query.device.type == "cpu" and kwargs.get("position_bias") is None
        and key.shape[1] == query.shape[1] and not (causal and kv_length != q_length)
    )
    if not written_out:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    root = math.sqrt(scaling)  # as torch's math path: q and k scaled (small), not the T x T scores
    scores = torch.matmul(query * root, key.transpose(-1, -2) * root)
    if causal:
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # sdpa's masks: True attends
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:  # additive
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1).type(value.dtype)
    weights = dropout_with_bool_mask(weights, dropout, True)
    return torch.matmul(weights, value).transpose(1, 2), None


def keep_dropout_masks(transformer: nn.Module) -> None:
    """Switch a transformers GPT-2 model to the attention above (with sdpa's masks) and its nn.Dropout
    modules to MaskKeepingDropout: for training under selective checkpointing (inference never needs it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    transformer.config._attn_implementation = ATTENTION
    for parent in list(transformer.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MaskKeepingDropout(child.p, child.inplace))
