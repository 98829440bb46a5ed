"""The configuration reference is generated from the typed config, and docs/configuration.md holds it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from trainer import cli
from trainer import config as config_module
from trainer.config import ConfigError, config_to_dict
from trainer.config_loading import config_from_dict, load_config
from trainer.config_reference import BEGIN, END, field_docs, render_reference, update_file

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_docs_hold_the_generated_reference():
    text = DOC.read_text(encoding="utf-8")
    generated = text[text.index(BEGIN) : text.index(END) + len(END) + 1]
    assert generated == render_reference(), (
        "docs/configuration.md is out of date: run `cllm4rec config --reference --update docs/configuration.md`")


def test_every_config_field_has_a_docstring_and_a_row():
    docs, reference = field_docs(), render_reference()
    classes = [c for c in vars(config_module).values()
               if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == config_module.__name__]
    assert len(classes) == 12  # eleven sections and TrainConfig
    for cls in classes:
        assert docs[cls.__name__][""], f"{cls.__name__} has no docstring"
        for item in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(getattr(cls(), item.name)):  # sections have a table of their own
                assert docs[cls.__name__].get(item.name), f"{cls.__name__}.{item.name} has no docstring"
                assert f"| `{item.name}` |" in reference, item.name
    assert "| `selection_metrics` | list[str] | `[]` | fixed |" in reference
    assert "| `tags` | map str → str | `{}` | may change |" in reference
    assert "One of: `auto`, `eager`, `sdpa`." in reference  # choices come from CHOICES
    assert "| `ftall-lora` | LLM-FtAll (LoRA) | `model.train_backbone=lora` |" in reference
    assert "| `pretrain.rounds` | `100` | `0` |" in reference  # what the quick recipe changes


def test_update_replaces_only_the_generated_part(tmp_path):
    path = tmp_path / "c.md"
    path.write_text(f"# intro\n\n{BEGIN}\nstale\n{END}\n\n## after\n", encoding="utf-8")
    assert update_file(path) is True
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# intro\n\n") and text.endswith(f"{END}\n\n## after\n") and "stale" not in text
    assert update_file(path) is False
    path.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.md: expected one"):
        update_file(path)


def test_config_command_prints_the_resolved_config(capsys):
    assert cli.main(["config", "--recipe", "quick", "pretrain.lambda_c=0.5", "ablation=cf"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("quick", ["pretrain.lambda_c=0.5", "ablation=cf"])
    assert config_to_dict(config_from_dict(printed)) == config_to_dict(expected)
    assert printed["pretrain"]["lambda_c"] == 0.0  # the ablation preset wins
    assert cli.main(["config", "--update", "x.md"]) == 2
    assert "--update needs --reference" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("tracking.tags=[1]", "'tracking.tags': expected a mapping"),
    ("tracking.tags={a: 1}", "'tracking.tags.a': expected str"),
])
def test_mapping_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    assert load_config(None, ["tracking.tags={a: b}"]).tracking.tags == {"a": "b"}
