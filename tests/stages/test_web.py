"""The web demo: the page builds from a trained export, Generate gives 24 kHz audio through the
shared synthesizer, bad input becomes a message; and (slow) the same in a real headless chromium."""

from __future__ import annotations

import io
import shutil
import socket
import sys
import types
import urllib.request

import numpy as np
import pytest
import soundfile as sf

gr = pytest.importorskip("gradio", reason="the web demo needs the `web` extra: pip install 'xtts-ft[web]'")

from xtts_ft.config import compose  # noqa: E402
from xtts_ft.errors import BadValue, MissingPackage  # noqa: E402
from xtts_ft.serving import web as page  # noqa: E402
from xtts_ft.stages import web  # noqa: E402


def _reference(prepared):
    return str(next((prepared / "wavs").glob("0_wavs__alicia*.wav")))


def _component(app, elem_id):
    return next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def test_page_offers_the_models_languages_emotions_and_voices(synthesizer):
    app = page.build_app(synthesizer)
    assert isinstance(app, gr.Blocks)
    language = _component(app, "language")
    assert [value for _, value in language.choices] == synthesizer.languages
    assert language.value == "en"
    # The demo export has no emotion tokens, presets or named voices: only the defaults.
    assert [value for _, value in _component(app, "emotion").choices] == [page.NO_EMOTION]
    assert _component(app, "voice").visible is False
    assert _component(app, "reference").type == "filepath"
    assert "generate" in {dep.api_name for dep in app.fns.values()}


def test_choices_list_tokens_then_presets_once_and_named_voices():
    model = types.SimpleNamespace(
        languages=["en", "wo"],
        emotion_tokens=["happy", "sad"],
        emotion_presets={"sad": {}, "whisper": {}},
        voice_names=["alicia"],
    )
    assert page.choices(model) == {
        "language": ["en", "wo"],
        "emotion": [page.NO_EMOTION, "happy", "sad", "whisper"],
        "voice": [page.REFERENCE_VOICE, "alicia"],
    }


def test_generate_gives_24khz_audio_and_a_status_line(synthesizer, prepared):
    (rate, wav), status = page.generate(
        synthesizer, "Hello there.", "en", page.NO_EMOTION, _reference(prepared), page.REFERENCE_VOICE, 0
    )
    assert rate == 24000
    assert wav.dtype == np.int16 and wav.ndim == 1 and wav.size > 0.1 * rate
    audio = wav.astype(np.float32) / 32767
    assert np.isfinite(audio).all() and np.sqrt(np.mean(audio**2)) > 1e-3
    assert f"{wav.size / rate:.2f} s at 24000 Hz" in status
    # The status says what the synthesizer reported: the same request, synthesized directly.
    direct = synthesizer.synthesize(
        text="Hello there.", language="en", reference=_reference(prepared), decoding={"seed": 0}
    )
    assert direct.wav.size == wav.size
    assert status.endswith(
        "; the GPT stopped by itself"
        if direct.stopped
        else "; cut by the babble guard in 1 of 1 sentence (the GPT did not stop)"
    )


def _stub(stopped):
    """A synthesizer whose GPT stops (True) or is cut (False) in each sentence, as told."""
    from xtts_ft.inference import Synthesis

    return types.SimpleNamespace(
        languages=["en"],
        sample_rate=24000,
        clone_voice=lambda reference: None,
        synthesize=lambda **request: Synthesis(np.zeros(24000, dtype=np.float32), 24000, 0.5, list(stopped)),
    )


@pytest.mark.parametrize(
    "stopped, ending",
    [
        ([True, True], "; the GPT stopped by itself"),
        ([True, False, True], "; cut by the babble guard in 1 of 3 sentences (the GPT did not stop)"),
        ([False], "; cut by the babble guard in 1 of 1 sentence (the GPT did not stop)"),
    ],
)
def test_status_line_reports_each_cut_sentence(stopped, ending, tmp_path):
    reference = tmp_path / "r.wav"
    reference.write_bytes(b"RIFF")
    _, status = page.generate(
        _stub(stopped), "Hello there.", "en", page.NO_EMOTION, str(reference), page.REFERENCE_VOICE, 0
    )
    assert status == "1.00 s at 24000 Hz in 0.50 s (real-time factor 0.50)" + ending


