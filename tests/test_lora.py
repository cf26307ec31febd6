"""train-gpt method=lora (🤗 PEFT): what trains and what stays bit-identical, small states, exact
resume, merged exports that plain coqui-tts loads, the adapter in PEFT's format through push and
the inference module, and the tiny LoRA recipe end to end."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import REPO, TRAIN_OVERRIDES, demo_overrides
from xtts_ft import export, push, train_gpt
from xtts_ft.config import compose
from xtts_ft.model import lora
from xtts_ft.model.layout import EXPORT_FILES
from xtts_ft.model.loading import load_xtts

QUIET = ["eval_every=1000", "eval_sentences=[]"]
LORA = ["method=lora", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1"]
WOLOF_DEMO = REPO / "data" / "wolof_demo"


def _paths(workdir):
    return [o for o in demo_overrides(workdir) if o.startswith("paths.")]


def _wolof(workdir):
    return _paths(workdir) + ["data=wolof_demo", f"data.sources.0.path={WOLOF_DEMO}", f"data.sources.1.path={REPO / 'data' / 'demo' / 'en'}"]


@pytest.fixture(scope="module")
def wolof_extended(workdir, tiny_model_dir):
    """The Wolof demo prepared on the tiny base and the base extended with [wo] and its BPE tokens."""
    from xtts_ft import extend, prepare

    prepare.run(compose("prepare", _wolof(workdir) + ["model=tiny"]))
    return extend.run(compose("extend", _wolof(workdir) + ["model=tiny", "languages=[wo]", "bpe_vocab_size=200", "overwrite=true"]))


@pytest.fixture(scope="module")
def lora_wolof_run(workdir, tmp_path_factory, wolof_extended):
    """A short LoRA run on the extended base (its own runs dir)."""
    runs = tmp_path_factory.mktemp("lora_runs")
    overrides = _wolof(workdir) + LORA + QUIET + [
        f"model.source={wolof_extended}", "model.build_tiny=false", "model.name=wo", "run_name=wolof_lora",
        f"paths.runs_dir={runs}", "max_steps=6", "lr=1e-2", "batch_size=4", "save_every=3", "log_every=1",
    ]
    return train_gpt.run(compose("train_gpt", overrides))


def _base_gpt(model_dir):
    _, xtts = load_xtts(model_dir, "cpu", for_inference=False)
    return xtts.gpt


def test_lora_trains_only_the_adapter_and_the_new_token_rows(lora_wolof_run, wolof_extended):
    state = torch.load(lora_wolof_run, map_location="cpu", weights_only=True)
    record = json.loads((wolof_extended / "xtts_ft.json").read_text())["extension"]["text_tokens"]
    before, after = record["before"], record["after"]
    assert after > before
    weights = state["gpt"]
    # Only the adapter, the embedding's new rows and the text head's copy: no base weight.
    assert weights and all(("lora_A" in k or "lora_B" in k or "trainable_tokens_delta" in k or "modules_to_save" in k) for k in weights), sorted(weights)
    assert weights["text_embedding.token_adapter.trainable_tokens_delta.default"].shape[0] == after - before
    assert state["base_model_hash"] and state["config"]["method"] == "lora"

    base = _base_gpt(wolof_extended).state_dict()
    merged = lora.load_trained_gpt(_base_gpt(wolof_extended), state, wolof_extended).state_dict()
    assert set(merged) == set(base)  # stock keys after the merge
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    # The merged LoRA targets and the vocabulary rows changed; nothing else did.
    assert changed == {k for k in base if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))} | {"text_embedding.weight", "text_head.weight", "text_head.bias"}
    for key in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
        assert torch.equal(merged[key][:before], base[key][:before]), f"{key}: a base row moved"
        assert not torch.equal(merged[key][before:], base[key][before:]), f"{key}: the new rows did not learn"


def test_lora_state_is_a_small_fraction_of_a_full_one(lora_wolof_run, trained):
    lora_bytes, full_bytes = lora_wolof_run.stat().st_size, trained.stat().st_size
    # Tiny model (50k GPT-block params, a real-sized decoder off the state): the adapter + rows
    # state is well under the full GPT state; at full size the ratio is in BENCHMARKS.md.
    assert lora_bytes < 0.5 * full_bytes, (lora_bytes, full_bytes)


def test_weight_decay_spares_the_new_rows_and_the_masked_head(wolof_extended):
    gpt = _base_gpt(wolof_extended)
    cfg = compose("train_gpt", ["model=tiny"] + LORA)
    lora.apply_lora(gpt, cfg.lora, lora.new_text_rows(wolof_extended))
    decay, no_decay = train_gpt.parameter_groups(gpt, 0.01, lora.no_decay_parameters(gpt))
    spared = {id(p) for p in no_decay["params"]}
    head = gpt.text_head.modules_to_save["default"]
    assert id(head.weight) in spared and id(head.bias) in spared
    assert id(gpt.text_embedding.token_adapter.trainable_tokens_delta["default"]) in spared
    assert all(any(id(p) == id(q) for q in decay["params"]) for n, p in gpt.named_parameters() if "lora_A" in n)


def test_killed_lora_run_resumes_on_the_same_trajectory(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + LORA + ["save_every=3", "max_steps=20", "lr=1e-2"]
    straight = train_gpt.run(compose("train_gpt", overrides + [f"paths.runs_dir={tmp_path / 'a'}"]))

    killed = overrides + [f"paths.runs_dir={tmp_path / 'b'}"]
    code = f"from xtts_ft import train_gpt; from xtts_ft.config import compose; train_gpt.run(compose('train_gpt', {killed!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "b" / "demo" / "gpt" / "progress.json"
    deadline = time.time() + 180
    while time.time() < deadline and not (progress.is_file() and json.loads(progress.read_text())["step"] >= 4):
        time.sleep(0.02)
    proc.kill()  # SIGKILL, somewhere after step 4
    proc.wait()
    cfg = compose("train_gpt", killed)
    assert not train_gpt.is_done(cfg), "the run finished before it could be killed"
    resumed = train_gpt.run(cfg)

    a = torch.load(straight, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert b["step"] == a["step"] == 20 and set(a["gpt"]) == set(b["gpt"])
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a["gpt"].items() if "lora_B" in k)  # the adapter learnt
    for key, value in a["gpt"].items():
        torch.testing.assert_close(b["gpt"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # A LoRA state does not continue as a full fine-tune (nor the reverse).
    with pytest.raises(ValueError, match="was trained with method=lora, not method=full: resume it with method=lora"):
        train_gpt.run(compose("train_gpt", [o for o in killed if o not in LORA] + ["max_steps=21"]))


def test_lora_refuses_full_fine_tune_selectors(tmp_path, workdir):
    cfg = compose("train_gpt", demo_overrides(workdir) + TRAIN_OVERRIDES + LORA + ["train_last_layers=1", f"paths.runs_dir={tmp_path}"])
    with pytest.raises(ValueError, match="method=lora trains LoRA adapters .* train_last_layers and freeze_text_embeddings"):
        train_gpt.run(cfg)
