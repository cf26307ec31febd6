import json
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.settings import DECODER_OVERRIDES, REPO, decoder_data_overrides, demo_overrides
from xtts_ft.config import compose
from xtts_ft.model.constants import DECODER_HOP
from xtts_ft.model.decoder import decoder_frames, decoder_input, decoder_samples, gpt_latents
from xtts_ft.stages import export, train_decoder
from xtts_ft.train import decoder as decoder_recipe


def _scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def small_decoder():
    """coqui's HifiDecoder with its stock framing (interpolations, 8·8·2·2 upsampling) but a narrow
    generator: only lengths and timing are tested here, nothing is loaded by coqui's loader."""
    from TTS.tts.layers.xtts.hifigan_decoder import HifiDecoder

    torch.manual_seed(0)
    return HifiDecoder(decoder_input_dim=8, upsample_initial_channel_decoder=16).eval()


@pytest.mark.parametrize("frames", [1, 2, 3, 7, 20, 64, 147, 200])
def test_decoder_output_is_on_the_24khz_grid_without_drift(frames, small_decoder):
    decoder = small_decoder
    latents, speaker = torch.randn(1, frames, 8), torch.randn(1, 512, 1)
    with torch.no_grad():
        stock = decoder(latents, g=speaker)  # coqui's forward, as inference runs it
        ours = decoder.waveform_decoder(decoder_input(decoder, latents), g=speaker)
    assert (
        stock.shape[-1]
        == ours.shape[-1]
        == decoder_samples(decoder, frames)
        == decoder_frames(decoder, frames) * DECODER_HOP
    )
    torch.testing.assert_close(ours, stock)
    # 1024 samples at 22.05 kHz per GPT frame = 1114.56 at 24 kHz: the output falls short of that
    # by less than one 256-sample hop (flooring), whatever the length: no drift.
    exact = frames * 1024 * 24000 / 22050
    assert 0 <= exact - stock.shape[-1] < DECODER_HOP
    # Timing: feed each GPT frame its own centre time; the 24 kHz frame j must carry the centre
    # time of output samples [256 j, 256 (j + 1)), i.e. frame j of the target (edges excepted,
    # where linear interpolation clamps).
    centres = (torch.arange(frames, dtype=torch.float64) + 0.5) * 1024 / 22050
    stretched = decoder_input(decoder, centres.view(1, frames, 1))[0, 0]
    target_centres = (torch.arange(stretched.numel(), dtype=torch.float64) + 0.5) * DECODER_HOP / 24000
    inside = (target_centres > centres[0] + 1024 / 22050) & (target_centres < centres[-1] - 1024 / 22050)
    assert inside.sum() >= stretched.numel() - 14  # one GPT frame (4.35 decoder frames) at each edge
    torch.testing.assert_close(stretched[inside], target_centres[inside], rtol=0, atol=1e-9)


def test_demo_latents_and_targets_line_up(workdir, prepared_24k, decoder_trained):
    """Real clips: latents = codes + 1 frames (as inference decodes), the decoder output covers
    the 24 kHz target to within two GPT frames, and a training segment is the same span of both."""
    from xtts_ft.model.loading import load_xtts

    _, xtts = load_xtts(workdir / "models" / "tiny-xtts", "cpu", for_inference=False)
    decoder = xtts.hifigan_decoder
    codes = torch.load(prepared_24k / "train.codes.pt", weights_only=True)["entries"]
    latents = torch.load(prepared_24k / "train.decoder_latents.pt", weights_only=True)["entries"]
    assert len(latents) == 37
    for key, entry in latents.items():
        frames = entry["value"]["latents"].shape[0]
        assert frames == codes[key]["value"].numel() + 1
        clip = prepared_24k / key
        target = prepared_24k / "wavs_24k" / clip.name
        n22, n24 = sf.info(str(clip)).frames, sf.info(str(target)).frames
        assert abs(n24 / 24000 - n22 / 22050) < 1e-3  # the same span of the source
        assert 0 < decoder_samples(decoder, frames) - n24 <= 2 * 1115

    # A training batch: the segment of the stretched latents and the same span of the target.
    items = [
        decoder_recipe.DecoderItem(
            prepared_24k / k,
            prepared_24k / "wavs_24k" / k.split("/")[-1],
            "s",
            "en",
            1.0,
            v["value"]["latents"],
            v["value"]["speaker"],
        )
        for k, v in list(latents.items())[:3]
    ]
    z, speakers, target = decoder_recipe.make_batch(items, decoder, 8, np.random.default_rng(1))
    starts = np.random.default_rng(1)
    for b, item in enumerate(items):
        full = decoder_input(decoder, item.latents.float().unsqueeze(0))[0]
        start = int(starts.integers(0, full.shape[-1] - 8 + 1))
        torch.testing.assert_close(z[b], full[:, start : start + 8], rtol=0, atol=0)
        audio, _ = sf.read(str(item.target), dtype="float32")
        expected = np.zeros(8 * DECODER_HOP, np.float32)
        piece = audio[start * DECODER_HOP : (start + 8) * DECODER_HOP]
        expected[: piece.size] = piece
        np.testing.assert_array_equal(target[b, 0].numpy(), expected)
    assert z.shape == (3, 64, 8) and speakers.shape == (3, 512, 1) and target.shape == (3, 1, 2048)


