import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.settings import REPO, TRAIN_OVERRIDES, demo_overrides
from xtts_ft.config import compose
from xtts_ft.data.audio import load_audio
from xtts_ft.data.batches import ReferencePicker, collate, encode_samples
from xtts_ft.data.sample import read_manifest
from xtts_ft.model import lora
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import load_dvae, load_xtts
from xtts_ft.stages import export, train_gpt
from xtts_ft.train import cache
from xtts_ft.train import gpt as gpt_recipe
from xtts_ft.train.runtime import DatasetReadLock, RunLock, Runtime

QUIET = ["eval_every=1000", "eval_sentences=[]"]


def test_loss_goes_down_on_a_fixed_batch(tiny_model_dir, prepared):
    torch.manual_seed(0)
    _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    gpt = xtts.gpt.train()
    dvae, mel_stats = load_dvae(tiny_model_dir)
    features = GptFeatures(dvae, mel_stats)
    manifest = prepared / "train.jsonl"
    items, skipped = encode_samples(read_manifest(manifest)[:4], xtts.tokenizer, 200, 255995, manifest)
    assert len(items) == 4 and not skipped
    rng = np.random.default_rng(0)
    references = ReferencePicker(items)([0, 1, 2, 3], rng)
    assert all(ref != item.audio for ref, item in zip(references, items))  # another clip of the same voice
    assert all(ref.name.split("__")[1].split("_")[0] == item.speaker for ref, item in zip(references, items))
    batch = collate(items, references, (3.0, 6.0), rng)
    assert batch["wavs"].shape[0] == 4 and batch["cond_wavs"].shape[0] == 4
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss_text, loss_mel = gpt_recipe.gpt_losses(gpt, features, batch, torch.device("cpu"))
        loss = loss_text + loss_mel
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_dvae_code_cache_is_reused_and_invalidated(tmp_path, tiny_model_dir, prepared):
    _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    dvae, mel_stats = load_dvae(tiny_model_dir)
    features = GptFeatures(dvae, mel_stats)
    manifest = tmp_path / "train.jsonl"
    shutil.copy(prepared / "train.jsonl", manifest)
    shutil.copytree(prepared / "wavs", tmp_path / "wavs")
    items, _ = encode_samples(read_manifest(manifest)[:5], xtts.tokenizer, 200, 255995, manifest)
    single = Runtime(0, 1, torch.device("cpu"))

    def attach(dvae_hash):
        return cache.attach_codes(items, features, tmp_path / "train.codes.pt", dvae_hash, "cpu", single, "codes")

    first, computed = attach("dvae-a")
    assert computed == 5
    # The cached codes are what the DVAE gives for the clip alone: ~one code per 1024 samples.
    for item in first:
        assert item.codes.dtype == torch.int16 and item.codes.numel() == -(-(item.num_samples // 256 + 1) // 4)
        wav = torch.from_numpy(load_audio(item.audio, 22050)).unsqueeze(0)
        torch.testing.assert_close(item.codes.long(), features.audio_codes(wav).squeeze(0))
    again, computed = attach("dvae-a")
    assert computed == 0 and all(torch.equal(a.codes, b.codes) for a, b in zip(first, again))
    # A changed clip is recomputed alone; a changed DVAE recomputes everything.
    audio = items[2].audio.read_bytes()
    items[2].audio.write_bytes(audio[:-2000] + bytes(2000))
    _, computed = attach("dvae-a")
    assert computed == 1
    _, computed = attach("dvae-b")
    assert computed == 5
    # A truncated cache file is rebuilt, not trusted.
    (tmp_path / "train.codes.pt").write_bytes(b"garbage")
    _, computed = attach("dvae-b")
    assert computed == 5


def test_training_run_writes_state_checkpoints_and_tensorboard(trained):
    run_dir = trained.parent
    state = torch.load(trained, map_location="cpu", weights_only=True)
    assert state["step"] == 30
    assert {
        "gpt",
        "optimizer",
        "scheduler",
        "scaler",
        "torch_rng",
        "epoch",
        "batch_in_epoch",
        "sampler",
        "config",
    } <= set(state)
    assert not any(
        k.startswith("gpt_inference") or k.startswith("gpt.wte") for k in state["gpt"]
    )  # eval audio's wrapper
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["step"] == 30 and progress["samples"] == 120 and progress["train_seconds"] > 0
    # keep_last=3 weight-only checkpoints and the best by eval loss.
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert kept == ["step_00000010.pt", "step_00000020.pt", "step_00000030.pt"]
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["step"] in (10, 20, 30) and set(best["gpt"]) == set(state["gpt"])

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    evals = [e.value for e in events.Scalars("eval/loss")]
    assert len(evals) == 3 and best["eval_loss"] == pytest.approx(min(evals), rel=1e-6)
    for tag in (
        "train/lr",
        "train/grad_norm",
        "train/samples_per_second",
        "train/audio_seconds_per_second",
        "train/peak_memory_mb",
    ):
        assert len(events.Scalars(tag)) == 30, tag
    assert events.Scalars("train/peak_memory_mb")[-1].value > 100
    assert len(events.Audio("eval_audio/0")) == 3 and len(events.Images("eval_mel/0")) == 3


def test_export_picks_the_best_or_a_kept_step(tmp_path, workdir, trained):
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")] + ["run_name=demo"]
    best = torch.load(trained.parent / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    out = export.run(compose("export", paths + ["checkpoint=best", f"out_dir={tmp_path / 'best'}"]))
    assert json.loads((out / "xtts_ft.json").read_text())["training"]["gpt_steps"] == best["step"]
    weights = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["model"]
    torch.testing.assert_close(weights["gpt.mel_head.weight"], best["gpt"]["mel_head.weight"], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="step_00000005.pt does not exist.*kept: best.pt, step_00000010.pt"):
        export.run(compose("export", paths + ["checkpoint=5", f"out_dir={tmp_path / 'five'}"]))
    with pytest.raises(ValueError, match="checkpoint=newest is not a checkpoint"):
        export.run(compose("export", paths + ["checkpoint=newest", f"out_dir={tmp_path / 'newest'}"]))


def _losses(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_killed_run_resumes_on_the_same_trajectory(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + ["save_every=3", "max_steps=40"]
    straight = train_gpt.run(compose("train_gpt", overrides + [f"paths.runs_dir={tmp_path / 'a'}"]))

    killed = overrides + [f"paths.runs_dir={tmp_path / 'b'}"]
    code = f"from xtts_ft.stages import train_gpt; from xtts_ft.config import compose; train_gpt.run(compose('train_gpt', {killed!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = tmp_path / "b" / "demo" / "gpt" / "progress.json"
    deadline = time.time() + 180
    while time.time() < deadline and not (progress.is_file() and json.loads(progress.read_text())["step"] >= 7):
        time.sleep(0.02)
    proc.kill()  # SIGKILL, somewhere after step 7: no chance to clean up
    proc.wait()
    cfg = compose("train_gpt", killed)
    assert not train_gpt.is_done(cfg), "the run finished before it could be killed"
    resumed = train_gpt.run(cfg)
    assert train_gpt.is_done(cfg)

    a = torch.load(straight, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert (b["step"], b["epoch"], b["batch_in_epoch"]) == (a["step"], a["epoch"], a["batch_in_epoch"]) == (40, 3, 10)
    for key, value in a["gpt"].items():
        torch.testing.assert_close(b["gpt"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # Same loss at every step, each step logged once.
    loss_a, loss_b = _losses(straight.parent), _losses(resumed.parent)
    assert [s for s, _ in loss_b] == list(range(1, 41))
    np.testing.assert_allclose([v for _, v in loss_b], [v for _, v in loss_a], rtol=1e-5)


def test_resume_refuses_a_changed_data_path(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + [f"paths.runs_dir={tmp_path}"]
    train_gpt.run(compose("train_gpt", overrides + ["max_steps=1"]))
    with pytest.raises(ValueError, match="global_batch: 4 → 2"):
        train_gpt.run(compose("train_gpt", overrides + ["max_steps=2", "batch_size=2"]))
    with pytest.raises(FileExistsError, match="already holds a training run$"):
        train_gpt.run(compose("train_gpt", overrides + ["max_steps=2", "resume=false"]))


def test_a_second_run_in_a_live_run_directory_is_refused(tmp_path, tiny_model_dir, prepared, workdir):
    cfg = compose(
        "train_gpt", demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + [f"paths.runs_dir={tmp_path}", "max_steps=1"]
    )
    with RunLock(train_gpt.run_dir(cfg)):
        with pytest.raises(RuntimeError, match=r"is in use by a running training \(pid \d+ on"):
            train_gpt.run(cfg)
    # Released (as a crashed run's lock is, by the kernel): the same run now goes ahead.
    assert train_gpt.run(cfg).is_file()


def test_divergence_stops_the_run_and_keeps_the_last_good_state(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + [f"paths.runs_dir={tmp_path}"]
    state_path = train_gpt.run(compose("train_gpt", overrides + ["max_steps=2"]))
    before = state_path.read_bytes()
    with pytest.raises(
        FloatingPointError, match=r"training diverged at step 3: .*grad norm nan.*last good state is .*state.pt"
    ):
        cfg = compose("train_gpt", overrides + ["max_steps=4"])
        cfg.text_ce_weight = float("nan")  # past compose's value check: the guard is what is tested here
        train_gpt.run(cfg)
    assert state_path.read_bytes() == before
    assert json.loads((state_path.parent / "progress.json").read_text())["step"] == 2


def _train_watching_the_mlps(overrides: list) -> tuple:
    """train_gpt.run, and what the GPT-2 blocks' MLPs did in training mode (evals run in eval mode):
    how many times they started (a checkpointed block runs its forward again in backward, to recompute
    what it did not keep), the autocast dtype each start saw (None: no autocast), and the dtypes of
    their outputs. Starts, not ends: torch's recomputation stops early, inside the MLP, once it has
    recomputed the last tensor backward needs, so a recomputed MLP never returns."""
    seen = {"calls": 0, "autocast": set(), "dtypes": set()}

    def count(module, args):
        if type(module).__name__ == "GPT2MLP" and module.training:
            device = args[0].device.type
            seen["calls"] += 1
            seen["autocast"].add(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)

    def watch(module, args, output):
        if type(module).__name__ == "GPT2MLP" and module.training:
            seen["dtypes"].add(output.dtype)

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(count),
        torch.nn.modules.module.register_module_forward_hook(watch),
    ]
    try:
        return train_gpt.run(compose("train_gpt", overrides)), seen
    finally:
        for handle in handles:
            handle.remove()


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + ["max_steps=3"]
    plain, plain_seen = _train_watching_the_mlps(overrides + [f"paths.runs_dir={tmp_path / 'a'}"])
    assert plain_seen["calls"] > 0 and plain_seen["autocast"] == {None} and plain_seen["dtypes"] == {torch.float32}
    ckpt, ckpt_seen = _train_watching_the_mlps(
        overrides + [f"paths.runs_dir={tmp_path / 'b'}", "grad_checkpointing=true"]
    )
    # Checkpointing took effect: every block ran its forward twice, once more in backward.
    assert ckpt_seen == {**plain_seen, "calls": 2 * plain_seen["calls"]}
    np.testing.assert_allclose([v for _, v in _losses(ckpt.parent)], [v for _, v in _losses(plain.parent)], rtol=1e-5)
    # Selective checkpointing recomputes dropout too: the same masks (its saved RNG state), the same steps.
    selective, selective_seen = _train_watching_the_mlps(
        overrides
        + [
            f"paths.runs_dir={tmp_path / 's'}",
            "grad_checkpointing=true",
            "grad_checkpointing_keeps=linear_outputs",
        ]
    )
    assert selective_seen == {**plain_seen, "calls": 2 * plain_seen["calls"]}
    np.testing.assert_allclose(
        [v for _, v in _losses(selective.parent)], [v for _, v in _losses(plain.parent)], rtol=1e-5
    )
    with pytest.raises(ValueError, match="and checkpointing is off$"):
        train_gpt.run(
            compose(
                "train_gpt",
                overrides + [f"paths.runs_dir={tmp_path / 'e'}", "grad_checkpointing_keeps=linear_outputs"],
            )
        )
    with pytest.raises(ValueError, match="grad_checkpointing_keeps=everything is not a choice"):
        train_gpt.run(
            compose(
                "train_gpt",
                overrides
                + [
                    f"paths.runs_dir={tmp_path / 'e'}",
                    "grad_checkpointing=true",
                    "grad_checkpointing_keeps=everything",
                ],
            )
        )
    bf16, bf16_seen = _train_watching_the_mlps(overrides + [f"paths.runs_dir={tmp_path / 'c'}", "precision=bf16"])
    # bf16 took effect: the blocks ran under bfloat16 autocast and computed in bfloat16, once each.
    assert bf16_seen == {"calls": plain_seen["calls"], "autocast": {torch.bfloat16}, "dtypes": {torch.bfloat16}}
    bf16_losses = [v for _, v in _losses(bf16.parent)]
    assert np.isfinite(bf16_losses).all()
    np.testing.assert_allclose(bf16_losses, [v for _, v in _losses(plain.parent)], rtol=0.05)  # close, not equal
    bf16_selective, bf16_selective_seen = _train_watching_the_mlps(
        overrides
        + [
            f"paths.runs_dir={tmp_path / 'f'}",
            "precision=bf16",
            "grad_checkpointing=true",
            "grad_checkpointing_keeps=linear_outputs",
        ]
    )
    # The recomputation in backward runs under autocast too: bfloat16 only, twice per block.
    assert bf16_selective_seen == {**bf16_seen, "calls": 2 * plain_seen["calls"]}
    np.testing.assert_allclose(
        [v for _, v in _losses(bf16_selective.parent)], bf16_losses, rtol=1e-3
    )  # recomputed under autocast alike
    with pytest.raises(ValueError, match="precision=fp16 needs a CUDA device"):
        train_gpt.run(
            compose(
                "train_gpt", overrides + [f"paths.runs_dir={tmp_path / 'd'}", "precision=fp16", "model.device=cpu"]
            )
        )


def _linear_calls_in_backward(transformer, keeps) -> int:
    """How many matrix products (aten mm/addmm) one backward of the GPT-2 body runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountLinear(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                CountLinear.calls += 1
            return func(*args, **(kwargs or {}))

    if keeps is not None:
        gpt_recipe.enable_activation_checkpointing(transformer, keeps)
    inputs = torch.randn(2, 7, transformer.config.n_embd, generator=torch.Generator().manual_seed(0))
    out = transformer(inputs_embeds=inputs).last_hidden_state.square().sum()
    with CountLinear():
        out.backward()
    return CountLinear.calls


def test_selective_checkpointing_keeps_the_linear_outputs(tiny_model_dir):
    """grad_checkpointing_keeps=linear_outputs: backward recomputes no matrix product of the forward
    (as many as without checkpointing), where full checkpointing reruns every one of them."""
    calls = {}
    for keeps in (None, "nothing", "linear_outputs"):
        _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
        transformer = xtts.gpt.gpt.train()
        calls[keeps] = _linear_calls_in_backward(transformer, keeps)
    layers = len(transformer.h)
    assert calls["linear_outputs"] == calls[None]
    assert calls["nothing"] == calls[None] + 4 * layers  # c_attn, attention c_proj, c_fc, MLP c_proj per block

    # Under LoRA the policy also recomputes the adapters' low-rank B (A x) products (one per adapted
    # layer, 4 per block), whose outputs are as large as the layers' own: only those are rerun.
    cfg = compose("train_gpt", ["model=tiny", "method=lora", "lora.rank=4"])
    for keeps in (None, "linear_outputs"):
        _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
        lora.apply_lora(xtts.gpt, cfg.lora, [])
        calls[f"lora {keeps}"] = _linear_calls_in_backward(xtts.gpt.gpt.train(), keeps)
    assert calls["lora linear_outputs"] == calls["lora None"] + 4 * layers


def test_which_gpt_parts_train(tiny_model_dir):
    _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    gpt = xtts.gpt
    gpt_recipe.select_trainable(gpt, freeze_text_embeddings=False, train_last_layers=0)
    assert all(p.requires_grad for p in gpt.parameters())
    gpt_recipe.select_trainable(gpt, freeze_text_embeddings=True, train_last_layers=0)
    assert not gpt.text_embedding.weight.requires_grad and gpt.mel_embedding.weight.requires_grad
    gpt_recipe.select_trainable(gpt, freeze_text_embeddings=False, train_last_layers=1)
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("gpt.h.1.", "gpt.ln_f.", "final_norm.", "text_head.", "mel_head.")) for n in trainable
    )
    assert any(n.startswith("gpt.h.1.") for n in trainable) and not any(n.startswith("gpt.h.0.") for n in trainable)
    with pytest.raises(ValueError, match="train_last_layers=5 but the GPT has 2 layers"):
        gpt_recipe.select_trainable(gpt, False, 5)
    assert not gpt.gpt.gradient_checkpointing
    gpt_recipe.enable_activation_checkpointing(gpt.gpt)
    assert gpt.gpt.gradient_checkpointing


def test_weight_decay_spares_biases_norms_and_embeddings(tiny_model_dir):
    _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    decay, no_decay = gpt_recipe.parameter_groups(xtts.gpt, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    decayed, spared = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert id(xtts.gpt.text_embedding.weight) in spared
    assert id(xtts.gpt.final_norm.weight) in spared and id(xtts.gpt.text_head.bias) in spared
    assert id(xtts.gpt.text_head.weight) in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(xtts.gpt.parameters()))


def test_missing_manifest_is_a_clear_error(tmp_path, tiny_model_dir, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + [f"paths.processed_dir={tmp_path}", "max_steps=1"]
    with pytest.raises(FileNotFoundError, match="manifest .* does not exist$"):
        train_gpt.run(compose("train_gpt", overrides))


def test_best_checkpoint_by_cer_of_the_eval_sentences(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = (
        demo_overrides(workdir)
        + TRAIN_OVERRIDES
        + [
            f"paths.runs_dir={tmp_path}",
            "max_steps=6",
            "eval_every=3",
            "save_every=6",
            "best_metric=cer",
            "eval_sentences=[The birch canoe slid on the smooth planks.]",
        ]
    )
    state = train_gpt.run(compose("train_gpt", overrides))
    events = EventAccumulator(str(state.parent / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    cers = {e.step: e.value for e in events.Scalars("eval/cer")}
    assert sorted(cers) == [3, 6]
    # Each logged CER is the CER of the transcript logged beside it (texts cleaned as English on both sides).
    from xtts_ft.evaluation.metrics import cer

    heard = {
        e.step: e.tensor_proto.string_val[0].decode().split(" → ", 1)
        for e in events.Tensors("eval_transcript/0/text_summary")
    }
    assert {step: cer(text, transcript, "en") for step, (text, transcript) in heard.items()} == pytest.approx(cers)
    best = torch.load(state.parent / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["cer"] == pytest.approx(min(cers.values())) and best["step"] == min(cers, key=lambda k: (cers[k], k))
    assert torch.load(state, map_location="cpu", weights_only=True)["best_metric"] == "cer"
    with pytest.raises(ValueError, match="English-only"):
        train_gpt.run(compose("train_gpt", overrides + ["eval_language=fr", f"paths.runs_dir={tmp_path / 'fr'}"]))
    with pytest.raises(ValueError, match="best_metric=wer is not one of eval_loss, cer"):
        train_gpt.run(compose("train_gpt", overrides + ["best_metric=wer", f"paths.runs_dir={tmp_path / 'w'}"]))


KEEP_FREED_PROBE = """
import sys, numpy as np
from xtts_ft.train import runtime as rt
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "keep":
    assert rt.keep_freed_host_memory()
blocks = [np.ones(4 * 2**20 // 8) for _ in range(100)]  # 400 MB in 4 MB blocks, as a step's activations
held = rss_mb()
del blocks
print(held - rss_mb())  # MB handed back to the kernel on free
"""


def test_keep_freed_memory_holds_what_a_step_frees_for_the_next():
    """glibc's defaults hand freed blocks back (to be faulted in again next step); the CPU
    training setting keeps them. Each probe runs in its own process: mallopt is process-wide."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    returned = {}
    for mode in ("default", "keep"):
        probe = subprocess.run(
            [sys.executable, "-c", KEEP_FREED_PROBE, mode], capture_output=True, text=True, check=True
        )
        returned[mode] = float(probe.stdout)
    assert returned["default"] > 300  # the kernel got most of the 400 MB back
    assert returned["keep"] < 50  # kept for reuse


def test_prepare_does_not_replace_a_dataset_a_training_reads(tmp_path, tiny_model_dir, prepared, workdir, monkeypatch):
    from xtts_ft.io_utils import FileLock, dir_lock_path
    from xtts_ft.stages import prepare

    cfg = compose(
        "train_gpt", demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + [f"paths.runs_dir={tmp_path}", "max_steps=1"]
    )
    manifest, inode = (prepared / "train.jsonl").read_bytes(), prepared.stat().st_ino
    refusals = []

    def while_training(cfg, runtime, out):  # stands for the loop: `prepare force=true` from another shell meanwhile
        with pytest.raises(RuntimeError) as err:
            prepare.run(compose("prepare", demo_overrides(workdir) + ["force=true"]))
        refusals.append(str(err.value))
        return out

    monkeypatch.setattr(train_gpt, "train", while_training)
    other_run = tmp_path / "other" / "gpt"
    with DatasetReadLock(prepared, other_run):  # a second training on the same data is fine
        train_gpt.run(cfg)
    me = f"pid {os.getpid()} on "
    assert re.match(
        rf"{re.escape(str(prepared))} is in use by the training run {re.escape(str(other_run))} \({me}.*\); "
        rf"the training run {re.escape(str(train_gpt.run_dir(cfg)))} \({me}.*\); it is not replaced while in use",
        refusals[0],
    )
    assert (prepared / "train.jsonl").read_bytes() == manifest and prepared.stat().st_ino == inode  # not swapped

    # The other way round: no training starts on a dataset being (re)built.
    with FileLock(dir_lock_path(prepared), "unused {holder}"):
        with pytest.raises(
            RuntimeError,
            match=rf"{re.escape(str(prepared))} is being prepared \(pid \d+ on .*\); start the training when",
        ):
            train_gpt.run(cfg)


def test_a_corrupt_state_is_named_with_the_newest_intact_checkpoint(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = (
        demo_overrides(workdir)
        + TRAIN_OVERRIDES
        + QUIET
        + [f"paths.runs_dir={tmp_path}", "save_every=1", "keep_last=2"]
    )
    state_path = train_gpt.run(compose("train_gpt", overrides + ["max_steps=2"]))
    truncated = state_path.read_bytes()[:-4096]  # a copy cut short, a disk that filled up
    state_path.write_bytes(truncated)
    (state_path.parent / "state.prev.pt").unlink()  # and the previous state lost: nothing left to resume from
    checkpoints = state_path.parent / "checkpoints"
    altered = bytearray((checkpoints / "step_00000002.pt").read_bytes())
    altered[len(altered) // 2] ^= 0xFF  # one flipped bit in a tensor: its CRC fails
    (checkpoints / "step_00000002.pt").write_bytes(bytes(altered))

    with pytest.raises(ValueError) as err:
        train_gpt.run(compose("train_gpt", overrides + ["max_steps=4"]))
    message = str(err.value)
    assert message.startswith(f"{state_path} is truncated or corrupted")
    assert (
        f"The newest intact checkpoint, {checkpoints / 'step_00000001.pt'}, holds the gpt weights of step 1 but not the "
        "optimizer, scheduler, RNG and sampler position, so this run cannot continue exactly from it."
    ) in message
    assert "`xtts-ft export run_name=demo checkpoint=1 out_dir=exports/demo-step1`" in message
    assert state_path.read_bytes() == truncated  # nothing overwritten: the user decides
    # The advice works: that checkpoint exports (the latest state cannot, and export says what can).
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.") and "runs_dir" not in o]
    with pytest.raises(
        ValueError, match=r"state.pt is not a readable xtts-ft training state .* checkpoint=1 out_dir="
    ):
        export.run(
            compose(
                "export", paths + [f"paths.runs_dir={tmp_path}", "run_name=demo", f"out_dir={tmp_path / 'latest'}"]
            )
        )
    out = export.run(
        compose(
            "export",
            paths
            + [f"paths.runs_dir={tmp_path}", "run_name=demo", "checkpoint=1", f"out_dir={tmp_path / 'salvaged'}"],
        )
    )
    assert json.loads((out / "xtts_ft.json").read_text())["training"]["gpt_steps"] == 1

    (checkpoints / "step_00000001.pt").unlink()
    with pytest.raises(ValueError, match=rf"No intact checkpoint is left in {re.escape(str(checkpoints))}: delete"):
        train_gpt.run(compose("train_gpt", overrides + ["max_steps=4"]))


def test_atomic_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    from xtts_ft import io_utils

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io_utils.torch_save({"step": torch.tensor(3)}, tmp_path / "state.pt")
    written = events[0][1]
    assert Path(written).name.startswith(".state.pt.") and Path(written).parent == tmp_path
    assert events == [("fsync", written), ("replace", written, str(tmp_path / "state.pt")), ("fsync", str(tmp_path))]
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 3

    # A directory: its whole filesystem is flushed before the rename, the parent after it.
    events.clear()
    monkeypatch.setattr(io_utils, "sync_filesystem", lambda path: events.append(("syncfs", str(path))))
    with io_utils.atomic_dir(tmp_path / "export") as built:
        (built / "model.pth").write_bytes(b"weights")
    assert events == [
        ("syncfs", str(built)),
        ("replace", str(built), str(tmp_path / "export")),
        ("fsync", str(tmp_path)),
    ]
    assert (tmp_path / "export" / "model.pth").read_bytes() == b"weights"


def test_dataset_lock_readers_share_it_and_a_writer_waits_for_none(tmp_path):
    import socket

    from xtts_ft.io_utils import FileLock, dir_lock_path

    data = tmp_path / "processed" / "demo"
    writer = lambda: FileLock(dir_lock_path(data), "written by {holder}", busy_readers="read by {holder}")  # noqa: E731
    with DatasetReadLock(data, tmp_path / "a"), DatasetReadLock(data, tmp_path / "b"):
        # A reader that ended while others read leaves its line; it is not named as a holder.
        with open(dir_lock_path(data), "a") as f:
            f.write(f"the training run {tmp_path / 'gone'} (pid 999999999 on {socket.gethostname()})\n")
        with pytest.raises(RuntimeError) as err:
            with writer():
                pass
        assert str(err.value) == (
            f"read by the training run {tmp_path / 'a'} (pid {os.getpid()} on {socket.gethostname()}); "
            f"the training run {tmp_path / 'b'} (pid {os.getpid()} on {socket.gethostname()})"
        )
    with writer():
        with pytest.raises(RuntimeError, match=rf"^{re.escape(str(data))} is being prepared \(pid {os.getpid()} on "):
            with DatasetReadLock(data, tmp_path / "c"):
                pass
    with DatasetReadLock(data, tmp_path / "c"):  # all released: readers come and go freely
        assert (
            dir_lock_path(data).read_text()
            == f"the training run {tmp_path / 'c'} (pid {os.getpid()} on {socket.gethostname()})\n"
        )
