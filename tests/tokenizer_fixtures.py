"""Tiny Hugging Face tokenizers trained locally (no hub access), one per tokenizer family.

- ``gpt2``: byte-level BPE, no BOS convention (GPT-2, and the spacing of LLaMA-3/SmolLM2/Qwen).
- ``llama``: Metaspace ("▁") BPE whose post-processor adds ``<s>`` (LLaMA-2 non-legacy style).
- ``llama_legacy``: "▁" prepended/replaced by the normaliser, ``<s>`` BOS (LLaMA-2 legacy style).
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The biography of a user is: a retired teacher who loves old films.",
    "A user writes the review for an item: great movie, loved it! Five stars.",
    "A user has interacted with many items, and will interact with more.",
    "The content of the item is: a comedy about cats and dogs, released in 1995.",
] * 5

KINDS = ("gpt2", "llama", "llama_legacy")


def _gpt2_style() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _llama_style(legacy: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(CORPUS)) | set("<>_0123456789"))
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@lru_cache(maxsize=None)
def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A tiny tokenizer of family ``kind`` (one of :data:`KINDS`), built once per process."""
    if kind == "gpt2":
        return _gpt2_style()
    if kind in ("llama", "llama_legacy"):
        return _llama_style(legacy=kind == "llama_legacy")
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
