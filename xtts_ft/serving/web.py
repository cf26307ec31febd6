"""The Gradio page to try an export in the browser: built here, launched by `xtts-ft web`.

Text, language, emotion, a voice (an uploaded or recorded reference clip, or one of the
export's named voices) and a seed in; 24 kHz speech and a status line (duration, real-time
factor, whether the GPT stopped by itself) out. Everything goes through the one inference
path, `XttsSynthesizer`; this module only turns page inputs into a request and the
synthesizer's errors into messages shown on the page.

gradio is an optional extra (`pip install 'xtts-ft[web]'`) and is imported only inside the
functions here, so importing this module (or the CLI) never needs it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from xtts_ft.errors import MissingPackage

if TYPE_CHECKING:  # for annotations only: importing these costs seconds
    import gradio as gr

    from xtts_ft.inference import XttsSynthesizer

NO_EMOTION = "none"
# Per-request limits (conf/web.yaml sets them for `xtts-ft web`).
MAX_TEXT_CHARS = 1000
MAX_UPLOAD_MB = 20.0
REFERENCE_VOICE = "reference clip (upload)"  # the voice dropdown's entry for "use the upload"
INSTALL_HINT = "the web demo needs gradio: pip install 'xtts-ft[web]'"

log = logging.getLogger(__name__)


def import_gradio():
    try:
        import gradio
    except ImportError as error:
        raise MissingPackage(INSTALL_HINT) from error
    return gradio


def launch(app: "gr.Blocks", host: str, port: int, share: bool, **options) -> None:
    """Serve the page (until Ctrl-C, unless `options` say otherwise), with our word on the console, not
    gradio's: its start-up lines tell the user to "set `share=True` in `launch()`", a call they never
    make. Gradio's quiet mode keeps them off; what is left of its own (the public URL of share=true, a
    link it could not make) still prints. `options` go to gradio's launch (auth, max_file_size, ...)."""
    # Hydra sets the root logger to INFO; gradio's start-up probes of its own server would each log a line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    address = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    public = (
        "share=true: gradio is asked for a temporary public *.gradio.live link (needs internet)"
        if share
        else "share=true adds a temporary public link, auth=user:password a login"
    )
    log.info(f"starting the page at {address} (Ctrl-C stops it); {public}")
    app.launch(server_name=host, server_port=port, share=share, quiet=True, **options)


def choices(synthesizer: "XttsSynthesizer") -> Dict[str, List[str]]:
    """The dropdowns' entries: the model's languages, its emotion tokens and the export's
    presets (a name that is both is listed once: the synthesizer then applies both), its voices."""
    emotions = [NO_EMOTION, *synthesizer.emotion_tokens]
    emotions += [name for name in synthesizer.emotion_presets if name not in emotions]
    return {
        "language": synthesizer.languages,
        "emotion": emotions,
        "voice": [REFERENCE_VOICE, *synthesizer.voice_names],
    }


def generate(
    synthesizer: "XttsSynthesizer",
    text: Optional[str],
    language: Optional[str],
    emotion: Optional[str] = NO_EMOTION,
    reference: Optional[str] = None,
    voice: Optional[str] = REFERENCE_VOICE,
    seed: Optional[float] = 0,
    *,
    max_text_chars: int = MAX_TEXT_CHARS,
    max_upload_mb: float = MAX_UPLOAD_MB,
) -> Tuple[Tuple[int, np.ndarray], str]:
    """One click of Generate: ((sample rate, int16 samples), status line).

    Bad input raises gr.Error, which the page shows as a message (any other exception would
    show as a bare "Error" and leave the trace in the server log)."""
    gr = import_gradio()

    def error(message: str):  # the user's mistake, shown on the page: no traceback in the server log
        return gr.Error(message, print_exception=False)

    text = (text or "").strip()
    if not text:
        raise error("Type a text to speak.")
    if len(text) > max_text_chars:  # the page caps typing; an API call could still send a book
        raise error(f"The text is {len(text)} characters long; this page takes at most {max_text_chars}.")
    if language not in synthesizer.languages:
        raise error(
            f"Choose a language: {language!r} is not one of this model's ({', '.join(synthesizer.languages)})."
        )
    named = voice if voice and voice != REFERENCE_VOICE else None
    if named is None and not reference:
        raise error("Upload or record a reference clip (3-10 s of the voice to clone), or choose a named voice.")
    if named is not None and reference:
        # The synthesizer takes exactly one voice; guessing which one was meant would surprise someone.
        raise error(
            f"Both a reference clip and the named voice {named!r} are set: clear the clip, or set the voice to {REFERENCE_VOICE!r}."
        )
    if reference:
        megabytes = os.path.getsize(reference) / 2**20 if os.path.isfile(reference) else 0.0
        if megabytes > max_upload_mb:  # gradio refuses larger uploads; a path sent through the API is checked here
            raise error(
                f"The reference clip is {megabytes:.1f} MB; this page takes at most {max_upload_mb:g} MB "
                "(3-10 s of audio is all it needs)."
            )
        try:  # read it here (cached per file) so an unreadable or too short upload gets its own message
            synthesizer.clone_voice(reference)
        except (RuntimeError, ValueError, OSError) as exc:
            raise error(f"Cannot use this reference clip: {exc}") from exc
    try:
        result = synthesizer.synthesize(
            text=text,
            language=language,
            reference=reference or None,
            voice=named,
            emotion=None if emotion in (None, "", NO_EMOTION) else emotion,
            # An empty seed box means a fresh random draw each click.
            decoding={"seed": None if seed is None else int(seed)},
        )
    except (ValueError, KeyError) as exc:  # e.g. an unknown emotion or voice name sent through the API
        raise error(str(exc.args[0] if exc.args else exc)) from exc
    # 16-bit PCM: what a browser plays everywhere, and gradio writes it without converting.
    pcm = (np.clip(result.wav, -1.0, 1.0) * 32767).astype(np.int16)
    sentences = len(result.stopped_per_sentence)
    cut = sentences - sum(result.stopped_per_sentence)
    stop = (
        "the GPT stopped by itself"
        if cut == 0
        else f"cut by the babble guard in {cut} of {sentences} sentence{'s' if sentences > 1 else ''} (the GPT did not stop)"
    )
    status = (
        f"{result.duration:.2f} s at {result.sample_rate} Hz in {result.seconds_to_generate:.2f} s "
        f"(real-time factor {result.real_time_factor:.2f}); {stop}"
    )
    return (result.sample_rate, pcm), status


