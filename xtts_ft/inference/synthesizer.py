"""`XttsSynthesizer`: the one object every caller synthesizes through (CLI, notebooks, evaluation, the
web page, training's eval audio, tests).

It loads the released base, an export or a Hub id with coqui-tts's own loader (or wraps a model in
memory), applies LoRA adapters, clones voices from reference audio it loads itself (soundfile + soxr,
never torchaudio.load) and caches their conditioning latents per reference file, applies emotions
(tokens or presets), checks each request once (`_request`), and applies the decoding settings of the
model's config.json unless overridden. One text goes through coqui's Xtts.inference (`synthesize`), or,
streamed, through our loop over coqui's streaming generator (`stream`, see streaming); many texts
through our batched generate (`iter_synthesize` and the calls over it, see batched).

Every call samples from a seed: `seed=` (or `decoding={"seed": ...}`, the same value if both are given),
or, unseeded, a fresh one drawn from torch's global RNG, so two unseeded calls differ. The seed used comes
back with the audio (`Synthesis.seed`, `AudioChunk.seed`): passed as `seed=` to the same call, it gives that
audio again.
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from xtts_ft.data.audio import load_audio, write_wav
from xtts_ft.data.text import clean_text
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.inference import batched, cpu_kernels, streaming
from xtts_ft.inference.requests import split_sentences
from xtts_ft.inference.types import DECODING_KEYS, AudioChunk, PreparedRequest, Synthesis, Voice
from xtts_ft.model.constants import CODES_PER_SECOND, GPT_SAMPLE_RATE
from xtts_ft.model.layout import EMOTIONS_FILE  # an export's emotion presets (name → conditioning latents)
from xtts_ft.model.loading import load_xtts, pick_device, resolve_model_dir


class XttsSynthesizer:
    """`voice_cache_size`: reference clips whose latents are kept (the least recently used go first:
    a server taking uploads must not grow without bound). `max_reference_seconds`: how much of the
    start of a reference clip is read (default: the model's max_ref_len; the rest is never decoded)."""

    def __init__(
        self,
        checkpoint: Union[str, Path],
        device: str = "auto",
        revision: Optional[str] = None,
        voice_cache_size: int = 32,
        max_reference_seconds: Optional[float] = None,
        adapter: Union[str, Path, None] = None,
    ):
        self.model_dir = resolve_model_dir(str(checkpoint), revision)
        self.device = pick_device(device)
        self.config, self.model = load_xtts(self.model_dir, self.device, for_inference=True)
        self.sample_rate = int(self.config.model_args.output_sample_rate)
        self._voices: "OrderedDict[Tuple[str, int, int], Voice]" = OrderedDict()
        self.voice_cache_size, self.max_reference_seconds = voice_cache_size, max_reference_seconds
        self._packed_products = cpu_kernels.PackedProducts()
        if adapter is not None:  # `checkpoint` is then the base the LoRA adapter was trained on
            self.load_adapter(adapter)

    def load_adapter(self, adapter: Union[str, Path], name: str = "default", revision: Optional[str] = None) -> None:
        """Apply a LoRA adapter (PEFT's files: an `export adapter=true` directory, a PEFT adapter folder
        or a Hub id) to the GPT, unmerged, and use it. Several adapters over one base stay loaded
        side by side: `use_adapter(name)` switches per request without reloading."""
        from peft import PeftModel

        from xtts_ft.model import lora
        from xtts_ft.model.loading import init_gpt_for_inference

        adapter_dir = lora.resolve_adapter_dir(str(adapter), revision)
        lora.check_adapter_base(adapter_dir, self.model_dir)
        gpt = self.model.gpt
        # The generation wrapper is a second path to the same blocks: PEFT would look for adapter
        # weights under both names. It is rebuilt below, over the adapted GPT.
        if hasattr(gpt, "gpt_inference"):
            del gpt.gpt_inference
        if getattr(self, "_peft", None) is None:
            self._peft = PeftModel.from_pretrained(gpt, str(adapter_dir), adapter_name=name)
        else:
            self._peft.load_adapter(str(adapter_dir), adapter_name=name)
        self._peft.eval()
        init_gpt_for_inference(gpt, kv_cache=self.model.args.kv_cache)  # the generation wrapper must see PEFT's heads
        self.use_adapter(name)

    def use_adapter(self, name: Optional[str]) -> None:
        """Synthesize with the loaded adapter `name`, or with the bare base (None)."""
        peft_model = getattr(self, "_peft", None)
        if peft_model is None:
            if name is None:
                return
            raise BadValue(
                f"adapter {name!r}: no adapter is loaded (XttsSynthesizer(base, adapter=...) or load_adapter)"
            )
        if name is None:
            peft_model.base_model.disable_adapter_layers()
        elif name not in peft_model.peft_config:
            raise BadValue(f"adapter {name!r} is not loaded (loaded: {', '.join(peft_model.peft_config)})")
        else:
            peft_model.base_model.enable_adapter_layers()
            peft_model.set_adapter(name)
        self._voices.clear()  # cached latents came through the conditioning path of the previous adapter

    @classmethod
    def from_model(cls, config, model, model_dir: Optional[Path] = None) -> "XttsSynthesizer":
        """Wrap a model already in memory (e.g. the GPT being trained, for in-loop eval audio)."""
        self = cls.__new__(cls)
        self.model_dir = Path(model_dir) if model_dir else None
        self.device = next(model.parameters()).device
        self.config, self.model = config, model
        self.sample_rate = int(config.model_args.output_sample_rate)
        self._voices = OrderedDict()
        self.voice_cache_size, self.max_reference_seconds = 32, None
        self._packed_products = cpu_kernels.PackedProducts()
        return self

    @property
    def languages(self) -> List[str]:
        return list(self.config.languages)

    @property
    def emotion_tokens(self) -> List[str]:
        """Emotion tokens the model was extended with (`xtts-ft extend emotions=[...]`)."""
        return list(getattr(self.model.tokenizer, "emotion_tokens", []))

    @property
    def emotion_presets(self) -> Dict[str, dict]:
        """Emotion presets of an export (`xtts-ft export +emotions={happy: clip.wav}`)."""
        if not hasattr(self, "_emotion_presets"):
            path = self.model_dir / EMOTIONS_FILE if self.model_dir else None
            self._emotion_presets = (
                torch.load(path, map_location="cpu", weights_only=True) if path and path.is_file() else {}
            )
        return self._emotion_presets

    def with_emotion(self, voice: Voice, emotion: Optional[str]) -> Tuple[Voice, Optional[str]]:
        """(voice, emotion token to put before the text). An emotion token of the model is used as
        such; a preset replaces the GPT conditioning (prosody) and keeps the voice's timbre."""
        if emotion is None:
            return voice, None
        token = emotion if emotion in self.emotion_tokens else None
        preset = self.emotion_presets.get(emotion)
        if token is None and preset is None:
            raise BadValue(
                f"this model has no emotion {emotion!r}: emotion tokens: {', '.join(self.emotion_tokens) or 'none'}; "
                f"emotion presets: {', '.join(self.emotion_presets) or 'none'} — fix: emotion=<one of those>, or no emotion"
            )
        if preset is not None:
            voice = Voice(preset["gpt_cond_latent"].to(self.device), voice.speaker_embedding)
        return voice, token

    def unknown_characters(self, text: str, language: str) -> List[str]:
        """The characters of `text`, cleaned as synthesis cleans it, that this model's vocabulary
        lacks (synthesis reads each as [UNK], and the tokenizer logs a warning)."""
        tokenizer = self.model.tokenizer
        return tokenizer.unknown_characters(tokenizer.preprocess_text(text.strip().lower(), language))

    @property
    def voice_names(self) -> List[str]:
        manager = self.model.speaker_manager
        return manager.speaker_names if manager is not None else []

    def clone_voice(self, reference: Union[str, Path]) -> Voice:
        """Conditioning latents for a reference clip, computed once per file version."""
        path = Path(reference)
        if not path.is_file():
            what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
            raise MissingFile(f"reference audio {path} {what} — fix: reference=<an audio file of the voice, 3-10 s>")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in self._voices:
            self._voices.move_to_end(key)
            return self._voices[key]
        max_seconds = min(float(self.config.max_ref_len), self.max_reference_seconds or float("inf"))
        audio = torch.from_numpy(load_audio(path, GPT_SAMPLE_RATE, max_seconds=max_seconds)).unsqueeze(0)
        if audio.shape[1] < GPT_SAMPLE_RATE * 0.5:
            raise BadValue(
                f"reference audio {path} is {audio.shape[1] / GPT_SAMPLE_RATE:.2f} s long — fix: give at least 0.5 s (3-10 s is best)"
            )
        gpt_cond_latent = self.model.get_gpt_cond_latents(
            audio,
            GPT_SAMPLE_RATE,
            length=int(self.config.gpt_cond_len),
            chunk_length=int(self.config.gpt_cond_chunk_len),
        )
        speaker_embedding = self.model.get_speaker_embedding(audio.to(self.device), GPT_SAMPLE_RATE)
        self._voices[key] = Voice(gpt_cond_latent, speaker_embedding)
        while len(self._voices) > self.voice_cache_size:
            self._voices.popitem(last=False)
        return self._voices[key]

    def named_voice(self, name: str) -> Voice:
        if name not in self.voice_names:
            raise BadValue(
                f"no voice named {name!r} in {self.model_dir / 'speakers_xtts.pth'}; known: {', '.join(self.voice_names) or 'none'} — fix: voice=<one of those>, or reference=<an audio file to clone>"
            )
        latents = self.model.speaker_manager.speakers[name]
        return Voice(latents["gpt_cond_latent"], latents["speaker_embedding"])

    def decoding_settings(self, overrides: Optional[dict] = None) -> dict:
        settings = {key: getattr(self.config, key) for key in DECODING_KEYS}
        settings.update({k: v for k, v in (overrides or {}).items() if k in DECODING_KEYS and v is not None})
        return settings

    def _request(
        self, text: str, language: str, reference, voice, decoding: Optional[dict], emotion: Optional[str] = None
    ) -> PreparedRequest:
        """A request checked, as every synthesis path reads it (see PreparedRequest); a seed in `decoding` seeds
        torch's global RNG (coqui's sampling follows it)."""
        if not text.strip():
            raise BadValue('text is empty — fix: give something to say, e.g. text="Hello there."')
        if not any(ch.isalnum() for ch in text):  # "?!" or "...": the model would babble until its guard stops it
            raise BadValue(
                f"text {text.strip()[:40]!r} has no words to say, only punctuation or symbols — fix: give words, "
                'e.g. text="Hello there."'
            )
        language = language.split("-")[0] if language != "zh-cn" else language
        if language not in self.languages:
            raise BadValue(
                f"language {language!r} is not in this model's config.languages: {', '.join(self.languages)} "
                f"— fix: language=<one of those> (a new language is added with `xtts-ft extend`)"
            )
        if (reference is None) == (voice is None):
            raise BadValue(
                "a voice is needed: exactly one of reference= or voice= "
                "— fix: reference=<an audio file to clone> or voice=<a named voice of the export>"
            )
        chosen = self.clone_voice(reference) if reference is not None else self.named_voice(voice)
        chosen, emotion_token = self.with_emotion(chosen, emotion)
        prefix = f"[{emotion_token}]" if emotion_token else ""  # the tokenizer reads it as the emotion token
        sentences = self._tokenized_sentences(text, language, prefix)
        decoding = dict(decoding or {})
        settings = self.decoding_settings(decoding)
        max_seconds_per_char = float(decoding.get("max_seconds_per_char") or 0.25)
        if decoding.get("seed") is not None:
            torch.manual_seed(int(decoding["seed"]))
        return PreparedRequest(language, chosen, settings, max_seconds_per_char, prefix, sentences)

    def _tokenized_sentences(self, text: str, language: str, prefix: str) -> List[Tuple[str, List[int]]]:
        """Each sentence of `text` with the token ids XTTS's GPT reads for it: what Xtts.inference feeds its GPT,
        the lower-cased sentence, the emotion token (`prefix`) before it. Too many tokens is refused here (coqui
        asserts it deep inside its inference)."""
        limit = int(self.model.args.gpt_max_text_tokens)
        sentences = [
            (sentence, self.model.tokenizer.encode((prefix + sentence).strip().lower(), lang=language))
            for sentence in split_sentences(text, language)
        ]
        for sentence, tokens in sentences:
            if len(tokens) >= limit:
                raise BadValue(
                    f"the sentence {sentence[:60]!r}... is {len(tokens)} text tokens; the model takes fewer than {limit} "
                    "— fix: split it into shorter sentences (each ending in . ! or ?)"
                )
        return sentences

    def _max_codes(self, sentence: str, language: str, max_seconds_per_char: float) -> int:
        # Babble guard: a sentence cannot need more than ~max_seconds_per_char per character of its text as
        # said: cleaned, numbers as words (Wolof "1 987 654" is 9 characters written, 120 said).
        characters = max(len(sentence), len(clean_text(sentence, language)))
        max_codes = int((2.0 + max_seconds_per_char * characters) * CODES_PER_SECOND)
        return min(max_codes, int(self.model.args.gpt_max_audio_tokens) - 3)

    @contextlib.contextmanager
    def _babble_guard(self, max_codes: int):
        """At most `max_codes` codes for the sentence generated inside. coqui's generate() caps the
        codes with max_length = gpt.max_gen_mel_tokens + prompt, so the guard goes there: passing
        max_new_tokens on top makes transformers warn at every sentence."""
        gpt = self.model.gpt
        default, gpt.max_gen_mel_tokens = gpt.max_gen_mel_tokens, max_codes
        try:
            yield
        finally:
            gpt.max_gen_mel_tokens = default

    def synthesize(
        self,
        text: str,
        language: str,
        reference: Union[str, Path, None] = None,
        voice: Optional[str] = None,
        decoding: Optional[dict] = None,
        emotion: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Synthesis:
        """One text → its audio, through coqui's own Xtts.inference, sentence by sentence, each under the
        babble guard. The voice: `reference` (an audio clip to clone) or `voice` (a named voice of the
        export), exactly one; `emotion`: an emotion token of the model or a preset of the export;
        `decoding`: config.json's decoding settings overridden (DECODING_KEYS) and `max_seconds_per_char`
        (the babble guard's rate, default 0.25). `seed`: the sampling seed (`decoding["seed"]` too; both
        given must agree). Unseeded calls draw a fresh seed, so two of them differ; pass seed= for repeatable
        audio — the result's `seed` is the one used. A bad request is a UserError."""
        decoding, seed = with_seed(decoding, seed)
        request = self._request(text, language, reference, voice, decoding, emotion)
        started = time.perf_counter()
        pieces, stopped = [], []
        for sentence, _ in request.sentences:
            max_codes = self._max_codes(sentence, request.language, request.max_seconds_per_char)
            with self._babble_guard(max_codes):
                out = self.model.inference(
                    request.prefix + sentence,
                    request.language,
                    request.voice.gpt_cond_latent,
                    request.voice.speaker_embedding,
                    enable_text_splitting=False,
                    **request.settings,
                )
            codes = out["gpt_latents"].shape[1]
            stopped.append(codes < max_codes)
            pieces.append(np.asarray(out["wav"], dtype=np.float32).reshape(-1))
        elapsed = time.perf_counter() - started
        return Synthesis(np.concatenate(pieces), self.sample_rate, elapsed, stopped, seed)

    def stream(
        self,
        text: str,
        language: str,
        reference: Union[str, Path, None] = None,
        voice: Optional[str] = None,
        decoding: Optional[dict] = None,
        chunk_codes: int = 20,
        emotion: Optional[str] = None,
        first_chunk_codes: int = 8,
        seed: Optional[int] = None,
    ) -> Iterator[AudioChunk]:
        """Audio as it is generated, each chunk with the seconds since audio was first asked for (the
        first one's is the time to first audio): a sentence's first chunk after `first_chunk_codes` GPT codes, the
        next ones every `chunk_codes` (a code is 1024 samples at 22.05 kHz, ~0.046 s of audio).

        The first chunk is the latency: its codes are generated one by one before anything plays.
        8 codes (~0.37 s of audio, ~0.33 s once the 1024-sample cross-fade overlap is held back) is
        a syllable or two, not a click, and puts the first audio near a quarter of a 48-code
        sentence's synthesis time (full size on 2 CPU cores: 2.8-3.0 s of 13.8-15.4 s, 0.18-0.22,
        BENCHMARKS.md; 20 codes took 0.47). Fewer codes buy little (the prompt pass and a decoder
        call are paid anyway) and leave the decoder almost no context. Later chunks are longer (20:
        ~0.93 s) because each chunk re-decodes all of the sentence's latents so far: fewer, longer
        chunks cost less in all. Bad sizes, text or voice are refused here, before any audio. `seed` as in
        `synthesize` (unseeded: a fresh one, in every chunk's `seed`)."""
        for name, value in (("first_chunk_codes", first_chunk_codes), ("chunk_codes", chunk_codes)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise BadValue(
                    f"{name}={value!r} — fix: {name}=<an integer ≥ 1> (GPT codes per chunk, ~0.046 s of audio each)"
                )
        decoding, seed = with_seed(decoding, seed)
        request = self._request(text, language, reference, voice, decoding, emotion)
        return _seed_in_chunks(streaming.stream_chunks(self, request, first_chunk_codes, chunk_codes), seed)

    def synthesize_many(
        self, requests: List[dict], decoding: Optional[dict] = None, batch_size: int = 8, seed: Optional[int] = None
    ) -> List[Synthesis]:
        """Each request (text, language, reference or voice, optional emotion) → its Synthesis, in order;
        see iter_synthesize."""
        results: List[Optional[Synthesis]] = [None] * len(requests)
        for i, result in self.iter_synthesize(requests, decoding, batch_size, seed):
            results[i] = result
        return results

    def iter_synthesize(
        self, requests: List[dict], decoding: Optional[dict] = None, batch_size: int = 8, seed: Optional[int] = None
    ) -> Iterator[Tuple[int, Synthesis]]:
        """(request index, Synthesis) as each request is done. The GPT decodes up to `batch_size`
        sentences — of any requests, voices and languages — in one generate, then the decoder speaks
        each from the latents that generate computed (see batched.generate). Under greedy decoding (top_k=1)
        a sentence's codes are those of `synthesize`, its audio the same up to float rounding (~1e-7
        of full scale); sampling draws each sentence from its own stream (sentence k of a request:
        seed + k), so the codes do not depend on batch_size or on the other requests, and the audio
        only to float rounding (another row's padding changes the order of a few sums). Every request
        is checked before any is synthesized. A Synthesis's seconds_to_generate holds its share of
        its batches' decode time. `seed` (or `decoding["seed"]`; both given must agree) seeds every request;
        unseeded, each request draws a fresh one. A Synthesis's `seed` is its request's: the request alone,
        synthesized here with that seed, gets the same codes."""
        if batch_size < 1:
            raise BadValue(
                f"batch_size={batch_size} — fix: batch_size=<an integer ≥ 1> (1 decodes one sentence at a time)"
            )
        decoding, shared = with_seed(decoding, seed, draw=False)
        seeds = [shared if shared is not None else fresh_seed() for _ in requests]  # all drawn before any is used
        sentences = [
            s
            for i, request in enumerate(requests)
            for s in self._sentences(i, request, {**decoding, "seed": seeds[i]})
        ]
        settings = self.decoding_settings(decoding)
        for i, result in batched.synthesized_batches(self, sentences, settings, batch_size):
            result.seed = seeds[i]
            yield i, result

    # The batched path's steps, as methods: tests and scripts/bench_inference.py call (and replace) them on an
    # instance, and synthesized_batches goes through them.
    def _sentences(self, index: int, request: dict, decoding: Optional[dict]) -> List[batched.Sentence]:
        return batched.request_sentences(self, index, request, decoding)

    def _generate(self, sentences: List[batched.Sentence], settings: dict) -> List[batched.Generated]:
        return batched.generate(self.model.gpt, sentences, settings, self.device)

    def _batch_kernels(self, packed: dict, rows: int):
        """Within: a batched generate of `rows` sentences runs with cpu_kernels' tricks (see batch_kernels)."""
        return cpu_kernels.batch_kernels(self._packed_products, self.model.gpt.gpt, packed, rows)

    def synthesize_batch(
        self,
        requests: List[dict],
        out_dir: Union[str, Path],
        decoding: Optional[dict] = None,
        batch_size: int = 8,
        seed: Optional[int] = None,
    ) -> List[dict]:
        """Each request (text, language, reference or voice, optional name) → <out_dir>/<name>.wav,
        `batch_size` sentences per GPT generate (iter_synthesize), each file written as soon as its
        request is done, with a progress bar; returns one row per request, in request order (file,
        duration, RTF, stopped, the seed it was sampled with)."""
        from tqdm import tqdm

        out_dir = Path(out_dir)
        names = _output_names(requests, out_dir)
        rows: List[Optional[dict]] = [None] * len(requests)
        done = self.iter_synthesize(requests, decoding, batch_size, seed)
        for i, result in tqdm(done, total=len(requests), desc="synth", unit="text"):
            name, request = names[i], requests[i]
            path = out_dir / f"{name}.wav"
            write_wav(path, result.wav, result.sample_rate)
            rows[i] = {
                "name": name,
                "file": str(path),
                "text": request["text"],
                "language": request["language"],
                "emotion": request.get("emotion"),
                "seconds": round(result.duration, 3),
                "rtf": round(result.real_time_factor, 3),
                "stopped": result.stopped,
                "seed": result.seed,
            }
        return rows

    def synthesize_to_file(self, out: Union[str, Path], **kwargs) -> Synthesis:
        """`synthesize(**kwargs)`, its audio written to `out` (a 16-bit WAV, written atomically)."""
        result = self.synthesize(**kwargs)
        write_wav(Path(out), result.wav, result.sample_rate)
        return result


def fresh_seed() -> int:
    """A new sampling seed from torch's global RNG: different at each call (and in each process), yet
    repeatable after `torch.manual_seed`."""
    return int(torch.randint(2**62, ()))


def with_seed(decoding: Optional[dict], seed: Optional[int], draw: bool = True) -> Tuple[dict, Optional[int]]:
    """(`decoding` with the call's seed in it, that seed): `seed=` or `decoding["seed"]` — both given must be the
    same number, else it is refused — or, unseeded, a fresh one (`draw=False`: None, decoding left unseeded)."""
    decoding = dict(decoding or {})
    given = [value for value in (seed, decoding.get("seed")) if value is not None]
    for value in given:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise BadValue(f"seed={value!r} is not an integer — fix: seed=<an integer>, e.g. seed=0")
    if len({int(value) for value in given}) > 1:
        raise BadValue(
            f"seed={seed} and decoding['seed']={decoding['seed']} disagree — fix: give the seed once (seed=...)"
        )
    chosen = int(given[0]) if given else (fresh_seed() if draw else None)
    if chosen is not None:
        decoding["seed"] = chosen
    return decoding, chosen


def _seed_in_chunks(chunks: Iterator[AudioChunk], seed: int) -> Iterator[AudioChunk]:
    for chunk in chunks:
        chunk.seed = seed
        yield chunk


def _output_names(requests: List[dict], out_dir: Path) -> List[str]:
    """Each request's output name (its `name`, or its index as 0003), every one checked before any synthesis:
    inside out_dir, and one file per request."""
    import os
    from collections import Counter

    from xtts_ft.data.sample import stays_inside

    names = [str(request.get("name") or f"{i:04d}") for i, request in enumerate(requests)]
    outside = [name for name in names if not stays_inside(name)]
    if outside:
        raise BadValue(
            f"name(s) {', '.join(map(repr, outside))} would write outside out_dir {out_dir}: "
            "a name is a file name (or sub/folder/name) under out_dir"
        )
    repeated = sorted(name for name, count in Counter(os.path.normpath(n) for n in names).items() if count > 1)
    if repeated:
        raise BadValue(
            f"name(s) {', '.join(map(repr, repeated))} are given to more than one request (an unnamed "
            "request i is named after its index, e.g. 0003); each becomes <out_dir>/<name>.wav",
            fix="make the names unique",
        )
    return names
