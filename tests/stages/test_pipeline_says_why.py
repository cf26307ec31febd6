"""A pipeline stage that runs again because an earlier stage ran says so (issue 31, item 2: after `prepare`
rebuilt the demo's dataset, export, synth and evaluate re-ran without a word)."""

import logging
import types

from xtts_ft.config import compose
from xtts_ft.stages import pipeline


def test_a_stage_made_stale_by_an_earlier_one_says_why_it_runs_again(tmp_path, monkeypatch, caplog):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "stages:\n  - stage: prepare\n    overrides: [data=demo]\n  - stage: export\n    overrides: [run_name=x]\n"
        "  - stage: synth\n    overrides: [checkpoint=e, text=Hi., language=en, reference=r.wav, out=o.wav]\n"
    )
    ran = []
    done = {"prepare": False, "export": True, "synth": False}  # prepare rebuilds; export had run; synth never did
    fakes = {
        stage: types.SimpleNamespace(is_done=lambda cfg, s=stage: done[s], run=lambda cfg, s=stage: ran.append(s))
        for stage in done
    }
    monkeypatch.setattr(pipeline.stages, "load", lambda stage: fakes[stage])
    with caplog.at_level(logging.INFO, logger="xtts_ft.stages.pipeline"):
        pipeline.run(compose("pipeline", [f"recipe={recipe}"]))
    assert ran == ["prepare", "export", "synth"]
    headings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("──")][:3]
    assert headings == [
        "── prepare",
        "── export: runs again, as prepare ran before it (its inputs changed)",
        "── synth",  # nothing made before: nothing stale to explain
    ]