def test_latents_are_what_inference_decodes_and_the_cache_follows_gpt_and_reference(tmp_path, workdir, prepared_24k):
    from xtts_ft.data.batches import ReferencePicker, encode_samples
    from xtts_ft.data.sample import read_manifest
    from xtts_ft.inference import XttsSynthesizer
    from xtts_ft.model.features import GptFeatures
    from xtts_ft.model.loading import load_dvae, load_xtts
    from xtts_ft.train.cache import attach_codes
    from xtts_ft.train.runtime import Runtime

    config, xtts = load_xtts(workdir / "models" / "tiny-xtts", "cpu", for_inference=False)
    xtts.gpt.eval()
    manifest = prepared_24k / "train.jsonl"
    samples = read_manifest(manifest)[:3]
    items, _ = encode_samples(samples, xtts.tokenizer, 200, 11.6 * 22050, manifest)
    single = Runtime(0, 1, torch.device("cpu"))
    # The clips' codes computed here (not read from a cache another test may or may not have left).
    dvae, mel_stats = load_dvae(workdir / "models" / "tiny-xtts")
    features = GptFeatures(dvae, mel_stats, xtts.args.gpt_use_perceiver_resampler)
    items, computed = attach_codes(items, features, tmp_path / "train.codes.pt", "tiny-dvae", "cpu", single, "codes")
    assert computed == 3 and all(i.codes.numel() > 10 for i in items)
    cache = tmp_path / "train.decoder_latents.pt"

    values, computed = decoder_recipe.attach_latents(items, xtts, config, cache, "gpt-a", 0, single, "latents")
    assert computed == 3
    pick = ReferencePicker(items)
    references = lambda seed: [pick([i], np.random.default_rng([seed, i]))[0] for i in range(3)]  # noqa: E731

    # Xtts.inference, with its GPT "generating" this clip's codes, decodes exactly the cached latents.
    item, reference = items[0], references(0)[0]
    voice = XttsSynthesizer.from_model(config, xtts).clone_voice(reference)
    stop = torch.tensor([xtts.gpt.stop_audio_token])
    xtts.gpt.generate = lambda **kwargs: torch.cat([item.codes.long(), stop]).unsqueeze(0)
    out = xtts.inference(samples[0].text, samples[0].language, voice.gpt_cond_latent, voice.speaker_embedding)
    inference_latents = torch.from_numpy(out["gpt_latents"])[0]
    assert inference_latents.shape == (item.codes.numel() + 1, 64)
    torch.testing.assert_close(values[0]["latents"].float(), inference_latents, rtol=1e-3, atol=2e-3)  # float16 cache
    torch.testing.assert_close(values[0]["speaker"], voice.speaker_embedding.reshape(-1))
    assert out["wav"].size == decoder_samples(xtts.hifigan_decoder, item.codes.numel() + 1)
    with pytest.raises(RuntimeError, match="eval mode"):
        gpt_latents(xtts.gpt.train(), item.text_tokens, item.codes, voice.gpt_cond_latent)
    xtts.gpt.eval()

    assert decoder_recipe.attach_latents(items, xtts, config, cache, "gpt-a", 0, single, "latents")[1] == 0
    assert (
        decoder_recipe.attach_latents(items, xtts, config, cache, "gpt-b", 0, single, "latents")[1] == 3
    )  # another GPT
    # Another seed picks other references for some clips: those, and only those, are recomputed.
    seed = next(s for s in range(1, 50) if references(s) != references(0))
    changed = sum(a != b for a, b in zip(references(seed), references(0)))
    assert decoder_recipe.attach_latents(items, xtts, config, cache, "gpt-b", seed, single, "latents")[1] == changed


