"""Real-world corpus faults: rows that do not fit their layout, byte-order marks, lines in another
encoding, huge files, a worker that dies, paths that leave their folder, symlinked audio."""

import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from xtts_ft.config import ColumnsConfig, SourceConfig, compose
from xtts_ft.data import clips, dataset, records
from xtts_ft.data.formatters import read_corpus
from xtts_ft.data.prepared import up_to_date
from xtts_ft.data.sample import Sample, read_manifest, resolve_audio
from xtts_ft.stages import prepare


def _source(root: Path, formatter: str, columns=None, **fields):
    columns = ColumnsConfig(**columns) if columns else ColumnsConfig()
    return OmegaConf.structured(
        SourceConfig(path=str(root), formatter=formatter, language="en", columns=columns, **fields)
    )


def _read(root: Path, formatter: str, metadata: bytes, name: str = "metadata.csv", **fields) -> list:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(metadata)
    return read_corpus(root, _source(root, formatter, metadata=name, **fields))


def _summary(records: list) -> list:
    """(line, reason) for rejected rows, (line, audio file, text, speaker) for the others."""
    out = []
    for r in records:
        line = int(str(r["source_line"]).rsplit(":", 1)[1].split("-")[0])
        if "rejected" in r:
            out.append((line, r["rejected"][0]))
        else:
            out.append((line, Path(str(r["audio"])).name, r["text"], r["speaker"]))
    return out


def test_coqui_csv_rows_that_do_not_fit_the_header_are_malformed(tmp_path):
    metadata = (
        "\ufeffaudio_file|text|speaker_name\r\n"  # BOM and CRLF, as Excel writes them
        "wavs/a.wav|Hello | world|spk\r\n"  # a `|` inside the transcript
        'wavs/b.wav|He said "hi".|spk\r\n'  # quotes are text
        "wavs/c.wav|no speaker\r\n"  # too few fields
        "\r\n"
        "wavs/d.wav|Fine.|spk\r\n"
    ).encode()
    records = _read(tmp_path / "c", "coqui_csv", metadata)
    assert _summary(records) == [
        (2, "malformed_row"),
        (3, "b.wav", 'He said "hi".', "spk"),
        (4, "malformed_row"),
        (6, "d.wav", "Fine.", "spk"),
    ]
    message = records[0]["rejected"][1]
    assert message.startswith(f"{tmp_path / 'c' / 'metadata.csv'}:2: 4 fields where the header has 3")
    assert records[0]["row"] == "wavs/a.wav|Hello | world|spk"


def test_a_bom_does_not_hide_the_header_or_the_first_id(tmp_path):
    with pytest.raises(ValueError, match=r"metadata.csv:1: header must name .* found 'file'\|'text'"):
        _read(tmp_path / "c", "coqui_csv", "\ufefffile|text\nwavs/a.wav|x\n".encode())
    records = _read(tmp_path / "lj", "ljspeech", "\ufeffLJ001|One.|One.\nLJ002|Two.|Two.\n".encode())
    assert [Path(str(r["audio"])).name for r in records] == ["LJ001.wav", "LJ002.wav"]


def test_ljspeech_rows_have_exactly_three_fields(tmp_path):
    metadata = (
        "LJ001|Hello | world|hello | world\n"  # 5 fields: no reading of it is safe
        "LJ002|Two fields only\n"
        "LJ003|Dr. Smith|Doctor Smith\r\n"
        'LJ004|"Quoted," he said.|\n'
    ).encode()  # empty normalized column: the text
    assert _summary(_read(tmp_path / "lj", "ljspeech", metadata)) == [
        (1, "malformed_row"),
        (2, "malformed_row"),
        (3, "LJ003.wav", "Doctor Smith", "lj"),
        (4, "LJ004.wav", '"Quoted," he said.', "lj"),
    ]


def test_csv_quotes_are_parsed_and_a_stray_quote_swallows_nothing_silently(tmp_path):
    metadata = (
        "file,sentence,who\r\n"
        'a.wav,"Hello, world",ann\r\n'  # a quoted delimiter: one field
        "b.wav,Hello, world,ann\n"  # unquoted: 4 fields
        'c.wav,"never closed,ann\n'  # the quote runs into the next lines...
        "d.wav,x,ann\n"
        'e.wav,"He said ""hi""",ann\n'  # ...until this row's quotes end it badly
        "f.wav,Fine.,ann\n"
    ).encode()
    columns = {"audio": "file", "text": "sentence", "speaker": "who"}
    records = _read(tmp_path / "t", "table", metadata, name="meta.csv", columns=columns)
    assert _summary(records) == [
        (2, "a.wav", "Hello, world", "ann"),
        (3, "malformed_row"),
        (4, "malformed_row"),
        (7, "f.wav", "Fine.", "ann"),
    ]
    assert (
        records[2]["source_line"].endswith("meta.csv:4-6") and "lines 4-6 read as one row" in records[2]["rejected"][1]
    )


