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

from tests.helpers.settings import REPO, TRAIN_OVERRIDES, demo_overrides
from xtts_ft.config import compose
from xtts_ft.model import lora
from xtts_ft.model.export import sha256
from xtts_ft.model.layout import EXPORT_FILES
from xtts_ft.model.loading import load_xtts
from xtts_ft.stages import export, push, train_gpt
from xtts_ft.train import gpt as gpt_recipe

QUIET = ["eval_every=1000", "eval_sentences=[]"]
LORA = ["method=lora", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1"]
WOLOF_DEMO = REPO / "data" / "wolof_demo"


def _paths(workdir):
    return [o for o in demo_overrides(workdir) if o.startswith("paths.")]


def _wolof(workdir):
    return _paths(workdir) + [
        "data=wolof_demo",
        f"data.sources.0.path={WOLOF_DEMO}",
        f"data.sources.1.path={REPO / 'data' / 'demo' / 'en'}",
    ]


@pytest.fixture(scope="module")
def wolof_extended(workdir, tiny_model_dir):
    """The Wolof demo prepared on the tiny base and the base extended with [wo] and its BPE tokens."""
    from xtts_ft.stages import extend, prepare

    prepare.run(compose("prepare", _wolof(workdir) + ["model=tiny"]))
    return extend.run(
        compose("extend", _wolof(workdir) + ["model=tiny", "languages=[wo]", "bpe_vocab_size=200", "overwrite=true"])
    )


@pytest.fixture(scope="module")
def lora_wolof_run(workdir, tmp_path_factory, wolof_extended):
    """A short LoRA run on the extended base (its own runs dir)."""
    runs = tmp_path_factory.mktemp("lora_runs")
    overrides = (
        _wolof(workdir)
        + LORA
        + QUIET
        + [
            f"model.source={wolof_extended}",
            "model.build_tiny=false",
            "model.name=wo",
            "run_name=wolof_lora",
            f"paths.runs_dir={runs}",
            "max_steps=6",
            "lr=1e-2",
            "batch_size=4",
            "save_every=3",
            "log_every=1",
        ]
    )
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
    assert weights and all(
        ("lora_A" in k or "lora_B" in k or "trainable_tokens_delta" in k or "modules_to_save" in k) for k in weights
    ), sorted(weights)
    assert weights["text_embedding.token_adapter.trainable_tokens_delta.default"].shape[0] == after - before
    assert state["base_model_hash"] and state["config"]["method"] == "lora"

    base = _base_gpt(wolof_extended).state_dict()
    merged = lora.load_trained_gpt(_base_gpt(wolof_extended), state, wolof_extended).state_dict()
    assert set(merged) == set(base)  # stock keys after the merge
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    # The merged LoRA targets and the vocabulary rows changed; nothing else did.
    assert changed == {k for k in base if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))} | {
        "text_embedding.weight",
        "text_head.weight",
        "text_head.bias",
    }
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
    decay, no_decay = gpt_recipe.parameter_groups(gpt, 0.01, lora.no_decay_parameters(gpt))
    spared = {id(p) for p in no_decay["params"]}
    head = gpt.text_head.modules_to_save["default"]
    assert id(head.weight) in spared and id(head.bias) in spared
    assert id(gpt.text_embedding.token_adapter.trainable_tokens_delta["default"]) in spared
    assert all(any(id(p) == id(q) for q in decay["params"]) for n, p in gpt.named_parameters() if "lora_A" in n)


