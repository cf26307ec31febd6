"""The CPU dropout draw (xtts_ft/model/cpu_dropout.py): torch's dropout contract, its share of zeros,
transformers' GPT-2 attention unchanged in eval, and the masks replayed by activation checkpointing."""

import pytest
import torch

from xtts_ft.model import cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_keep_mask_keeps_one_minus_p_and_follows_torchs_generator(p):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    mask = cpu_dropout.keep_mask((1001, 999), p, torch.device("cpu"))  # an odd count: the last int64 half unused
    assert mask.dtype == torch.bool and mask.shape == (1001, 999)
    # 1e6 draws: the share kept is within 5 standard deviations of 1 - p.
    assert abs(mask.float().mean().item() - (1 - p)) < 5 * ((p * (1 - p)) / mask.numel()) ** 0.5
    torch.set_rng_state(state)  # what checkpointing's replay and a resumed run do
    assert torch.equal(cpu_dropout.keep_mask((1001, 999), p, torch.device("cpu")), mask)
    assert not torch.equal(cpu_dropout.keep_mask((1001, 999), p, torch.device("cpu")), mask)  # the generator moved on


def test_dropout_keeps_torchs_contract():
    x = torch.rand(64, 257) + 1.0
    torch.manual_seed(1)
    out = cpu_dropout.apply_dropout(x, 0.25)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.75) and 0.6 < kept.float().mean() < 0.9
    assert cpu_dropout.apply_dropout(x, 0.25, training=False) is x and cpu_dropout.apply_dropout(x, 0.0) is x
    assert torch.equal(cpu_dropout.apply_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        cpu_dropout.apply_dropout(x, -0.1)


def _gpt2(layers=2):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=64))


def test_gpt2_gives_the_same_outputs_in_eval_and_drops_in_training():
    model = _gpt2().eval()
    for name, module in model.named_modules():  # only the attention maps' dropout is ours: the rest off
        if isinstance(module, torch.nn.Dropout) and not name.endswith("attn_dropout"):
            module.p = 0.0
    x = torch.randn(3, 20, 64)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    expected = model(inputs_embeds=x, attention_mask=mask).last_hidden_state
    cpu_dropout.use_fast_cpu_dropout(model)
    assert model.config._attn_implementation == cpu_dropout.ATTENTION
    got = model(inputs_embeds=x, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
    model.train()
    first, second = (model(inputs_embeds=x, attention_mask=mask).last_hidden_state for _ in range(2))
    assert not torch.allclose(first, second)  # dropout draws anew in training


def test_checkpointing_replays_the_same_masks():
    """Selective checkpointing recomputes the dropout in backward from the saved RNG state: the same
    loss and gradients as keeping every activation (the trainer's grad_checkpointing_keeps=linear_outputs)."""
    from xtts_ft.train.gpt import enable_activation_checkpointing

    x = torch.randn(2, 24, 64)
    results = []
    for checkpointing in (False, True):
        model = _gpt2()
        cpu_dropout.use_fast_cpu_dropout(model)
        model.train()
        if checkpointing:
            enable_activation_checkpointing(model, "linear_outputs")
        torch.manual_seed(7)
        loss = model(inputs_embeds=x).last_hidden_state.pow(2).mean()
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 10
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6)


def test_the_rule_follows_torchs_own_dispatch(monkeypatch):
    """torch's bernoulli_ is MKL's vectorised draw only with MKL on an Intel CPU."""
    import builtins
    import io

    real_open = builtins.open

    def cpuinfo(vendor):
        return lambda path, *a, **k: io.StringIO(f"processor\t: 0\nvendor_id\t: {vendor}\n") if path == "/proc/cpuinfo" else real_open(path, *a, **k)

    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    monkeypatch.setattr(builtins, "open", cpuinfo("GenuineIntel"))
    assert cpu_dropout.torch_draws_vectorised()
    monkeypatch.setattr(builtins, "open", cpuinfo("AuthenticAMD"))
    assert not cpu_dropout.torch_draws_vectorised()
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    monkeypatch.setattr(builtins, "open", cpuinfo("GenuineIntel"))
    assert not cpu_dropout.torch_draws_vectorised()