def test_tsv_and_jsonl_rows_that_do_not_fit_are_malformed(tmp_path):
    tsv = 'client_id\tpath\tsentence\r\nabc\ta.wav\tSay "cheese".\r\nabc\tb.wav\tOne\tTwo\r\nabc\tc.wav\r\n'.encode()
    assert _summary(_read(tmp_path / "cv", "common_voice", tsv, name="validated.tsv")) == [
        (2, "a.wav", 'Say "cheese".', "abc"),
        (3, "malformed_row"),
        (4, "malformed_row"),
    ]
    jsonl = '{"file": "a.wav", "sentence": "One."}\n{"file": "b.wav", \n[1, 2]\n{"file": "d.wav", "sentence": "Four."}\n'.encode()
    columns = {"audio": "file", "text": "sentence"}
    assert _summary(_read(tmp_path / "j", "table", jsonl, name="meta.jsonl", columns=columns, speaker="s")) == [
        (1, "a.wav", "One.", "s"),
        (2, "malformed_row"),
        (3, "malformed_row"),
        (4, "d.wav", "Four.", "s"),
    ]


def test_a_line_that_is_not_utf8_costs_that_row_only(tmp_path):
    metadata = (
        "audio_file|text|speaker_name\nwavs/a.wav|Naïve.|s\n".encode()
        + "wavs/b.wav|Café.|s\n".encode("latin-1")
        + "wavs/c.wav|Three.|s\n".encode()
    )
    records = _read(tmp_path / "c", "coqui_csv", metadata)
    assert _summary(records) == [(2, "a.wav", "Naïve.", "s"), (3, "bad_encoding"), (4, "c.wav", "Three.", "s")]
    assert records[1]["rejected"][1] == (
        f"{tmp_path / 'c' / 'metadata.csv'}:3: not valid utf-8 (byte 0xe9 at column 15); fix the line, or set "
        "data.sources[i].encoding to the file's encoding (e.g. latin-1, cp1252) if all of it is in another one"
    )
    assert records[1]["row"] == "wavs/b.wav|Caf\\xe9.|s"

    latin = "audio_file|text|speaker_name\nwavs/b.wav|Café.|s\n".encode("latin-1")
    assert _summary(_read(tmp_path / "l", "coqui_csv", latin, encoding="latin-1")) == [(2, "b.wav", "Café.", "s")]
    utf16 = "LJ001|Café|Café\r\n".encode("utf-16")  # with its BOM
    assert _summary(_read(tmp_path / "u", "ljspeech", utf16, encoding="utf-16")) == [(1, "LJ001.wav", "Café", "u")]
    with pytest.raises(ValueError, match=r"encoding='utf-9' .* is not an encoding Python knows"):
        _read(tmp_path / "x", "coqui_csv", latin, encoding="utf-9")


def test_vctk_transcript_in_another_encoding(tmp_path):
    root = tmp_path / "vctk"
    (root / "txt" / "p1").mkdir(parents=True)
    (root / "txt" / "p1" / "p1_001.txt").write_bytes("\ufeffPlease call Stella.\n".encode())
    (root / "txt" / "p1" / "p1_002.txt").write_bytes("Déjà vu.\n".encode("latin-1"))
    records = read_corpus(root, _source(root, "vctk"))
    assert [r["text"] for r in records[:1]] == ["Please call Stella."]
    assert records[1]["rejected"][0] == "bad_encoding" and records[1]["source_line"].endswith("p1_002.txt:1")


def _tone(seconds=1.0, rate=22050):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype("float32")


def _prepare(tmp_path, root, *overrides, formatter="coqui_csv"):
    return prepare.run(
        compose(
            "prepare",
            [
                "data.name=t",
                f"data.sources=[{{path: {root}, formatter: {formatter}, language: en}}]",
                f"paths.processed_dir={tmp_path / 'out'}",
                "max_text_tokens=0",
                *overrides,
            ],
        )
    )


def _dropped(out):
    return [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]


def _kept(out):
    return read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")


def test_prepare_drops_bad_rows_with_their_line_and_keeps_the_rest(tmp_path, capsys):
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    for name in "abcd":
        sf.write(root / "wavs" / f"{name}.wav", _tone(), 22050)
    (root / "metadata.csv").write_bytes(
        "\ufeffaudio_file|text|speaker_name\r\nwavs/a.wav|First one.|s\r\nwavs/b.wav|Hello | world|s\r\n".encode()
        + "wavs/c.wav|Café.|s\r\n".encode("latin-1")
        + "wavs/d.wav|Fourth one.|s\r\n".encode()
    )
    out = _prepare(tmp_path, root)
    assert [(d["reason"], d["source_line"].rsplit(":", 1)[1]) for d in _dropped(out)] == [
        ("malformed_row", "3"),
        ("bad_encoding", "4"),
    ]
    assert sorted(s.text for s in _kept(out)) == ["first one.", "fourth one."]
    assert json.loads((out / "stats.json").read_text())["dropped"]["reasons"] == {
        "malformed_row": 1,
        "bad_encoding": 1,
    }
    _prepare(tmp_path, root)  # the rejected rows' records are as stable as the others
    assert "is up to date" in capsys.readouterr().out


