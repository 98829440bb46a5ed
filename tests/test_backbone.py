"""load_backbone / freeze / embedding_std on tiny random LLaMA and GPT-2 models saved locally."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cllm4rec.backbone import BackboneError, embedding_std, freeze, load_backbone

WORDS = ["<unk>", "<pad>", "<s>", "</s>", "the", "a", "user", "item", "likes", "movie", "of", "and"]


def _save_tokenizer(folder: Path) -> None:
    word_level = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)


def _make_model(kind: str, tie: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
            tie_word_embeddings=tie,
        ))
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=32, tie_word_embeddings=tie,
    ))


def _save(tmp_path: Path, kind: str, tie: bool = True) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path / f"{kind}-{'tied' if tie else 'untied'}"
    model = _make_model(kind, tie)
    model.save_pretrained(folder)
    _save_tokenizer(folder)
    return folder, model


def _drop_weight(folder: Path, key: str) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    assert key in tensors, sorted(tensors)
    del tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_loads_tiny_model_with_tokenizer(tmp_path: Path, kind: str) -> None:
    folder, original = _save(tmp_path, kind)
    model, tokenizer = load_backbone(str(folder))
    assert type(model) is type(original)
    for (name, loaded), expected in zip(model.state_dict().items(), original.state_dict().values()):
        assert torch.equal(loaded, expected), name
    ids = tokenizer("the user likes the movie", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[4, 6, 8, 4, 9]]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, 5, len(WORDS))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_untied_model_and_pathlike(tmp_path: Path, kind: str) -> None:
    folder, original = _save(tmp_path, kind, tie=False)
    model, _ = load_backbone(folder)
    assert torch.equal(model.get_output_embeddings().weight, original.get_output_embeddings().weight)


def test_dtype(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path, "llama")
    model, _ = load_backbone(str(folder), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_freeze_makes_every_param_non_trainable(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path, "gpt2")
    model, _ = load_backbone(str(folder))
    model.train()
    assert freeze(model) is model
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_embedding_std(tmp_path: Path) -> None:
    folder, original = _save(tmp_path, "llama")
    model, _ = load_backbone(str(folder))
    expected = original.get_input_embeddings().weight.detach().std().item()
    assert embedding_std(model) == pytest.approx(expected)


def test_missing_weight_is_named(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path, "llama")
    _drop_weight(folder, "model.layers.0.mlp.down_proj.weight")
    with pytest.raises(BackboneError, match=r"missing weights: model\.layers\.0\.mlp\.down_proj\.weight"):
        load_backbone(str(folder))


def test_missing_untied_head_is_an_error(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path, "llama", tie=False)
    _drop_weight(folder, "lm_head.weight")
    with pytest.raises(BackboneError, match=r"lm_head\.weight"):
        load_backbone(str(folder))


def test_unexpected_weight_is_named(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path, "gpt2")
    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors["transformer.h.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(BackboneError, match=r"unexpected weights: .*extra\.weight"):
        load_backbone(str(folder))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_random_init_same_shapes_new_weights(tmp_path: Path, kind: str) -> None:
    folder, original = _save(tmp_path, kind)
    torch.manual_seed(123)
    model, tokenizer = load_backbone(str(folder), random_init=True)
    assert type(model) is type(original)
    loaded, expected = model.state_dict(), original.state_dict()
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in expected.items()}
    weights = [k for k, v in expected.items() if k.endswith("weight") and v.dim() == 2]
    assert weights and all(not torch.equal(loaded[k], expected[k]) for k in weights)
    assert len(tokenizer) == len(WORDS)


def test_nonexistent_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="hub id"):
        load_backbone(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        load_backbone("./not-here")


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="config.json"):
        load_backbone(str(tmp_path))


def test_hub_id_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(BackboneError) as info:
        load_backbone("some-org/not-a-cached-model")
    message = str(info.value)
    for needle in ("some-org/not-a-cached-model", "HF_HUB_OFFLINE=1", "local model folder", "smollm2-135m"):
        assert needle in message