def _fixed_batch_losses(state_dicts, workdir, prepared_24k):
    """Mel L1 and STFT losses of generators on one fixed batch of training segments."""
    from xtts_ft.model.decoder import build_losses
    from xtts_ft.model.loading import load_xtts

    _, xtts = load_xtts(workdir / "models" / "tiny-xtts", "cpu", for_inference=False)
    decoder = xtts.hifigan_decoder
    latents = torch.load(prepared_24k / "train.decoder_latents.pt", weights_only=True)["entries"]
    items = [
        decoder_recipe.DecoderItem(
            prepared_24k / k,
            prepared_24k / "wavs_24k" / k.split("/")[-1],
            "s",
            "en",
            1.0,
            v["value"]["latents"],
            v["value"]["speaker"],
        )
        for k, v in list(latents.items())[:4]
    ]
    z, speakers, target = decoder_recipe.make_batch(items, decoder, 8, np.random.default_rng(123))
    gen_loss, _ = build_losses(24000, 45.0, 0.5, 1.0, 108.0)
    results = []
    for state in state_dicts:
        if state is not None:
            decoder.waveform_decoder.load_state_dict(state)
        with torch.no_grad():
            out = gen_loss(decoder.waveform_decoder(z, speakers), target)
        results.append(
            {k: float(v) for k, v in out.items() if k in ("G_l1_spec_loss", "G_stft_loss_mg", "G_stft_loss_sc")}
        )
    return results


