import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TRAIN_OVERRIDES, demo_overrides
from xtts_ft import train_gpt
from xtts_ft.config import compose
from xtts_ft.data.batches import collate, encode_samples, epoch_order, iterate_batches, pick_references
from xtts_ft.data.sample import read_manifest
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import load_dvae, load_xtts


def test_batches_cover_every_sample_once_per_epoch():
    seen = [i for epoch, _, batch in _take(iterate_batches(10, 3, seed=1, epoch=0, start_batch=0), 4) for i in batch]
    assert sorted(seen) == list(range(10))
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)
    # Restoring mid-epoch continues exactly where the full iteration was.
    full = _take(iterate_batches(10, 3, seed=1, epoch=0, start_batch=0), 7)
    resumed = _take(iterate_batches(10, 3, seed=1, epoch=1, start_batch=1), 2)
    assert full[5:] == resumed


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


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
    references = pick_references(items, [0, 1, 2, 3], rng)
    assert all(ref != item.audio for ref, item in zip(references, items))  # another clip of the same voice
    assert all(ref.name.split("__")[1].split("_")[0] == item.speaker for ref, item in zip(references, items))
    batch = collate(items, references, (3.0, 6.0), rng)
    assert batch["wavs"].shape[0] == 4 and batch["cond_wavs"].shape[0] == 4
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss_text, loss_mel = train_gpt.gpt_losses(gpt, features, batch, torch.device("cpu"))
        loss = loss_text + loss_mel
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_training_run_writes_state_and_tensorboard(trained):
    run_dir = trained.parent
    state = torch.load(trained, map_location="cpu", weights_only=True)
    assert state["step"] == 30
    assert {"gpt", "optimizer", "scheduler", "torch_rng", "epoch", "batch_in_epoch", "config"} <= set(state)
    assert not any(k.startswith("gpt_inference") for k in state["gpt"])  # no inference wrapper in training
    assert json.loads((run_dir / "progress.json").read_text()) == {"step": 30, "max_steps": 30}
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert len(events.Scalars("eval/loss")) == 3


def _losses(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_resume_continues_the_same_trajectory(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + ["eval_every=100"]
    straight = train_gpt.run(compose("train_gpt", overrides + [f"paths.runs_dir={tmp_path / 'a'}", "max_steps=6"]))
    resumed_dir = [f"paths.runs_dir={tmp_path / 'b'}"]
    train_gpt.run(compose("train_gpt", overrides + resumed_dir + ["max_steps=4"]))
    cfg = compose("train_gpt", overrides + resumed_dir + ["max_steps=6"])
    assert not train_gpt.is_done(cfg)
    resumed = train_gpt.run(cfg)
    assert train_gpt.is_done(cfg)

    a = torch.load(straight, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert b["step"] == 6 and b["batch_in_epoch"] == 6  # 37 clips / batch 4: still epoch 0
    for key, value in a["gpt"].items():
        torch.testing.assert_close(b["gpt"][key], value, rtol=0, atol=1e-6, msg=key)
    # Same loss at every step, each step logged once.
    loss_a, loss_b = _losses(straight.parent), _losses(resumed.parent)
    assert [s for s, _ in loss_b] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in loss_b], [v for _, v in loss_a], rtol=1e-5)


def test_resume_refuses_a_changed_dataset(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + [f"paths.runs_dir={tmp_path}", "eval_every=100"]
    train_gpt.run(compose("train_gpt", overrides + ["max_steps=1"]))
    with pytest.raises(ValueError, match="batch_size=4, now 37 with batch_size=2"):
        train_gpt.run(compose("train_gpt", overrides + ["max_steps=2", "batch_size=2"]))


def test_weight_decay_spares_biases_norms_and_embeddings(tiny_model_dir):
    _, xtts = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    decay, no_decay = train_gpt.parameter_groups(xtts.gpt, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    decayed, spared = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert id(xtts.gpt.text_embedding.weight) in spared
    assert id(xtts.gpt.final_norm.weight) in spared and id(xtts.gpt.text_head.bias) in spared
    assert id(xtts.gpt.text_head.weight) in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(xtts.gpt.parameters()))


def test_missing_manifest_is_a_clear_error(tmp_path, tiny_model_dir, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + [f"paths.processed_dir={tmp_path}", "max_steps=1"]
    with pytest.raises(FileNotFoundError, match="run `xtts-ft prepare` first"):
        train_gpt.run(compose("train_gpt", overrides))