def build_app(
    synthesizer: "XttsSynthesizer",
    title: Optional[str] = None,
    max_text_chars: int = MAX_TEXT_CHARS,
    max_upload_mb: float = MAX_UPLOAD_MB,
) -> "gr.Blocks":
    """The page, built but not launched (tests call it and drive the result)."""
    gr = import_gradio()
    options = choices(synthesizer)
    name = title or (synthesizer.model_dir.name if synthesizer.model_dir else "XTTS-v2")
    with gr.Blocks(title=f"{name} · xtts-ft", analytics_enabled=False) as app:
        gr.Markdown(
            f"## {name}\nXTTS-v2 speech synthesis with voice cloning ({len(options['language'])} languages). "
            "Give a text, a language and a voice: a 3-10 s reference clip to clone, or a named voice of the export."
        )
        with gr.Row():
            with gr.Column():
                inputs = input_controls(gr, options, max_text_chars)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                outputs = output_controls(gr, synthesizer.sample_rate)

        def on_generate(text, language, emotion, reference, voice, seed):
            return generate(
                synthesizer,
                text,
                language,
                emotion,
                reference,
                voice,
                seed,
                max_text_chars=max_text_chars,
                max_upload_mb=max_upload_mb,
            )

        # One synthesis at a time: the synthesizer's voice cache and torch's global seed are not thread-safe.
        button.click(on_generate, inputs=inputs, outputs=outputs, api_name="generate", concurrency_limit=1)
    return app


def input_controls(gr, options: Dict[str, List[str]], max_text_chars: int) -> list:
    """The request's fields, in `generate`'s order: text, language, emotion, reference, voice, seed."""
    text = gr.Textbox(
        label="Text",
        lines=3,
        placeholder="The birch canoe slid on the smooth planks.",
        elem_id="text",
        max_length=max_text_chars,
    )
    languages = options["language"]
    with gr.Row():
        language = gr.Dropdown(
            languages,
            value="en" if "en" in languages else languages[0],
            label="Language",
            elem_id="language",
        )
        emotion = gr.Dropdown(
            options["emotion"],
            value=NO_EMOTION,
            label="Emotion",
            elem_id="emotion",
            interactive=len(options["emotion"]) > 1,
        )
    reference = gr.Audio(
        label="Reference voice (3-10 s clip to clone)",
        type="filepath",
        sources=["upload", "microphone"],
        elem_id="reference",
    )
    # Only exports with speakers_xtts.pth have named voices; without, the dropdown would only confuse.
    voice = gr.Dropdown(
        options["voice"],
        value=REFERENCE_VOICE,
        label="Voice",
        elem_id="voice",
        visible=len(options["voice"]) > 1,
    )
    seed = gr.Number(value=0, precision=0, label="Seed (empty: random)", elem_id="seed")
    return [text, language, emotion, reference, voice, seed]


def output_controls(gr, sample_rate: int) -> list:
    """The answer: the speech and the status line."""
    # The browser's own player (not gradio's waveform view): plain <audio src=...>, works everywhere.
    output = gr.Audio(
        label=f"Speech ({sample_rate} Hz)",
        type="numpy",
        format="wav",
        interactive=False,
        elem_id="output",
        waveform_options=gr.WaveformOptions(show_recording_waveform=False),
    )
    status = gr.Textbox(label="Status", interactive=False, elem_id="status")
    return [output, status]
