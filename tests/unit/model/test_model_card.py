"""The model card export writes (xtts_ft.model.card), from an export record alone."""

from xtts_ft.model.card import model_card


def record(**extra) -> dict:
    return {
        "languages": ["en", "wo", "zh-cn"],
        "base_model": {"source": "coqui/XTTS-v2", "kind": "hub", "model_sha256": "ab" * 32},
        "training": {"run_name": "wolof", "gpt_steps": 1200},
        "xtts_ft_version": "0.1.0",
        "data": {"train": {"clips": 10, "hours": 0.1, "speakers": {"awa": 10}}},
        **extra,
    }


def test_a_card_without_adapter_says_nothing_of_one():
    card = model_card(record())
    assert "LoRA" not in card and "adapter" not in card
    assert "- zh\n" in card and "base_model: coqui/XTTS-v2" in card  # Hub metadata: ISO 639-1


def test_an_adapter_export_card_names_its_files_and_base():
    adapter = {
        "format": "peft-lora",
        "files": ["adapter_config.json", "adapter_model.safetensors"],
        "base_model": {"source": "models/wolof-extended", "model_sha256": "cd" * 32},
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "targets": ["c_attn", "c_proj", "c_fc"],
        "train_heads": False,
    }
    card = model_card(record(adapter=adapter))
    assert "## The LoRA adapter" in card
    assert "`adapter_config.json`, `adapter_model.safetensors`" in card and "rank\n16, alpha 32" in card
    assert 'XttsSynthesizer("models/wolof-extended", adapter=".")' in card and "sha256 `cdcdcdcdcdcd…`" in card
    assert card.index("## The LoRA adapter") < card.index("## Use with xtts-ft")