def test_killed_lora_run_resumes_on_the_same_trajectory(tmp_path, tiny_model_dir, prepared, workdir):
    overrides = demo_overrides(workdir) + TRAIN_OVERRIDES + QUIET + LORA + ["save_every=3", "max_steps=12", "lr=1e-2"]
    straight = train_gpt.run(compose("train_gpt", overrides + [f"paths.runs_dir={tmp_path / 'a'}"]))

    killed = overrides + [f"paths.runs_dir={tmp_path / 'b'}"]
    code = f"from xtts_ft.stages import train_gpt; from xtts_ft.config import compose; train_gpt.run(compose('train_gpt', {killed!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    assert b["step"] == a["step"] == 12 and set(a["gpt"]) == set(b["gpt"])
    assert any(
        not torch.equal(v, torch.zeros_like(v)) for k, v in a["gpt"].items() if "lora_B" in k
    )  # the adapter learnt
    for key, value in a["gpt"].items():
        torch.testing.assert_close(b["gpt"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # A LoRA state does not continue as a full fine-tune (nor the reverse).
    with pytest.raises(ValueError, match="was trained with method=lora, not method=full$"):
        train_gpt.run(compose("train_gpt", [o for o in killed if o not in LORA] + ["max_steps=13"]))


def test_lora_refuses_full_fine_tune_selectors(tmp_path, workdir):
    cfg = compose(
        "train_gpt",
        demo_overrides(workdir) + TRAIN_OVERRIDES + LORA + ["train_last_layers=1", f"paths.runs_dir={tmp_path}"],
    )
    with pytest.raises(
        ValueError, match="method=lora trains LoRA adapters .* train_last_layers and freeze_text_embeddings"
    ):
        train_gpt.run(cfg)


# --- export: merged stock layout, the adapter in PEFT's format, push, inference ---------------


@pytest.fixture(scope="module")
def lora_exports(workdir, lora_wolof_run, tmp_path_factory):
    """The LoRA run exported twice with adapter=true: its last step and step 3 (two adapters)."""
    out = tmp_path_factory.mktemp("lora_exports")
    overrides = _paths(workdir) + [
        f"paths.runs_dir={lora_wolof_run.parents[2]}",
        "run_name=wolof_lora",
        "adapter=true",
    ]
    return (
        export.run(compose("export", overrides + [f"out_dir={out / 'last'}"])),
        export.run(compose("export", overrides + [f"out_dir={out / 'step3'}", "checkpoint=3"])),
    )


def _logits(gpt, text_ids):
    """Text and audio-code logits of coqui's GPT on fixed inputs (fp32, eval)."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, gpt.mel_embedding.num_embeddings - 2, (2, 16), generator=generator)
    prompt = torch.randn(2, 32, gpt.model_dim, generator=generator)
    text = torch.tensor(text_ids).repeat(2, 1)
    with torch.no_grad():
        text_emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
        mel_emb = gpt.mel_embedding(codes) + gpt.mel_pos_embedding(codes)
        text_logits, mel_logits = gpt.get_logits(text_emb, gpt.text_head, mel_emb, gpt.mel_head, prompt=prompt)
    return torch.cat([text_logits.flatten(), mel_logits.flatten()])


def _wolof_ids(model_dir):
    before = json.loads((model_dir / "xtts_ft.json").read_text())["extension"]["text_tokens"]["before"]
    return [5, 9, before, before + 3, 2]  # base tokens and tokens extend added


def _plain_coqui_gpt(export_dir):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(export_dir / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(export_dir), eval=True)
    return model.gpt.eval()


def test_merged_export_loads_in_plain_coqui_and_equals_base_plus_adapter(lora_exports, wolof_extended, monkeypatch):
    from xtts_ft.inference import XttsSynthesizer

    last, step3 = lora_exports
    ids = _wolof_ids(wolof_extended)
    merged = {name: _logits(_plain_coqui_gpt(path), ids) for name, path in (("last", last), ("step3", step3))}
    synthesizer = XttsSynthesizer(wolof_extended, device="cpu", adapter=last)
    adapted = _logits(synthesizer.model.gpt.eval(), ids)
    assert (adapted - merged["last"]).abs().max() <= 1e-4
    # A second adapter over the same base, switched per request without reloading; None = the bare base.
    synthesizer.load_adapter(step3, name="step3")
    assert (_logits(synthesizer.model.gpt, ids) - merged["step3"]).abs().max() <= 1e-4
    synthesizer.use_adapter("default")
    assert (_logits(synthesizer.model.gpt, ids) - merged["last"]).abs().max() <= 1e-4
    synthesizer.use_adapter(None)
    base = _logits(_base_gpt(wolof_extended).eval(), ids)
    assert (_logits(synthesizer.model.gpt, ids) - base).abs().max() <= 1e-5
    assert (merged["last"] - base).abs().max() > 1e-2  # the adapter does change the model
    with pytest.raises(ValueError, match=r"adapter 'nope' is not loaded \(loaded: default, step3\)"):
        synthesizer.use_adapter("nope")
    synthesizer.use_adapter("default")
    reference = next((REPO / "data" / "wolof_demo" / "wavs").glob("*"))
    wav = synthesizer.synthesize("Na nga def?", "wo", reference=reference, decoding={"seed": 0}).wav
    assert wav.size > 0 and np.isfinite(wav).all()
    # Batched with the adapter: the steps through packed base weights (forced; PEFT adds the adapter's
    # update around them) give the audio of MKL's products.
    from xtts_ft.inference import PackedProducts

    if PackedProducts.available():
        requests = [
            {"text": text, "language": "wo", "reference": reference}
            for text in ("Na nga def?", "Mangi fi rek.", "Jërëjëf.")
        ]
        greedy = {"seed": 0, "top_k": 1}
        monkeypatch.setattr(PackedProducts, "packed_is_faster", lambda self, weight, rows, packed=None: False)
        usual = synthesizer.synthesize_many(requests, greedy, batch_size=3)
        monkeypatch.setattr(PackedProducts, "packed_is_faster", lambda self, weight, rows, packed=None: True)
        calls, real_product = [], PackedProducts.packed_product
        monkeypatch.setattr(
            PackedProducts, "packed_product", staticmethod(lambda *args: calls.append(1) or real_product(*args))
        )
        packed = synthesizer.synthesize_many(requests, greedy, batch_size=3)
        assert calls  # the adapted layers' base products did go through the packed weights
        for a, b in zip(usual, packed):
            assert a.wav.shape == b.wav.shape and np.abs(a.wav - b.wav).max() <= 1e-5 * max(1.0, np.abs(a.wav).max())


def test_adapter_export_records_its_base_and_push_sends_it(lora_exports, wolof_extended, workdir, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from tests.helpers.fake_hub import hub_error as _hub_error

    last, _ = lora_exports
    record = json.loads((last / "xtts_ft.json").read_text())
    adapter = record["adapter"]
    assert adapter["files"] == ["adapter_config.json", "adapter_model.safetensors"] and adapter["rank"] == 4
    assert adapter["base_model"]["source"] == str(wolof_extended) and adapter["base_model"]["model_sha256"] == sha256(
        wolof_extended / "model.pth"
    )
    assert record["training"]["method"] == "lora"
    config = json.loads((last / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == "LORA" and config["r"] == 4 and config["base_model_name_or_path"] == str(wolof_extended)
    )
    assert (last / "adapter_model.safetensors").stat().st_size < 0.05 * (last / "model.pth").stat().st_size

    def repo_info(self, repo_id, **kw):
        raise _hub_error(
            RepositoryNotFoundError, 404, f"404 Client Error. Repository Not Found for url: .../{repo_id}"
        )

    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    files = push.run(
        compose(
            "push", _paths(workdir) + ["run_name=x", "repo_id=someone/wo-lora", f"export_dir={last}", "dry_run=true"]
        )
    )
    assert [f.name for f in files] == [
        "config.json",
        "model.pth",
        "vocab.json",
        "dvae.pth",
        "mel_stats.pth",
        "speakers_xtts.pth",
        "xtts_ft.json",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert set(lora.ADAPTER_FILES) <= set(EXPORT_FILES)


def test_adapter_export_of_a_full_run_or_on_another_base_is_refused(
    workdir, trained, lora_exports, tmp_path, tiny_model_dir
):
    from xtts_ft.inference import XttsSynthesizer

    with pytest.raises(
        ValueError, match="adapter=true: .*state.pt is a full fine-tune \\(method=full\\), which has no adapter"
    ):
        export.run(compose("export", _paths(workdir) + ["run_name=demo", f"out_dir={tmp_path / 'x'}", "adapter=true"]))
    with pytest.raises(ValueError, match="was trained on .*wolof_demo-extended .*not on .*tiny-xtts"):
        XttsSynthesizer(tiny_model_dir, device="cpu", adapter=lora_exports[0])


# --- the tiny LoRA recipe, end to end ---------------------------------------------------------


@pytest.mark.slow
def test_tiny_lora_recipe_runs_end_to_end(tmp_path, monkeypatch):
    from xtts_ft.stages import pipeline

    monkeypatch.chdir(REPO)  # the recipe names the shipped corpora relative to the repository
    paths = [f"paths.{k}={tmp_path / k}" for k in ("processed_dir", "runs_dir", "exports_dir", "models_dir")]
    cfg = compose("pipeline", ["recipe=wolof/lora_tiny"])
    cfg.overrides = paths + ["max_steps=12", "eval_every=12", "save_every=12", "max_utterances=2"]
    report = pipeline.run(cfg)
    assert [r["stage"] for r in report] == [
        "prepare",
        "extend",
        "train_gpt",
        "train_decoder",
        "export",
        "synth",
        "evaluate",
    ]
    assert not any(r["skipped"] for r in report)
    export_dir = tmp_path / "exports_dir" / "wolof_demo_lora"
    record = json.loads((export_dir / "xtts_ft.json").read_text())
    assert (
        record["training"]["method"] == "lora"
        and record["training"]["gpt_steps"] == 12
        and "wo" in record["languages"]
    )
    assert record["adapter"]["files"] == list(lora.ADAPTER_FILES) and all(
        (export_dir / f).is_file() for f in lora.ADAPTER_FILES
    )
    state = torch.load(
        tmp_path / "runs_dir" / "wolof_demo_lora" / "gpt" / "state.pt", map_location="cpu", weights_only=True
    )
    assert state["config"]["grad_checkpointing_keeps"] == "linear_outputs"  # the recipe's CPU memory setting
    assert state["config"]["method"] == "lora" and all(
        "lora_" in k or "trainable_tokens" in k or "modules_to_save" in k for k in state["gpt"]
    )
    import soundfile as sf

    audio, rate = sf.read(tmp_path / "runs_dir" / "wolof_demo_lora" / "synth" / "awa.wav")
    assert rate == 24000 and audio.size > 0
    assert (tmp_path / "runs_dir" / "wolof_demo_lora" / "eval" / "report.md").is_file()


def test_resuming_under_another_lora_dropout_is_said(caplog, tmp_path):
    """Dropout holds no weights, so the adapter loads either way: the change of course is logged."""
    import logging

    state = {"config": {"method": "lora", "lora": {"dropout": 0.05}}, "base_model_hash": "h"}
    with caplog.at_level(logging.WARNING, logger="xtts_ft.train.gpt"):
        gpt_recipe.check_resumable_method(tmp_path / "state.pt", state, compose("train_gpt", ["method=lora"]), "h")
    assert (
        "trained with lora.dropout=0.05; resuming with lora.dropout=0.0 (add lora.dropout=0.05 to keep it)"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xtts_ft.train.gpt"):
        gpt_recipe.check_resumable_method(
            tmp_path / "state.pt", state, compose("train_gpt", ["method=lora", "lora.dropout=0.05"]), "h"
        )
    assert "lora.dropout" not in caplog.text


def test_one_product_lora_layer_equals_pefts_own_forward(tiny_model_dir):
    """The Conv1D LoRA layer adds B(A x) in one addmm: same outputs and gradients as PEFT's
    `result + B(A(x)) * scaling`, and PEFT's forward whenever the plain case does not hold."""
    from peft.tuners.lora.layer import Linear as PeftLinear

    cfg = compose(
        "train_gpt", ["model=tiny", "method=lora", "lora.rank=4", "lora.alpha=6"]
    )  # scaling 1.5: not a power of 2
    results = {}
    for fused in (True, False):
        torch.manual_seed(0)
        gpt = _base_gpt(tiny_model_dir)
        lora.apply_lora(gpt, cfg.lora, [])
        layers = [m for m in gpt.modules() if isinstance(m, PeftLinear)]
        assert layers and all(type(m).__name__ == "OneProductLoraLinear" for m in layers)
        for m in layers:
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.1)  # PEFT starts B at 0: make the update count
            if not fused:
                m.forward = PeftLinear.forward.__get__(m)  # PEFT's own forward on the same weights
        inputs = torch.randn(2, 9, gpt.gpt.config.n_embd, generator=torch.Generator().manual_seed(1))
        out = gpt.gpt.eval()(inputs_embeds=inputs).last_hidden_state  # eval: no GPT-2 dropout between the two runs
        out.square().sum().backward()
        results[fused] = (out.detach(), {n: p.grad for n, p in gpt.named_parameters() if p.grad is not None})
    (out_f, grads_f), (out_p, grads_p) = results[True], results[False]
    assert torch.allclose(out_f, out_p, atol=1e-5, rtol=1e-5)
    assert grads_f.keys() == grads_p.keys() and any("lora_A" in n for n in grads_f)
    for name in grads_f:
        assert torch.allclose(grads_f[name], grads_p[name], atol=1e-5, rtol=1e-4), name

    # LoRA dropout (not the plain case): the layer is PEFT's forward, which draws its dropout mask.
    gpt = _base_gpt(tiny_model_dir)
    lora.apply_lora(gpt, compose("train_gpt", ["model=tiny"] + LORA).lora, [])
    layer = next(m for m in gpt.modules() if isinstance(m, PeftLinear)).train()
    x = torch.randn(3, layer.in_features)
    torch.manual_seed(5)
    ours = layer(x)
    torch.manual_seed(5)
    assert torch.equal(ours, PeftLinear.forward(layer, x))
