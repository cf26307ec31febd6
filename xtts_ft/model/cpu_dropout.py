"""Dropout for GPT training on CPU whose random draw costs less than torch's.

On CPU, torch's dropout draws its mask with `bernoulli_`, which uses MKL's vectorised generator on
Intel CPUs only; elsewhere (the AMD EPYC of our benchmarks) it draws one double per element, serially:
151 ms for one attention map of a full-size step (batch 4 × 16 heads × 409 × 409). GPT-2 drops 10 % of
every attention map (and of the residual branches), and selective checkpointing draws each mask twice
(forward, and backward's recomputation from the saved RNG state), so on CPU the draws were ~10 % of a
LoRA step. Here each element's mask comes from 32 random bits of torch's own generator (int64 draws,
split in two): 60 ms for the same map, keep probability exact to 2^-32, scaling as torch's (1 / (1 - p)).
The draws come from torch's global CPU generator, so seeding, the trainer's RNG state in its checkpoints
and checkpointing's replay in backward work as with torch's dropout; the masks themselves differ from
torch's, so a run is not bit-identical to one with torch's dropout.

`use_fast_cpu_dropout(transformer)` puts it in a transformers GPT-2 model's attention: a function
registered through transformers' `AttentionInterface` (GPT-2's eager attention, the mask drawn here).
Only for training on CPU: on CUDA, torch's dropout draws with Philox in parallel and is left alone.
"""

from __future__ import annotations

import math
import platform

import torch

ATTENTION = "xtts_ft_cpu_dropout"


def keep_mask(shape, p: float, device: torch.device) -> torch.Tensor:
    """Booleans, each True with probability 1 - p (exact to 2^-32), from torch's global generator."""
    count = math.prod(shape)
    # int64 over its whole range: two uniform 32-bit halves per draw (random_() alone leaves the top bit 0).
    bits = torch.empty((count + 1) // 2, dtype=torch.int64, device=device).random_(-(2**63), None)
    threshold = round((1.0 - p) * 2**32) - 2**31  # int32 < threshold for a (1 - p) share of 2^32 values
    return bits.view(torch.int32)[:count].view(shape) < threshold


def apply_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """torch.nn.functional.dropout's contract (zero with probability p, scale the rest by 1 / (1 - p))."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return torch.where(keep_mask(x.shape, p, x.device), x * (1.0 / (1.0 - p)), 0.0)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers' GPT-2 eager attention, its dropout drawn as above. Same signature and return."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.nn.functional.softmax(weights, dim=-1).type(value.dtype)
    weights = apply_dropout(weights, dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2), weights


def register() -> None:
    """The attention function and its mask format (eager's additive masks) under one name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def torch_draws_vectorised() -> bool:
    """Whether torch's CPU bernoulli_ is MKL's vectorised one: only with MKL on an Intel CPU (ATen's
    bernoulli_scalar_kernel checks the vendor). A rule, not a timing, so a resumed run on the same kind
    of machine draws its masks the same way as the run it continues."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            vendor = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("vendor_id")), "")
    except OSError:  # not Linux
        vendor = platform.processor()
    return "intel" in vendor.lower()


def use_fast_cpu_dropout(transformer: torch.nn.Module) -> None:
    """Switch a transformers GPT-2 model (coqui's `gpt.gpt`) to the attention function above. Only the
    attention maps' dropout: the residual and embedding dropouts (nn.Dropout modules, 1/6 of the elements)
    keep torch's draw, because drawing those here saved no time at full size and raised the peak memory of
    selective checkpointing by 0.5 GB (small short-lived tensors in glibc's heap; BENCHMARKS.md)."""
    register()
    transformer.config._attn_implementation = ATTENTION