def test_transcripts_with_annotation_markup_are_dropped_not_spoken(tmp_path):
    """<unk>, [laughter], {breath}: cleaning would keep the word and the model would learn to say
    it. Dropped with the tags named; parentheses (ordinary punctuation) are kept."""
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    texts = [
        "So this is it.",
        "So <unk> this is it.",
        "[laughter] So this is it.",
        "So this {breath} is it.",
        "So this (the last one) is it.",
    ]
    for i in range(len(texts)):
        sf.write(root / "wavs" / f"{i}.wav", _tone(), 22050)
    (root / "metadata.csv").write_text(
        "audio_file|text|speaker_name\n" + "".join(f"wavs/{i}.wav|{text}|s\n" for i, text in enumerate(texts))
    )
    out = _prepare(tmp_path, root)
    dropped = _dropped(out)
    assert [(d["reason"], d["source_line"].rsplit(":", 1)[1]) for d in dropped] == [
        ("annotation_markup", str(n)) for n in (3, 4, 5)
    ]
    assert "annotation markup <unk>, which the model would learn to say; fix: remove the tags" in dropped[0]["message"]
    assert sorted(s.text for s in _kept(out)) == ["so this (the last one) is it.", "so this is it."]
    assert not records.MARKUP.search("Mu ne <<waaw>> rekk")  # French quotes typed as << >> are not a tag


def test_a_huge_file_is_too_long_by_its_header_and_never_decoded(tmp_path, monkeypatch):
    huge = tmp_path / "huge.wav"
    sf.write(huge, np.zeros(8000 * 45, dtype="float32"), 8000)  # 45 s: past max_seconds + 30 s
    decoded = []
    monkeypatch.setattr(clips, "read_mono", lambda path: decoded.append(path) or sf.read(str(path), dtype="float32"))
    settings = clips.AudioSettings(22050, 0.5, 11.6, 40.0, 0.01, None, False)
    with pytest.raises(clips.Rejected, match=r"45.0 s by its header > max_seconds=11.6 .*not decoded") as rejected:
        clips.process_audio(huge, settings)
    assert rejected.value.reason == "too_long" and decoded == []
    sf.write(tmp_path / "long.wav", _tone(seconds=13.0), 22050)  # could trim to fit: decoded, then judged
    with pytest.raises(clips.Rejected, match=r"13.00 s > max_seconds"):
        clips.process_audio(tmp_path / "long.wav", settings)
    assert decoded == [tmp_path / "long.wav"]


def test_a_worker_that_dies_names_its_clip_and_the_next_run_skips_it(tmp_path, monkeypatch, capsys):
    """A worker killed on a clip (as by the kernel's OOM killer): the run fails naming the clip, the
    next run keeps the finished clips and drops that one as `worker_crashed`."""
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    rows = []
    for i in range(24):
        sf.write(root / "wavs" / f"c{i:02d}.wav", _tone(seconds=0.6 + 0.02 * i), 22050)
        rows.append(f"wavs/c{i:02d}.wav|clip {i}|s{i % 2}")
    (root / "metadata.csv").write_text("\n".join(["audio_file|text|speaker_name", *rows]) + "\n")
    victim = root / "wavs" / "c00.wav"  # the first chunk: always a spawned worker's (it cannot be taken back)
    original, stat = victim.read_bytes(), victim.stat()
    check_path = records.check_path

    def swap_for_a_fifo(record, corpus_root, seen):  # after the check: the worker will block reading it
        path = check_path(record, corpus_root, seen)
        if path == victim:
            victim.unlink()
            os.mkfifo(victim)
        return path

    def kill_the_worker_on_the_victim():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for marker in (tmp_path / "out" / ".t.partial").glob(".working-*[0-9]"):
                try:
                    entry = json.loads(marker.read_text())
                except (OSError, ValueError):
                    continue
                if entry["path"] == str(victim):
                    os.kill(int(marker.name.rsplit("-", 1)[1]), signal.SIGKILL)
                    return
            time.sleep(0.005)
        with open(victim, "wb") as unblock:  # no worker took it: let whoever blocks on it go, and fail
            unblock.write(b"x")

    monkeypatch.setattr(clips, "CLIPS_PER_WORKER", 1)
    monkeypatch.setattr(dataset, "check_path", swap_for_a_fifo)  # where check_and_process looks it up
    killer = threading.Thread(target=kill_the_worker_on_the_victim, daemon=True)
    killer.start()
    with pytest.raises(RuntimeError, match=rf"audio worker process died while processing {victim} ") as died:
        _prepare(tmp_path, root, "num_workers=2")
    assert "worker_crashed" in died.value.fix  # the fix: run again, the clip is skipped as `worker_crashed`
    killer.join()
    assert not (tmp_path / "out" / "t").exists()

    monkeypatch.setattr(dataset, "check_path", check_path)
    victim.unlink()
    victim.write_bytes(original)  # the file as it was: the same inputs, so the next run resumes
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    out = _prepare(tmp_path, root, "num_workers=2")
    assert "resuming an interrupted run" in capsys.readouterr().out
    assert [(d["reason"], Path(d["audio"]).name) for d in _dropped(out)] == [("worker_crashed", "c00.wav")]
    assert str(victim) in _dropped(out)[0]["message"]
    assert sorted(s.extra["raw_text"] for s in _kept(out)) == sorted(f"clip {i}" for i in range(1, 24))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_symlinks_inside_the_corpus_are_followed(tmp_path):
    elsewhere = tmp_path / "disk2" / "wavs"
    elsewhere.mkdir(parents=True)
    for name in ("a", "b"):
        sf.write(elsewhere / f"{name}.wav", _tone(), 22050)
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "wavs").symlink_to(elsewhere)
    (root / "metadata.csv").write_text(
        "audio_file|text|speaker_name\nwavs/a.wav|One.|s\nwavs/b.wav|Two.|s\n"
        "wavs/../wavs/a.wav|Same file again.|s\n../disk2/wavs/b.wav|Climbs out.|s\n"
    )
    out = _prepare(tmp_path, root)
    assert sorted(s.text for s in _kept(out)) == ["one.", "two."]
    assert [(d["reason"], d["source_line"].rsplit(":", 1)[1]) for d in _dropped(out)] == [
        ("duplicate_audio", "4"),
        ("outside_root", "5"),
    ]


