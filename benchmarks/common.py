"""Helpers the benchmarks share: the tiny test backbone, matrix-multiply rates and FLOP counts of a
frozen backbone, timing. Each benchmark script imports this file from its own folder."""
from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent


def tiny_backbone(folder: Path) -> Path:
    """A 2-layer, K=64 LLaMA with SmolLM2's tokenizer (random weights): the 'tiny' backbone."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from data_prep.assets import resolve_backbone

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("smollm2-135m"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def backbone_ref(name: str, folder: Path) -> str:
    """'tiny' → a tiny backbone written under `folder`; anything else is passed through."""
    return str(tiny_backbone(folder / "tiny")) if name == "tiny" else name


def machine() -> str:
    """The CPU the figures come from, for each benchmark's header: its model name, thread count and
    whether it has AVX512-BF16 and AMX (Linux /proc/cpuinfo; elsewhere the platform's processor string)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    features = ", ".join(f"{label} {'yes' if flag in flags else 'no'}"
                         for label, flag in (("AVX512-BF16", "avx512_bf16"), ("AMX-BF16", "amx_bf16")))
    return f"{info.get('model name') or platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPU threads, {features}"


def load_losses(path: str) -> ModuleType:
    """Another copy of cllm4rec/losses.py (e.g. `git show REV:cllm4rec/losses.py`), loaded as its own
    module: a baseline kernel timed beside the current one."""
    spec = importlib.util.spec_from_file_location("baseline_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Mean wall seconds of `fn` over `repeats` calls after one untimed call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def probed_steps(calls: dict[str, Callable[[], object]], repeats: int,
                 probe: Callable[[], tuple[float, ...]] = tuple) -> dict[str, list[tuple[float, ...]]]:
    """Time `repeats` rounds of one call of each function (after one untimed call each; the order
    rotates from round to round), running `probe` between every two timed calls. Each function →
    [(seconds, *rates)] per call, the rates the mean of what `probe` returned just before and just
    after that call (catalogue_scale probes product rates: the hardware's rate at that moment)."""
    names = list(calls)
    for name in names:
        calls[name]()
    timed: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
    before = probe()
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            calls[name]()
            took = time.perf_counter() - start
            after = probe()
            timed[name].append((took, *((x + y) / 2 for x, y in zip(before, after))))
            before = after
    return timed


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds per call of each function, timed interleaved by `probed_steps` (no probe)."""
    return {name: statistics.median(t for t, *_ in runs) for name, runs in probed_steps(calls, repeats).items()}


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10, trials: int = 5) -> float:
    """FLOP/s of an [m, k] @ [k, n] product in `dtype` on this process's threads: the median of
    `trials` timings of `repeats` products (single timings on a shared VM stray by 2x either way)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype)
    return 2 * m * k * n / statistics.median(seconds(lambda: a @ b, repeats) for _ in range(trials))


def product_rate_probe(m: int, k: int, n: int, dtype: torch.dtype, timings: int = 3) -> Callable[[], float]:
    """A quick look at the [m, k] @ [k, n] product rate in `dtype` (FLOP/s), for use between timed
    steps: operands and output are made once; each call runs the product once untimed (caches, pages),
    then `timings` times, and returns the best of those rates (a rate caught low would flatter a
    ratio to its floor; the best errs the other way)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype)
    out = torch.empty(m, n, dtype=dtype)

    def probe() -> float:
        torch.mm(a, b, out=out)
        fastest = float("inf")
        for _ in range(timings):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            fastest = min(fastest, time.perf_counter() - start)
        return 2 * m * k * n / fastest
    return probe


def backbone_flops_per_token(decoder: torch.nn.Module, seq_len: int) -> float:
    """FLOPs per token of one forward + input-gradient backward of a frozen decoder (no weight
    gradients): 4 × its non-embedding matrix parameters (2 forward, 2 backward) + attention scores and
    mixing, 2·K·T per layer forward (causal: T/2 keys on average, two products) and twice that backward."""
    matrix = sum(p.numel() for n, p in decoder.named_parameters() if p.ndim == 2 and "embed" not in n)
    config = decoder.config
    return 4 * matrix + 6 * config.num_hidden_layers * config.hidden_size * seq_len


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"