def test_text_and_upload_limits(tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 * 2**20 + 1))
    with pytest.raises(gr.Error, match="The text is 12 characters long; this page takes at most 10"):
        page.generate(
            _stub([True]), "Hello there.", "en", page.NO_EMOTION, str(big), page.REFERENCE_VOICE, 0, max_text_chars=10
        )
    with pytest.raises(gr.Error, match="The reference clip is 2.0 MB; this page takes at most 2 MB"):
        page.generate(
            _stub([True]), "Hello there.", "en", page.NO_EMOTION, str(big), page.REFERENCE_VOICE, 0, max_upload_mb=2
        )
    (_, pcm), _ = page.generate(
        _stub([True]), "Hello there.", "en", page.NO_EMOTION, str(big), page.REFERENCE_VOICE, 0, max_upload_mb=3
    )
    assert pcm.size == 24000


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (
            ["host=0.0.0.0"],
            "host=0.0.0.0 serves the page beyond this machine, and no login is set — fix: auth=user:password",
        ),
        (["share=true"], "share=true serves the page"),
        (["auth=alice"], "auth must be user:password"),
        (["auth=:secret"], "auth must be user:password"),
    ],
)
def test_serving_beyond_this_machine_needs_a_login(overrides, refused):
    with pytest.raises(BadValue, match=refused):
        web.run(compose("web", ["checkpoint=never-loaded", *overrides]))  # refused before the model loads


def test_login_from_auth_or_an_explicit_choice_to_serve_anyone():
    assert web.login(compose("web", ["checkpoint=x"])) is None  # this machine only
    assert web.login(compose("web", ["checkpoint=x", "host=0.0.0.0", "auth=alice:pa:ss"])) == ("alice", "pa:ss")
    assert web.login(compose("web", ["checkpoint=x", "share=true", "allow_unauthenticated=true"])) is None


def test_named_voice_and_emotion_preset_of_an_export(workdir, exported, prepared, tmp_path):
    from tests.helpers.settings import demo_overrides
    from xtts_ft.inference import XttsSynthesizer
    from xtts_ft.stages import export

    reference = _reference(prepared)
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    out = export.run(
        compose(
            "export",
            paths
            + [
                "run_name=demo",
                f"out_dir={tmp_path / 'voiced'}",
                f"+voices={{alicia: {reference}}}",
                f"+emotions={{calm: {reference}}}",
            ],
        )
    )
    synthesizer = XttsSynthesizer(out, device="cpu")
    app = page.build_app(synthesizer)
    assert [value for _, value in _component(app, "emotion").choices] == [page.NO_EMOTION, "calm"]
    voice = _component(app, "voice")
    assert voice.visible is True and [value for _, value in voice.choices] == [page.REFERENCE_VOICE, "alicia"]
    (rate, wav), status = page.generate(synthesizer, "Hello there.", "en", "calm", None, "alicia", 1)
    # The page's request is the module's: same voice, preset and seed, same samples.
    direct = synthesizer.synthesize(
        text="Hello there.", language="en", voice="alicia", emotion="calm", decoding={"seed": 1}
    )
    assert rate == 24000 and wav.size == direct.wav.size > 0
    assert np.array_equal(wav, (np.clip(direct.wav, -1, 1) * 32767).astype(np.int16))


@pytest.mark.parametrize(
    "text, language, reference, voice, emotion, message",
    [
        ("  ", "en", "ref", page.REFERENCE_VOICE, page.NO_EMOTION, "Type a text"),
        ("Hi.", "xx", "ref", page.REFERENCE_VOICE, page.NO_EMOTION, "'xx' is not one of this model's"),
        ("Hi.", "en", None, page.REFERENCE_VOICE, page.NO_EMOTION, "Upload or record a reference clip"),
        ("Hi.", "en", "ref", "alicia", page.NO_EMOTION, "Both a reference clip and the named voice 'alicia'"),
        ("Hi.", "en", None, "bob", page.NO_EMOTION, "no voice named 'bob'"),
        ("Hi.", "en", "ref", page.REFERENCE_VOICE, "furious", "this model has no emotion 'furious'"),
        ("Hi.", "en", "not-audio", page.REFERENCE_VOICE, page.NO_EMOTION, "Cannot use this reference clip"),
        (
            "Hi.",
            "en",
            "short",
            page.REFERENCE_VOICE,
            page.NO_EMOTION,
            "Cannot use this reference clip: .* give at least 0.5 s",
        ),
    ],
)
def test_bad_input_is_a_message_on_the_page(
    synthesizer, prepared, tmp_path, text, language, reference, voice, emotion, message
):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a wav")
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(2205, dtype=np.float32), 22050)
    reference = {"ref": _reference(prepared), "not-audio": str(not_audio), "short": str(short), None: None}[reference]
    with pytest.raises(gr.Error, match=message):
        page.generate(synthesizer, text, language, emotion, reference, voice, 0)