def test_no_split_possible_explains_the_drops_and_writes_them_first(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    sf.write(tmp_path / "x.wav", _tone(), 22050)
    (root / "metadata.csv").write_text("audio_file|text|speaker_name\n../x.wav|One.|s\n../x.wav|Two.|s\n")
    partial = tmp_path / "out" / ".t.partial"
    with pytest.raises(
        ValueError,
        match=(
            r"from 0 kept clip\(s\).*2 record\(s\) were dropped \(outside_root 2\), "
            rf"e\.g\. .*metadata\.csv:2: {tmp_path / 'x.wav'} is outside the corpus root .*"
            rf"every dropped record and its reason: {partial / 'dropped.jsonl'}"
        ),
    ):
        _prepare(tmp_path, root)
    assert [d["reason"] for d in _dropped(partial)] == ["outside_root", "outside_root"]
    assert not (tmp_path / "out" / "t").exists()


def test_manifest_rows_cannot_leave_the_manifests_folder(tmp_path):
    manifest = tmp_path / "data" / "train.jsonl"
    (tmp_path / "data" / "wavs").mkdir(parents=True)
    sample = Sample(audio="wavs/a.wav", text="x", speaker="s", language="en", duration=1.0)
    assert resolve_audio(manifest, sample) == (tmp_path / "data" / "wavs" / "a.wav").resolve()
    for escaping in ("../../etc/passwd", "/etc/passwd", "wavs/../../x.wav", ""):
        sample.audio = escaping
        with pytest.raises(ValueError, match=rf"train.jsonl: audio '{escaping}' is not inside the manifest's folder"):
            resolve_audio(manifest, sample)
    manifest.write_bytes(
        "\ufeff".encode()
        + json.dumps({"audio": "wavs/a.wav", "text": "x", "speaker": "s", "language": "en", "duration": 1.0}).encode()
        + b"\n"
    )
    assert read_manifest(manifest)[0].audio == "wavs/a.wav"  # a BOM (a hand-edited manifest) is no error
    manifest.write_text(
        json.dumps({"audio": "wavs/a.wav", "text": "x", "speaker": "s", "language": "en", "duration": "abc"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"train.jsonl:1: duration 'abc' is not a number of seconds — fix"):
        read_manifest(manifest)


def test_batch_names_stay_inside_out_dir_and_are_unique(tmp_path, caplog):
    from xtts_ft.inference import XttsSynthesizer, read_requests

    def requests_of(csv: str):
        (tmp_path / "t.csv").write_text(csv)
        return read_requests(tmp_path / "t.csv", "en", "ref.wav", None)

    assert [r["name"] for r in requests_of("\ufefftext,name\nOne.,a\nTwo.,sub/b\nThree.,\n")] == ["a", "sub/b", None]
    with pytest.raises(ValueError, match=r"t.csv, line 3: name '\.\./\.\./x' would write outside out_dir"):
        requests_of("text,name\nOne.,a\nTwo.,../../x\n")
    with pytest.raises(ValueError, match=r"t.csv, line 2: name '/tmp/x' would write outside out_dir"):
        requests_of("text,name\nOne.,/tmp/x\n")
    with pytest.raises(ValueError, match=r"t.csv, line 4: name '\./a' is already used on line 2"):
        requests_of("text,name\nOne.,a\nTwo.,b\nThree.,./a\n")
    # Dirty tables (a QA pass): a comma in an unquoted text is an error naming its line, not a text cut at the
    # comma; lines are the file's own (blank lines and quoted line breaks counted); not UTF-8, or empty: one line.
    with pytest.raises(
        ValueError,
        match=r"t.csv, line 3: 2 fields, the header has 1 — fix: a comma inside a text needs "
        r'the text in double quotes, e.g. "Hello, world."',
    ):
        requests_of("text\nOne.\nHello, world.\n")
    assert [r["text"] for r in requests_of('text\n"Hello, world."\n')] == ["Hello, world."]
    with pytest.raises(ValueError, match=r"t.csv, line 6: empty text"):
        requests_of('text,name\n"Two\nlines.",a\n\nOne.,b\n,c\n')
    (tmp_path / "t.csv").write_bytes("text\nCaf\u00e9.\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"t.csv is not UTF-8 text \(byte 8: invalid continuation byte\) — fix: save it as UTF-8"
    ):
        read_requests(tmp_path / "t.csv", "en", "ref.wav", None)
    with pytest.raises(ValueError, match=r"t.csv: no `text` column \(columns: none: the file is empty\)"):
        requests_of("")
    (tmp_path / "t.tsv").write_text('text\tname\n"Waaw," ne na.\ta\n')  # a TSV has no quoting: the text's quotes stay
    assert [r["text"] for r in read_requests(tmp_path / "t.tsv", "en", "ref.wav", None)] == ['"Waaw," ne na.']
    assert [r["where"] for r in requests_of("text\nOne.\n\nTwo.\n")] == [
        f"{tmp_path / 't.csv'}, line 2",
        f"{tmp_path / 't.csv'}, line 4",
    ]
    # A .txt has no header: a first line "text" (a table's habit) is spoken, and said so.
    (tmp_path / "t.txt").write_text("text\nOne.\n")
    with caplog.at_level(logging.WARNING, logger="xtts_ft.inference"):
        assert [r["text"] for r in read_requests(tmp_path / "t.txt", "en", "ref.wav", None)] == ["text", "One."]
    assert "t.txt, line 1: 'text' is spoken as a text: a .txt has no header" in caplog.text

    # The method checks every name before it synthesizes anything (so no model is needed here).
    synthesizer = XttsSynthesizer.__new__(XttsSynthesizer)
    with pytest.raises(ValueError, match=r"name\(s\) '\.\./x' would write outside out_dir"):
        synthesizer.synthesize_batch([{"text": "a", "language": "en", "name": "../x"}], tmp_path / "out")
    with pytest.raises(ValueError, match=r"name\(s\) '0001' are given to more than one request"):
        synthesizer.synthesize_batch(
            [{"text": "a", "language": "en", "name": "0001"}, {"text": "b", "language": "en"}], tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


# --- data safety and dirty rows found by a QA pass ----------------------------------------------


def _corpus(root: Path, rows: dict, header="audio_file|text|speaker_name", line_end="\n") -> Path:
    """A coqui_csv corpus: {relative audio path: text}, each clip a tone of its own length."""
    for i, name in enumerate(rows):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, _tone(1.0 + 0.25 * i), 22050, format="WAV" if name.endswith(".wav") else "FLAC")
    (root / "metadata.csv").write_text(
        line_end.join([header, *(f"{name}|{text}|s" for name, text in rows.items())]) + line_end
    )
    return root


def test_prepare_never_replaces_a_folder_it_did_not_write(tmp_path):
    from xtts_ft.config import ConfigValueError

    # The corpus lies where the dataset would go: refused before anything is written.
    corpus = _corpus(tmp_path / "out" / "t", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one."})
    (corpus / "NOTES.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"lies inside the dataset folder .* — fix: write the dataset elsewhere"):
        _prepare(tmp_path, corpus)
    assert sorted(p.name for p in corpus.iterdir()) == ["NOTES.txt", "metadata.csv", "wavs"]
    # A folder of the user's at the dataset's name: not replaced.
    corpus = _corpus(tmp_path / "corpus", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one."})
    with pytest.raises(FileExistsError, match="is not a dataset prepare wrote"):
        _prepare(tmp_path, corpus)
    assert (tmp_path / "out" / "t" / "NOTES.txt").read_text() == "mine"
    # A name that is not one folder would replace processed_dir itself, or a sibling.
    for name in ("''", ".", "..", "../t", "cache", "Cache", "/abs"):
        with pytest.raises(ConfigValueError, match="data.name="):
            compose("prepare", [f"data.name={name}"])
    assert compose("prepare", ["data.name=wolof/v2"]).data.name == "wolof/v2"  # a folder inside processed_dir: fine
    # Markup written as HTML entities is markup too.
    with pytest.raises(clips.Rejected, match="annotation markup <unk>"):
        records.check_text("&lt;unk&gt; so this is it", "en", compose("prepare", []), None)


def test_numbers_coqui_cannot_spell_stay_digits(tiny_model_dir, caplog, monkeypatch):
    """coqui's number expansion raises on any Hindi number (num2words has no `hi`), on 28+ digits in Spanish:
    one such line stopped a whole prepare with a traceback, and a synthesis too."""
    from xtts_ft.data.text import clean_text
    from xtts_ft.model.tokenizer import XttsTokenizer

    monkeypatch.setattr("xtts_ft.data.text.UNSPELLED_NUMBERS", set())
    with caplog.at_level("WARNING", logger="xtts_ft.data.text"):
        assert clean_text("आज 2024 में 50% बारिश", "hi") == "आज 2024 में 50 प्रतिशत बारिश"  # the symbol still spelled
        assert clean_text("आज 2025", "hi") == "आज 2025"
    assert [r.getMessage()[:40] for r in caplog.records] == ["some numbers in 'hi' text are left as di"]  # once
    assert (
        clean_text("Número " + "7" * 30 + " y 5", "es") == "número " + "7" * 30 + " y cinco"
    )  # each number on its own
    assert clean_text("I have 5 cats.", "en") == "i have five cats."
    tokenizer = XttsTokenizer(tiny_model_dir / "vocab.json")
    assert tokenizer.encode("आज 2024", "hi") == tokenizer.encode("आज 2024", "hi", report_unknown=False)  # no exception


def test_a_clip_deleted_from_the_dataset_is_rebuilt_and_an_empty_audio_field_is_named(tmp_path):
    root = _corpus(
        tmp_path / "corpus", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one.", "wavs/c.wav": "Third one."}
    )
    with open(root / "metadata.csv", "a") as f:
        f.write("|An empty audio field.|s\nwavs|A folder.|s\nwavs\\c.wav|Windows.|s\n")
    out = _prepare(tmp_path, root)
    messages = {d["text"]: d["message"] for d in _dropped(out)}
    assert messages["An empty audio field."] == "the row names no audio file (its audio field is empty)"
    assert messages["A folder."].endswith("is a folder, not an audio file")
    assert messages["Windows."].endswith("(a Windows path? write / between folders, not \\)")
    clip = out / _kept(out)[0].audio
    clip.unlink()
    assert not up_to_date(out, json.loads((out / "stats.json").read_text())["input_key"])  # was: "up to date"
    _prepare(tmp_path, root)
    assert clip.is_file()


def test_a_table_without_speakers_is_said_and_a_semicolon_csv_is_named(tmp_path, caplog):
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    for name in ("a", "b", "c"):
        sf.write(root / "wavs" / f"{name}.wav", _tone(1.5), 22050)
    (root / "metadata.csv").write_text(
        "file,sentence,Who,mood\nwavs/a.wav,First one.,ann, sad \nwavs/b.wav,Second one.,bob,sad\n"
        "wavs/c.wav,Third one.,ann,\n"
    )
    source = "formatter: table, columns: {audio: file, text: sentence, emotion: mood}"
    with caplog.at_level("WARNING", logger="xtts_ft.data.formatters"):
        records = read_corpus(
            root,
            OmegaConf.structured(
                SourceConfig(
                    path=str(root),
                    language="en",
                    formatter="table",
                    columns=ColumnsConfig(audio="file", text="sentence", emotion="mood"),
                )
            ),
        )
    assert {r["speaker"] for r in records} == {"corpus"} and [r.get("emotion") for r in records] == [
        "sad",
        "sad",
        None,
    ]
    assert any(
        "no speaker in column 'speaker', so every clip is speaker 'corpus'" in r.getMessage() for r in caplog.records
    )
    (root / "metadata.csv").write_text("file;sentence\nwavs/a.wav;First one.\n")
    with pytest.raises(ValueError, match=r"looks ';'-separated.* — fix: save it comma-separated"):
        _prepare(tmp_path, root, formatter=f"table, {source.split(', ', 1)[1]}")


def test_a_dataset_from_other_corpora_is_not_replaced_without_force(tmp_path):
    """`data.sources=[...]` without its own data.name would rebuild the default dataset from another corpus."""
    first = _corpus(tmp_path / "first", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one."})
    second = _corpus(tmp_path / "second", {"wavs/c.wav": "Third one.", "wavs/d.wav": "Fourth one."})
    out = _prepare(tmp_path, first)
    before = (out / "train.jsonl").read_text() + (out / "eval.jsonl").read_text()
    with pytest.raises(
        FileExistsError,
        match=rf"holds the dataset 't' prepared from {re.escape(str(first))}.* — fix: .*data.name=<name>, or prepare's force=true",
    ):
        _prepare(tmp_path, second)
    assert (out / "train.jsonl").read_text() + (out / "eval.jsonl").read_text() == before  # untouched
    assert "Third one" in "".join(s.extra["raw_text"] for s in _kept(_prepare(tmp_path, second, "force=true")))


def test_line_separators_in_a_transcript_keep_the_manifest_readable(tmp_path):
    """U+0085 (a cp1252 … read as latin-1), U+2028: JSON keeps them raw, and a reader splitting on
    them as str.splitlines does would cut a manifest line in two."""
    root = _corpus(
        tmp_path / "corpus", {"wavs/a.wav": "Wait\x85 what", "wavs/b.wav": "One\u2028two", "wavs/c.wav": "Third one."}
    )
    out = _prepare(tmp_path, root)
    kept = _kept(out)
    assert sorted(s.extra["raw_text"] for s in kept) == ["One\u2028two", "Third one.", "Wait\x85 what"]


def test_a_quote_closed_a_row_later_swallows_no_row(tmp_path):
    metadata = (
        "file_name,text\n"
        'c1.wav,"He said hi, then\n'  # a quote opened here...
        'c2.wav,he left the room"\n'  # ...closes here: to the csv module one row of two fields
        'c3.wav,"One line,\nand its second, line"\n'  # a field over two lines, commas in both, is not a row: kept
        "c4.wav,Fine.\n"
    ).encode()
    records = _read(tmp_path / "af", "audiofolder", metadata)
    assert _summary(records) == [
        (2, "malformed_row"),
        (4, "c3.wav", "One line,\nand its second, line", "af"),
        (6, "c4.wav", "Fine.", "af"),
    ]
    assert "lines 2-3 were read as one row, but a later line is a row of its own" in records[0]["rejected"][1]


def test_output_names_never_collide(tmp_path):
    """x_flac.wav, x.wav and x.flac: the fallback name of the third is the first's name."""
    root = _corpus(
        tmp_path / "corpus",
        {"wavs/x_flac.wav": "First one.", "wavs/x.wav": "Second one.", "wavs/x.flac": "Third one."},
    )
    out = _prepare(tmp_path, root, "trim_top_db=60")
    kept = _kept(out)
    assert len({s.audio for s in kept}) == 3
    by_text = {s.text: sf.info(resolve_audio(out / "train.jsonl", s)).duration for s in kept}
    assert by_text["first one."] < by_text["second one."] < by_text["third one."]  # each its own clip (1, 1.25, 1.5 s)


def test_a_wav_cut_short_is_dropped_not_kept_with_its_whole_transcript(tmp_path):
    root = _corpus(
        tmp_path / "corpus", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one.", "wavs/c.wav": "Third one."}
    )
    whole = (root / "wavs" / "c.wav").read_bytes()
    (root / "wavs" / "c.wav").write_bytes(whole[: len(whole) // 3])  # an interrupted copy: the header still says 1.5 s
    out = _prepare(tmp_path, root)
    [dropped] = _dropped(out)
    assert (
        dropped["reason"] == "unreadable_audio"
        and "is cut short: its header promises 1.50 s, the file holds 0.50 s" in dropped["message"]
    )
    assert sorted(s.text for s in _kept(out)) == ["first one.", "second one."]


def test_transcripts_without_a_letter_are_empty_and_html_entities_are_read(tmp_path):
    root = _corpus(
        tmp_path / "corpus",
        {
            "wavs/a.wav": "...",
            "wavs/b.wav": "?!",
            "wavs/c.wav": "Tom &amp; Jerry &quot;run&quot;.",
            "wavs/d.wav": "Fine.",
        },
        line_end="\r",
    )  # classic Mac OS line endings, too
    out = _prepare(tmp_path, root)
    assert [(d["reason"], d["source_line"].rsplit(":", 1)[1]) for d in _dropped(out)] == [
        ("empty_text", "2"),
        ("empty_text", "3"),
    ]
    assert "'...' has no letter or digit" in _dropped(out)[0]["message"]
    assert sorted(s.text for s in _kept(out)) == ["fine.", "tom and jerry run."]


def test_a_language_code_is_checked_before_any_work(tmp_path, caplog):
    root = _corpus(tmp_path / "corpus", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one."})
    cfg = compose(
        "prepare",
        [
            "data.name=t",
            f"data.sources=[{{path: {root}, formatter: coqui_csv, language: EN}}]",
            f"paths.processed_dir={tmp_path / 'out'}",
            "max_text_tokens=0",
        ],
    )
    with pytest.raises(ValueError, match="language codes are lower case — fix: language: en"):
        prepare.run(cfg)
    assert not (tmp_path / "out").exists()
    cfg.data.sources[0].language = "en-US"  # a region in capitals is fine
    records.check_languages(cfg, None)
    cfg.data.sources[0].language = "xx"  # a new language (or a typo): said once, and prepared
    with caplog.at_level("WARNING", logger="xtts_ft.data.records"):
        prepare.run(cfg)
    assert [
        r.getMessage() for r in caplog.records if "'xx' is not one of the base model's languages" in r.getMessage()
    ]


def test_a_metadata_file_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    from xtts_ft.cli import is_user_error, one_line
    from xtts_ft.errors import UserError

    root = _corpus(tmp_path / "corpus", {"wavs/a.wav": "First one."})
    real = Path.read_bytes

    def denied(path):
        if path.name == "metadata.csv":
            raise PermissionError(13, "Permission denied")  # as chmod 000 for another user; root reads anything
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(
        OSError, match=r"cannot read metadata file .*metadata.csv: Permission denied; check that it is readable"
    ) as error:
        read_corpus(root, _source(root, "coqui_csv"))
    # A UserError by type (the OSError names no file of its own): one line on the console, not a
    # traceback, still with the system's errno.
    assert isinstance(error.value, UserError) and is_user_error(error.value) and error.value.errno == 13
    assert one_line(error.value).startswith("error: [Errno 13] cannot read metadata file ")


def test_a_dc_offset_is_removed_and_a_hot_float_file_is_not_clipped(tmp_path):
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    silence = np.zeros(22050, np.float32)
    sf.write(
        root / "wavs" / "dc.wav", np.concatenate([silence, _tone(), silence]) + 0.4, 22050, subtype="FLOAT"
    )  # a faulty recorder
    sf.write(
        root / "wavs" / "hot.wav", 6.0 * _tone(), 22050, subtype="FLOAT"
    )  # peaks near 2.4: recorded hot, never clipped
    sf.write(root / "wavs" / "ok.wav", _tone(1.5), 22050)
    (root / "metadata.csv").write_text(
        "audio_file|text|speaker_name\nwavs/dc.wav|First one.|s\nwavs/hot.wav|Second one.|s\n"
        "wavs/ok.wav|Third one.|s\n"
    )
    out = _prepare(tmp_path, root)
    assert _dropped(out) == []
    clips = {s.text: sf.read(resolve_audio(out / "train.jsonl", s))[0] for s in _kept(out)}
    dc = clips["first one."]
    assert (
        abs(dc.mean()) < 0.01 and len(dc) < 1.5 * 22050
    )  # the offset gone, so the silence around the tone is trimmed
    assert 0.9 < np.abs(clips["second one."]).max() <= 1.0  # scaled to fit, not flattened at full scale


def test_invisible_characters_are_named_and_typographic_quotes_read(tmp_path):
    from xtts_ft.data.text import clean_text, describe_characters

    assert describe_characters(["ɓ", "\u200d", "\u00a0"]) == "ɓ U+200D (zero width joiner) U+00A0 (no-break space)"
    assert clean_text("It\u2019s \u201cfine\u201d\u2026 ok\u200b\u00ad", "en") == "it's fine... ok"


def test_messages_for_common_mistakes_name_the_fix(tmp_path):
    import unicodedata

    # Excel's "Unicode text": a UTF-16 file read as UTF-8.
    with pytest.raises(
        ValueError, match="starts with a UTF-16 byte-order mark: it is not utf-8 — fix: set data.sources"
    ):
        _read(tmp_path / "u16", "coqui_csv", "audio_file|text|speaker_name\nwavs/a.wav|Hi.|s\n".encode("utf-16"))
    # LJSpeech ids written with their extension; a file name in the other Unicode form (macOS: NFD on disk).
    root = tmp_path / "lj"
    (root / "wavs").mkdir(parents=True)
    for name in ("LJ001-0001", "LJ001-0002", unicodedata.normalize("NFD", "café")):
        sf.write(root / "wavs" / f"{name}.wav", _tone(), 22050)
    (root / "wavs" / "empty.wav").write_bytes(b"")
    (root / "metadata.csv").write_text(
        "LJ001-0001.wav|First one.|First one.\nLJ001-0002|Second one.|\ncafé|Third one.|\nempty|Fourth one.|\n"
    )
    out = _prepare(tmp_path, root, formatter="ljspeech")
    assert sorted(s.text for s in _kept(out)) == ["first one.", "second one.", "third one."]
    [dropped] = _dropped(out)
    assert dropped["reason"] == "unreadable_audio" and "is an empty file (0 bytes)" in dropped["message"]
    # A container libsndfile cannot decode: the message says to convert it.
    from xtts_ft.data.audio import header_seconds

    (root / "wavs" / "phone.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(
        RuntimeError,
        match=r"\.m4a is not a format libsndfile reads — fix: convert it \(ffmpeg -i phone.m4a phone.flac\)",
    ):
        header_seconds(root / "wavs" / "phone.m4a")


def test_a_jsonl_text_that_is_a_list_is_malformed_not_markup(tmp_path):
    metadata = '{"file": "a.wav", "sentence": ["Hello", "world"]}\n{"file": "b.wav", "sentence": "Fine."}\n'.encode()
    records = _read(
        tmp_path / "j", "table", metadata, name="meta.jsonl", columns={"audio": "file", "text": "sentence"}
    )
    assert _summary(records) == [(1, "malformed_row"), (2, "b.wav", "Fine.", "j")]
    assert "text ('sentence') is a JSON list, not a string or number" in records[0]["rejected"][1]


def test_a_metadata_file_without_rows_is_named_and_no_empty_bar_is_shown(tmp_path, capsys, caplog):
    """Was: "cannot build both a train and an eval split from 0 kept clip(s)... add data", after a `0clip`
    progress bar printed twice (issue 31, item 8)."""
    from xtts_ft.errors import BadValue

    root = tmp_path / "corpus"
    root.mkdir()
    (root / "metadata.csv").write_text("audio_file|text|speaker_name\n")
    with pytest.raises(BadValue) as raised:
        _prepare(tmp_path, root)
    assert str(raised.value) == (
        f"data.sources[0] (coqui_csv): {root / 'metadata.csv'} has no rows (only its header): nothing to prepare"
    )
    assert raised.value.fix.startswith("add one line per clip under the header `audio_file|text|speaker_name`")
    (root / "metadata.csv").write_text("")
    with pytest.raises(BadValue, match=r"ljspeech\): .*metadata.csv has no rows \(it is empty\)"):
        _prepare(tmp_path, root, formatter="ljspeech")
    assert not (tmp_path / "out" / "t").exists()

    # Beside a source with rows, an empty one is said, and the others are prepared.
    good = _corpus(tmp_path / "good", {"wavs/a.wav": "First one.", "wavs/b.wav": "Second one."})
    sources = f"data.sources=[{{path: {good}, formatter: coqui_csv, language: en}}, {{path: {root}, formatter: ljspeech, language: en}}]"
    with caplog.at_level(logging.WARNING, logger="xtts_ft.data.records"):
        out = _prepare(tmp_path, good, sources)
    assert len(_kept(out)) == 2
    assert (
        f"data.sources[1] (ljspeech): {root / 'metadata.csv'} has no rows (it is empty); prepared from the other sources"
        in caplog.text
    )

    # Rows, but none with work for the audio: no `0clip` bar.
    (root / "metadata.csv").write_text("audio_file|text|speaker_name\nwavs/gone.wav|One.|s\nwavs/gone2.wav|Two.|s\n")
    capsys.readouterr()
    with pytest.raises(BadValue, match=r"2 record\(s\) were dropped \(missing_file 2\)"):
        _prepare(tmp_path, root, "data.name=u")
    assert "prepare audio" not in capsys.readouterr().err