def test_losses_go_down_on_a_fixed_small_set(tmp_path, workdir, prepared_24k, decoder_trained):
    overrides = (
        decoder_data_overrides(workdir)
        + DECODER_OVERRIDES
        + [f"paths.runs_dir={tmp_path}", "max_steps=6", "eval_every=6", "eval_clips=1", "eval_audio=1"]
    )
    state_path = train_decoder.run(compose("train_decoder", overrides))
    trained = torch.load(state_path, weights_only=True)["decoder"]
    # Eval: a whole held-out clip decoded from its whole latents, before the first step and at the end.
    evals = _scalars(state_path.parent, "eval/loss_mel")
    assert [s for s, _ in evals] == [0, 6] and evals[1][1] < evals[0][1]
    events = EventAccumulator(str(state_path.parent / "tensorboard"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    assert {"eval_audio/0", "eval_target/0"} <= set(events.Tags()["audio"]) and "eval_mel/0" in events.Tags()["images"]
    best = torch.load(state_path.parent / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 6
    # best.pt describes itself: it exports alone, state.pt unread (moved away here).
    assert (
        best["format_version"] == 2
        and best["gpt"]["source"] == "base"
        and best["eval_loss"] == pytest.approx(evals[1][1], rel=1e-6)
    )
    assert best["data_stats"]["train"]["clips"] and best["config"]["lr_gen"] == 1e-3 and best["base_model_hash"]
    state_path.rename(tmp_path / "state.pt")
    out = export.run(
        compose(
            "export",
            [f"paths.runs_dir={tmp_path}", "run_name=demo", "decoder_checkpoint=best", f"out_dir={tmp_path / 'best'}"],
        )
    )
    record = json.loads((out / "xtts_ft.json").read_text())["training"]
    assert record["decoder_steps"] == 6 and record["decoder_gpt"] == "base" and record["gpt_steps"] == 0
    exported = torch.load(out / "model.pth", weights_only=True)["model"]
    assert all(torch.equal(exported[f"hifigan_decoder.waveform_decoder.{k}"], v) for k, v in best["decoder"].items())
    (tmp_path / "state.pt").rename(state_path)
    before, after = _fixed_batch_losses([None, trained], workdir, prepared_24k)
    # 6 steps from the tiny model's random decoder: the mel L1 (weight 45: the bulk of the loss)
    # falls by more than a fifth, the STFT terms fall too.
    assert after["G_l1_spec_loss"] < 0.8 * before["G_l1_spec_loss"], (before, after)
    assert all(after[k] < before[k] for k in before), (before, after)
    mel = [v for _, v in _scalars(state_path.parent, "train/loss_mel")]
    assert len(mel) == 6 and np.isfinite(mel).all()


@pytest.mark.slow
def test_losses_go_down_with_the_discriminator(tmp_path, workdir, prepared_24k, decoder_trained):
    overrides = (
        decoder_data_overrides(workdir)
        + DECODER_OVERRIDES
        + [f"paths.runs_dir={tmp_path}", "adversarial=true", "max_steps=8", "batch_size=2", "save_every=100"]
    )
    state_path = train_decoder.run(compose("train_decoder", overrides))
    state = torch.load(state_path, weights_only=True)
    before, after = _fixed_batch_losses([None, state["decoder"]], workdir, prepared_24k)
    assert after["G_l1_spec_loss"] < 0.8 * before["G_l1_spec_loss"]
    disc = [v for _, v in _scalars(state_path.parent, "train/loss_disc")]
    adv = [v for _, v in _scalars(state_path.parent, "train/loss_adv")]
    feat = [v for _, v in _scalars(state_path.parent, "train/loss_feat_match")]
    assert len(disc) == len(adv) == len(feat) == 8 and np.isfinite(disc + adv + feat).all() and min(feat) > 0
    assert np.mean(disc[-3:]) < np.mean(disc[:3])  # the fresh discriminator learns to tell them apart
    assert state["discriminator"] and state["opt_disc"]["state"] and state["gpt"]["source"] == "base"


def test_resume_continues_the_same_run(tmp_path, workdir, prepared_24k, decoder_trained):
    """Stopped and restarted (spectral-only here, for time; the slow kill test covers the discriminator)."""
    overrides = decoder_data_overrides(workdir) + DECODER_OVERRIDES + ["batch_size=1", "save_every=100"]
    straight = train_decoder.run(
        compose("train_decoder", overrides + [f"paths.runs_dir={tmp_path / 'a'}", "max_steps=2"])
    )
    split = overrides + [f"paths.runs_dir={tmp_path / 'b'}"]
    train_decoder.run(compose("train_decoder", split + ["max_steps=1"]))
    resumed = train_decoder.run(compose("train_decoder", split + ["max_steps=2"]))
    a, b = (torch.load(p, weights_only=True) for p in (straight, resumed))
    assert a["step"] == b["step"] == 2
    assert a["discriminator"] is None and b["discriminator"] is None
    for part in ("decoder", "opt_gen"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            torch.testing.assert_close(flat_b[key], flat_a[key], rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")
    for tag in ("train/loss_mel", "train/loss_stft_mag"):
        np.testing.assert_allclose(
            [v for _, v in _scalars(resumed.parent, tag)], [v for _, v in _scalars(straight.parent, tag)], rtol=1e-5
        )


@pytest.mark.slow
def test_killed_run_resumes_on_the_same_trajectory(tmp_path, workdir, prepared_24k, decoder_trained):
    overrides = (
        decoder_data_overrides(workdir)
        + DECODER_OVERRIDES
        + ["adversarial=true", "batch_size=1", "save_every=2", "max_steps=8"]
    )
    straight = train_decoder.run(compose("train_decoder", overrides + [f"paths.runs_dir={tmp_path / 'a'}"]))
    killed = overrides + [f"paths.runs_dir={tmp_path / 'b'}"]
    code = f"from xtts_ft.stages import train_decoder; from xtts_ft.config import compose; train_decoder.run(compose('train_decoder', {killed!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = tmp_path / "b" / "demo" / "decoder" / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (progress.is_file() and json.loads(progress.read_text())["step"] >= 2):
        time.sleep(0.2)
    proc.kill()  # SIGKILL, somewhere after step 2: no chance to clean up
    proc.wait()
    cfg = compose("train_decoder", killed)
    assert not train_decoder.is_done(cfg), "the run finished before it could be killed"
    resumed = train_decoder.run(cfg)
    a, b = (torch.load(p, weights_only=True) for p in (straight, resumed))
    assert (b["step"], b["epoch"], b["batch_in_epoch"]) == (a["step"], a["epoch"], a["batch_in_epoch"])
    for part in ("decoder", "discriminator", "opt_gen", "opt_disc"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            torch.testing.assert_close(flat_b[key], flat_a[key], rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")
    steps = [s for s, _ in _scalars(resumed.parent, "train/loss_mel")]
    assert steps == list(range(1, 9))
    np.testing.assert_allclose(
        [v for _, v in _scalars(resumed.parent, "train/loss_mel")],
        [v for _, v in _scalars(straight.parent, "train/loss_mel")],
        rtol=1e-5,
    )


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}.{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}.{i}").items()}
    return {}


def test_export_carries_the_fine_tuned_decoder(tmp_path, workdir, decoder_trained, tiny_model_dir):
    from xtts_ft.inference import XttsSynthesizer

    runs = workdir / "runs_decoder"
    out = export.run(compose("export", [f"paths.runs_dir={runs}", "run_name=demo", f"out_dir={tmp_path / 'export'}"]))
    trained = torch.load(decoder_trained, weights_only=True)["decoder"]
    exported = torch.load(out / "model.pth", weights_only=True)["model"]
    base = torch.load(tiny_model_dir / "model.pth", weights_only=True)["model"]
    prefix = "hifigan_decoder.waveform_decoder."
    assert {k[len(prefix) :] for k in exported if k.startswith(prefix)} == set(trained)
    for key, value in trained.items():
        assert torch.equal(exported[prefix + key], value), key  # round-trips exactly
    assert any(not torch.equal(trained[k], base[prefix + k]) for k in trained)  # and differs from the base
    assert all(torch.equal(exported[k], base[k]) for k in base if k.startswith("gpt."))  # decoder-only run: base GPT
    record = json.loads((out / "xtts_ft.json").read_text())
    assert record["training"]["decoder_steps"] == 3 and record["training"]["gpt_steps"] == 0

    # The inference module loads the export (coqui's stock loader) and decodes with that decoder.
    synthesizer = XttsSynthesizer(out, device="cpu")
    loaded = synthesizer.model.hifigan_decoder.waveform_decoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    reference = next((workdir / "processed_24k" / "demo" / "wavs").glob("*.wav"))
    result = synthesizer.synthesize(
        "Hello there.", "en", reference=reference, decoding={"seed": 0, "max_seconds_per_char": 0.05}
    )
    assert result.sample_rate == 24000 and np.isfinite(result.wav).all() and result.wav.size % DECODER_HOP == 0


def test_clear_errors(tmp_path, workdir, prepared, prepared_24k):
    base = DECODER_OVERRIDES + [f"paths.runs_dir={tmp_path}"]
    with pytest.raises(ValueError, match=r"segment_samples=1000 is not a multiple of 256 \(the decoder's hop\)"):
        train_decoder.run(compose("train_decoder", decoder_data_overrides(workdir) + base + ["segment_samples=1000"]))
    with pytest.raises(ValueError, match="need more than 1024 samples"):
        train_decoder.run(compose("train_decoder", decoder_data_overrides(workdir) + base + ["segment_samples=768"]))
    with pytest.raises(ValueError, match="has no 24 kHz copies .*output rate$"):
        train_decoder.run(
            compose("train_decoder", demo_overrides(workdir) + base)
        )  # the plain demo data: no 24 kHz copies
    with pytest.raises(FileNotFoundError, match="gpt=nope.pt: no such train-gpt state"):
        train_decoder.run(compose("train_decoder", decoder_data_overrides(workdir) + base + ["gpt=nope.pt"]))


def test_cli_has_the_train_decoder_verb():
    cli = [sys.executable, "-m", "xtts_ft.cli"]
    assert (
        "train-decoder"
        in subprocess.run(cli + ["--help"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    )
    result = subprocess.run(
        cli + ["train-decoder", "--cfg", "job", "adversarial=false", "segment_samples=4096"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "adversarial: false" in result.stdout
        and "segment_samples: 4096" in result.stdout
        and "mel_loss_weight: 45.0" in result.stdout
    )
    cfg = compose("train_decoder", ["data=demo", "model=tiny"])
    assert cfg.gpt == "auto" and cfg.feat_match_loss_weight == 108.0 and cfg.run_name == "demo"


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tmp_path, workdir, prepared_24k, decoder_trained
):
    """torchrun on CPU: two ranks follow one process accumulating their two micro-batches
    (spectral-only: exact; with the discriminator the spectral-norm power iteration runs once per
    forward, so ranks and accumulation differ slightly by design: that run must just train)."""
    import os

    common = decoder_data_overrides(workdir) + DECODER_OVERRIDES + ["batch_size=1", "max_steps=2"]
    single = train_decoder.run(
        compose("train_decoder", common + [f"paths.runs_dir={tmp_path / 'one'}", "grad_accum_steps=2"])
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "xtts_ft.cli",
        "train-decoder",
    ]
    for variant, extra in (("two", []), ("two_adv", ["adversarial=true"])):
        done = subprocess.run(
            launch + common + extra + [f"paths.runs_dir={tmp_path / variant}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("trained the decoder for 2 steps") == 1
    a = torch.load(single, weights_only=True)
    b = torch.load(tmp_path / "two" / "demo" / "decoder" / "state.pt", weights_only=True)
    assert a["sampler"]["global_batch"] == b["sampler"]["global_batch"] == 2
    one, two = (tmp_path / r / "demo" / "decoder" for r in ("one", "two"))
    # The same gradients (all-reduced vs accumulated: equal up to summation order) ...
    np.testing.assert_allclose(
        [v for _, v in _scalars(two, "train/grad_norm")][:1],
        [v for _, v in _scalars(one, "train/grad_norm")][:1],
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        [v for _, v in _scalars(two, "train/loss_mel")], [v for _, v in _scalars(one, "train/loss_mel")], rtol=1e-3
    )
    # ... and the same weights, except where Adam turns a near-zero gradient's rounding into a full
    # step of either sign (its first steps move every weight by about lr, whatever the gradient).
    diffs = torch.cat([(b["decoder"][k] - v).abs().flatten() for k, v in a["decoder"].items()])
    assert (diffs > 1e-4).float().mean() < 0.02 and diffs.max() <= 2 * 2 * 1e-3 + 1e-6
    adv = torch.load(tmp_path / "two_adv" / "demo" / "decoder" / "state.pt", weights_only=True)
    assert adv["step"] == 2 and all(
        torch.isfinite(v).all() for v in adv["discriminator"].values() if v.is_floating_point()
    )
    assert json.loads((tmp_path / "two_adv" / "demo" / "decoder" / "progress.json").read_text())["world_size"] == 2


def test_discriminator_starts_from_a_state_or_a_plain_state_dict(tmp_path):
    from xtts_ft.model.decoder import build_discriminator

    weights = build_discriminator().state_dict()
    torch.save({"discriminator": weights, "step": 3}, tmp_path / "state.pt")
    torch.save(weights, tmp_path / "plain.pt")
    torch.save({"discriminator": None}, tmp_path / "spectral.pt")
    for name in ("state.pt", "plain.pt"):
        loaded = decoder_recipe.load_discriminator_init(str(tmp_path / name))
        build_discriminator().load_state_dict(loaded)  # strict: every key, every shape
        assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="adversarial=false"):
        decoder_recipe.load_discriminator_init(str(tmp_path / "spectral.pt"))
    with pytest.raises(FileNotFoundError, match="discriminator=.*nope.pt: no such file"):
        decoder_recipe.load_discriminator_init(str(tmp_path / "nope.pt"))


def test_gpt_choice_auto_base_or_a_file(tmp_path):
    cfg = compose("train_decoder", ["data=demo", "model=tiny", f"paths.runs_dir={tmp_path}", "run_name=x"])
    assert decoder_recipe.gpt_weights(cfg) == ("base", None)  # auto, no GPT run yet
    weights = {"gpt.h.0.attn.c_attn.weight": torch.randn(4, 4)}
    run_state = tmp_path / "x" / "gpt" / "state.pt"
    run_state.parent.mkdir(parents=True)
    torch.save({"gpt": weights, "optimizer": {"state": {}}, "step": 7}, run_state)
    source, loaded = decoder_recipe.gpt_weights(cfg)  # auto: the run's GPT, the one export will carry
    assert source == str(run_state) and torch.equal(
        loaded["gpt"]["gpt.h.0.attn.c_attn.weight"], weights["gpt.h.0.attn.c_attn.weight"]
    )
    cfg.gpt = "base"
    assert decoder_recipe.gpt_weights(cfg) == ("base", None)
    torch.save({"gpt": weights, "step": 3}, tmp_path / "best.pt")
    cfg.gpt = str(tmp_path / "best.pt")
    assert decoder_recipe.gpt_weights(cfg)[0] == str(tmp_path / "best.pt")
    torch.save({"decoder": weights}, tmp_path / "decoder.pt")
    cfg.gpt = str(tmp_path / "decoder.pt")
    with pytest.raises(ValueError, match="holds no GPT weights"):
        decoder_recipe.gpt_weights(cfg)


def test_prepare_does_not_replace_a_dataset_the_decoder_reads(tmp_path, workdir, prepared_24k, monkeypatch):
    from xtts_ft.stages import prepare

    cfg = compose(
        "train_decoder",
        decoder_data_overrides(workdir) + DECODER_OVERRIDES + [f"paths.runs_dir={tmp_path}", "max_steps=1"],
    )
    manifest = (prepared_24k / "train.jsonl").read_bytes()
    refusals = []

    def while_training(cfg, runtime, out):  # stands for the loop: `prepare force=true` meanwhile
        with pytest.raises(RuntimeError) as err:
            prepare.run(compose("prepare", decoder_data_overrides(workdir) + ["decoder_copies=true", "force=true"]))
        refusals.append(str(err.value))
        return out

    monkeypatch.setattr(train_decoder, "train", while_training)
    train_decoder.run(cfg)
    assert refusals[0].startswith(f"{prepared_24k} is in use by the training run {train_decoder.run_dir(cfg)} (pid ")
    assert (prepared_24k / "train.jsonl").read_bytes() == manifest


def test_a_24khz_target_outside_the_manifests_folder_is_refused(tmp_path):
    from xtts_ft.train.decoder import target_paths

    manifest = tmp_path / "train.jsonl"
    row = {"audio": "wavs/a.wav", "text": "hi", "speaker": "s", "language": "en", "duration": 1.0}
    manifest.write_text(json.dumps({**row, "audio_24k": "wavs_24k/a.wav"}) + "\n", encoding="utf-8")
    assert target_paths(manifest) == {(tmp_path / "wavs/a.wav").resolve(): (tmp_path / "wavs_24k/a.wav").resolve()}
    manifest.write_text(json.dumps({**row, "audio_24k": "../../etc/passwd"}) + "\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match="audio_24k '../../etc/passwd' of wavs/a.wav is not inside the manifest's folder"
    ):
        target_paths(manifest)


def test_a_step_checkpoint_of_the_decoder_exports_without_its_state(tmp_path, decoder_trained):
    import shutil

    run_dir = tmp_path / "demo" / "decoder"
    shutil.copytree(decoder_trained.parent, run_dir)
    (run_dir / "state.pt").unlink()
    checkpoint = torch.load(run_dir / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert checkpoint["format_version"] == 2 and checkpoint["step"] == 3 and "opt_gen" not in checkpoint
    out = export.run(
        compose(
            "export",
            [f"paths.runs_dir={tmp_path}", "run_name=demo", "decoder_checkpoint=3", f"out_dir={tmp_path / 'three'}"],
        )
    )
    assert json.loads((out / "xtts_ft.json").read_text())["training"]["decoder_steps"] == 3
    exported = torch.load(out / "model.pth", weights_only=True)["model"]
    trained = torch.load(decoder_trained, weights_only=True)["decoder"]  # the state saved at step 3 too
    assert all(torch.equal(exported[f"hifigan_decoder.waveform_decoder.{k}"], v) for k, v in trained.items())