def test_missing_gradio_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(MissingPackage, match=r"pip install 'xtts-ft\[web\]'"):
        page.build_app(object())


def test_run_serves_the_export_where_asked(exported, monkeypatch):
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs, app=self))
    web.run(
        compose(
            "web",
            [
                f"checkpoint={exported}",
                "port=7999",
                "host=0.0.0.0",
                "device=cpu",
                "auth=alice:secret",
                "max_upload_mb=5",
                "max_text_chars=300",
            ],
        )
    )
    assert {k: launched[k] for k in ("server_name", "server_port", "share", "auth", "max_file_size")} == {
        "server_name": "0.0.0.0",
        "server_port": 7999,
        "share": False,
        "auth": ("alice", "secret"),
        "max_file_size": 5 * 2**20,
    }
    assert isinstance(launched["app"], gr.Blocks)
    assert _component(launched["app"], "text").max_length == 300


# --- a real browser ------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; scripts/setup_env.sh does)",
)
def test_browser_types_uploads_generates_and_gets_24khz_audio(synthesizer, prepared, monkeypatch):
    pytest.importorskip("selenium", reason="needs selenium (the `dev` extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    requests = []  # what reached the synthesizer: the page's inputs, not the defaults
    synthesize = synthesizer.synthesize
    monkeypatch.setattr(synthesizer, "synthesize", lambda **kwargs: requests.append(kwargs) or synthesize(**kwargs))

    app = page.build_app(synthesizer)
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    # An explicit driver path: selenium would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(app.local_url)
        button = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generate"))

        # Empty text: a message on the page, not a trace.
        button.click()
        # The toast fades in: wait for its text, not only for the element.
        wait.until(
            lambda d: any(
                "Type a text" in t.text for t in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-text]")
            )
        )
        driver.find_element(By.CSS_SELECTOR, "[data-testid=toast-close]").click()

        driver.find_element(By.CSS_SELECTOR, "#text textarea").send_keys("Bonjour à tous.")
        language = driver.find_element(By.CSS_SELECTOR, "#language input")
        language.click()
        option = wait.until(
            lambda d: next(
                (
                    li
                    for li in d.find_elements(By.CSS_SELECTOR, "li[role=option]")
                    if li.text.replace("✓", "").strip() == "fr"
                ),
                None,
            )
        )
        option.click()
        driver.find_element(By.CSS_SELECTOR, "#reference input[type=file]").send_keys(_reference(prepared))
        # Uploaded once gradio shows the clip's download link.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reference [data-testid=download-link]"))
        button.click()

        audio = WebDriverWait(driver, 120).until(
            lambda d: next(
                (a for a in d.find_elements(By.CSS_SELECTOR, "#output audio") if a.get_attribute("src")), None
            )
        )
        status = driver.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
        with urllib.request.urlopen(audio.get_attribute("src"), timeout=30) as response:
            wav, rate = sf.read(io.BytesIO(response.read()), dtype="float32")
    finally:
        driver.quit()
        app.close()
    assert rate == 24000 and wav.ndim == 1 and wav.size > 0.1 * rate
    assert np.isfinite(wav).all() and np.sqrt(np.mean(wav**2)) > 1e-3
    assert f"{wav.size / rate:.2f} s at 24000 Hz" in status
    assert len(requests) == 1
    assert (
        requests[0]["text"] == "Bonjour à tous." and requests[0]["language"] == "fr" and requests[0]["voice"] is None
    )
