"""Dropout whose masks are kept as booleans under selective checkpointing (xtts_ft/model/dropout_masks.py):
the same masks as torch's dropout, the same attention as transformers' sdpa."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from xtts_ft.model import dropout_masks


def test_same_masks_as_torch_dropout():
    x = torch.randn(3, 5, 64, 64)
    torch.manual_seed(7)
    expected = torch.nn.functional.dropout(x, 0.1, True)
    torch.manual_seed(7)
    got = dropout_masks.dropout_with_bool_mask(x, 0.1, True)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (got == 0).sum() == (expected == 0).sum() > 0
    after_ours = torch.rand(())
    torch.manual_seed(7)
    torch.nn.functional.dropout(x, 0.1, True)
    assert torch.rand(()) == after_ours  # as many draws consumed: the RNG states a checkpoint saves are the same
    assert dropout_masks.dropout_with_bool_mask(x, 0.1, False) is x
    assert torch.equal(dropout_masks.dropout_with_bool_mask(x, 1.0, True), torch.zeros_like(x))
    module = dropout_masks.MaskKeepingDropout(0.1).eval()
    assert module(x) is x


class _Attention(torch.nn.Module):
    is_causal = True


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
def test_attention_is_sdpa_with_its_dropout_written_out(mask_kind):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 9, 8, generator=generator, requires_grad=True) for _ in range(3))
    mask = None
    if mask_kind != "causal":
        mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(2, 1, 9, 9).clone()
        mask[1, :, :, 6:] = False  # the second row's padding
        mask[1, :, 6:, :] = torch.ones(3, 9, dtype=torch.bool).tril(6)  # padded queries still see something
        if mask_kind == "additive":
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    module = _Attention().train()
    outputs = {}
    for name, function in (("sdpa", sdpa_attention_forward), ("ours", dropout_masks.attention)):
        torch.manual_seed(3)
        out, _ = function(module, query, key, value, mask, dropout=0.2, scaling=0.3)
        grads = torch.autograd.grad(out.square().sum(), (query, key, value))
        outputs[name] = (out, *grads)
    for ours, sdpa in zip(outputs["ours"], outputs["sdpa"]):
        torch.testing.assert_close(ours, sdpa, rtol=1e-5, atol=1e-5)
    module.eval()  # not training: sdpa itself, to the bit
    assert torch.equal(dropout_masks.attention(module, query, key, value, mask, scaling=0.3)[0],
                       sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)[0])
