"""Reading a config (trainer/config_loading.py): unknown keys and wrong values are named, recipes ←
overrides ← ablation resolve in that order, a saved config round-trips, and the command line turns
these errors into one line and exit code 2."""
from __future__ import annotations

import pytest

from conftest import write_yaml
from trainer import cli
from trainer.config import ConfigError, config_to_dict
from trainer.config_loading import config_from_dict, load_config


# ---- config -----------------------------------------------------------------------------------
def test_config_unknown_keys_are_errors(tmp_path) -> None:
    recipe = write_yaml(tmp_path / "r.yaml", {"pretrain": {"rounds": 2, "bogus_key": 1}})
    with pytest.raises(ConfigError, match=r"pretrain\.bogus_key") as info:
        load_config(str(recipe))
    assert "r.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="'toplevel_typo'"):
        load_config(str(write_yaml(tmp_path / "t.yaml", {"toplevel_typo": 1})))
    with pytest.raises(ConfigError, match=r"model\.nonexistent"):
        load_config(None, ["model.nonexistent=1"])
    with pytest.raises(ConfigError, match=r"'bogus'"):
        load_config(None, ["bogus=1"])
    with pytest.raises(ConfigError, match=r"'data\.typo'"):
        load_config(None, ["data.typo.deeper=1"])


@pytest.mark.parametrize("override, key", [
    ("pretrain.lr=fast", "pretrain.lr"),
    ("pretrain.rounds=1.5", "pretrain.rounds"),
    ("pretrain.rounds=true", "pretrain.rounds"),
    ("data.reviews=maybe", "data.reviews"),
    ("eval.recall_ks=20", "eval.recall_ks"),
    ("eval.recall_ks=[20, x]", r"eval.recall_ks\[1\]"),
    ("pretrain=3", "pretrain"),
    ("name=5", "name"),
    ("ablation=bogus", "ablation"),
    ("model.train_backbone=half", "model.train_backbone"),
    ("finetune.mask_mode=random", "finetune.mask_mode"),
])
def test_config_wrong_values_are_named(override, key) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_config_resolution_and_round_trip(tmp_path) -> None:
    config = load_config(str(write_yaml(tmp_path / "r.yaml", {"pretrain": {"rounds": 7, "lr": 1}})),
                         ["pretrain.rounds=9", "finetune.max_steps_per_epoch=null", "ablation=cf"])
    assert config.pretrain.rounds == 9  # overrides beat the recipe
    assert config.pretrain.lr == 1.0 and isinstance(config.pretrain.lr, float)
    assert config.finetune.max_steps_per_epoch is None
    assert config.pretrain.content is False and config.pretrain.lambda_c == 0.0  # the ablation preset
    assert config_from_dict(config_to_dict(config)) == config
    for shipped in ("quick", "ml100k", "content-signal", "paper"):
        assert load_config(shipped).name == shipped
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["pretrain.rounds"])
    with pytest.raises(ConfigError, match="nonexistent"):
        load_config("nonexistent")
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_cli_user_errors_exit_2(tmp_path, capsys) -> None:
    assert cli.main(["train", "--recipe", "nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonexistent" in err[0]
    assert cli.main(["train", "--recipe", "quick", "pretrain.bogus=1"]) == 2
    assert "pretrain.bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "train" in capsys.readouterr().out


def test_content_signal_recipe_is_quick_with_the_searched_content_transfer() -> None:
    """The content-signal recipe is the configuration its three-seed figures in docs/results.md come from:
    quick on the content-signal data with text-initialised content rows, token-like collaborative user
    rows after the warm-up, and 12 finetuning epochs at lr 3e-4 without MR."""
    measured = load_config("quick", [
        "name=content-signal", "data.dataset=content-signal", "model.content_init_from_text=true",
        "model.content_init_reviews=true", "pretrain.collab_from_content=true",
        "pretrain.collab_from_content_tables=users", "pretrain.collab_from_content_token_alpha=0.25",
        "finetune.epochs=12", "finetune.lr=3e-4", "finetune.lambda_c=0", "finetune.patience=4"])
    assert load_config("content-signal") == measured


def test_ml100k_recipe_is_quick_with_the_long_cosine_finetuning() -> None:
    """The ml100k recipe is exactly the run its figures in docs/results.md come from: quick with 20
    finetuning epochs on a cosine lr and patience 5."""
    measured = load_config("quick", ["name=ml100k", "finetune.epochs=20", "finetune.lr_schedule=cosine",
                                     "finetune.patience=5"])
    assert load_config("ml100k") == measured

