"""The fused RMSNorm (cllm4rec/rms_norm.py) computes transformers' LlamaRMSNorm: the same forward bit for
bit, gradients equal to rounding; swapping it into a backbone keeps every weight and name."""
from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from cllm4rec.backbone import load_backbone
from cllm4rec.rms_norm import FusedRMSNorm, RMSNormFunction, fuse_rms_norms


def reference_and_fused(dim: int, dtype: torch.dtype, seed: int = 0) -> tuple[LlamaRMSNorm, FusedRMSNorm]:
    gen = torch.Generator().manual_seed(seed)
    reference = LlamaRMSNorm(dim, eps=1e-5).to(dtype)
    with torch.no_grad():
        reference.weight.copy_(torch.randn(dim, generator=gen) * 0.5 + 1)
    return reference, FusedRMSNorm(reference.weight, reference.variance_epsilon)


def run(norm: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = norm(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_bitwise_transformers(dtype):
    reference, fused = reference_and_fused(48, dtype)
    x = torch.randn(3, 7, 48, generator=torch.Generator().manual_seed(1)).mul(3).to(dtype)
    with torch.no_grad():
        assert torch.equal(fused(x), reference(x))
        assert fused(x).dtype == reference(x).dtype == dtype


def test_input_gradient_equals_autograd_in_fp32():
    reference, fused = reference_and_fused(48, torch.float32)
    gen = torch.Generator().manual_seed(2)
    x, grad = torch.randn(4, 5, 48, generator=gen) * 3, torch.randn(4, 5, 48, generator=gen)
    want_out, want = run(reference, x, grad)
    got_out, got = run(fused, x, grad)
    assert torch.equal(got_out, want_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_input_gradient_is_as_close_to_the_exact_one_as_transformers():
    """bf16 gradients differ from transformers' by rounding only: against the fp64 gradient of the same
    function, the fused one's error is at most transformers' (plus one bf16 step of the largest entry)."""
    reference, fused = reference_and_fused(64, torch.bfloat16)
    gen = torch.Generator().manual_seed(3)
    x, grad = (torch.randn(6, 9, 64, generator=gen) * 3).bfloat16(), torch.randn(6, 9, 64, generator=gen).bfloat16()
    exact_x = x.double().requires_grad_()
    w = reference.weight.detach().double()
    (w * exact_x * torch.rsqrt(exact_x.pow(2).mean(-1, keepdim=True) + 1e-5)).backward(grad.double())
    errors = [(run(norm, x, grad)[1].double() - exact_x.grad).abs().max().item() for norm in (reference, fused)]
    assert errors[1] <= errors[0] + exact_x.grad.abs().max().item() * 2**-8


def test_weight_gradient_when_the_backbone_trains():
    """LLM-FtAll / Scratch train the norm weights: their gradient equals autograd's (fp32, 1e-5); a frozen
    weight gets none."""
    reference, fused = reference_and_fused(32, torch.float32)
    gen = torch.Generator().manual_seed(4)
    x, grad = torch.randn(5, 32, generator=gen), torch.randn(5, 32, generator=gen)
    run(reference, x, grad)
    want = reference.weight.grad.clone()
    reference.weight.grad = None
    run(fused, x, grad)
    torch.testing.assert_close(fused.weight.grad, want, rtol=1e-5, atol=1e-6)
    frozen = FusedRMSNorm(torch.nn.Parameter(torch.ones(32), requires_grad=False), 1e-5)
    run(frozen, x, grad)
    assert frozen.weight.grad is None


def test_function_leaves_an_fp32_input_untouched():
    x = torch.randn(2, 16)
    before = x.clone()
    RMSNormFunction.apply(x, torch.ones(16), 1e-6)
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fuse_swaps_every_llama_norm_and_keeps_weights_and_names(tiny_llama, tiny_gpt2, dtype):
    backbone, _ = load_backbone(str(tiny_llama), dtype=dtype)
    names, weights = list(backbone.state_dict()), [p for p in backbone.parameters()]
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = backbone(ids).logits
    layers = backbone.config.num_hidden_layers
    assert fuse_rms_norms(backbone) == 2 * layers + 1  # two per layer and the final norm
    assert not any(type(m) is LlamaRMSNorm for m in backbone.modules())
    assert list(backbone.state_dict()) == names
    assert all(a is b for a, b in zip(backbone.parameters(), weights))
    with torch.no_grad():
        assert torch.equal(backbone(ids).logits, before)
    assert fuse_rms_norms(backbone) == 0  # already fused
    gpt2, _ = load_backbone(str(tiny_gpt2), dtype=torch.float32)
    assert fuse_rms_norms(gpt2) == 0


def test_fused_norm_follows_the_config(planted_dataset, tiny_llama, tmp_path):
    from conftest import tiny_overrides
    from trainer.build import build_run
    from trainer.config_loading import load_config

    for value, kind in ((True, FusedRMSNorm), (False, LlamaRMSNorm)):
        config = load_config(None, tiny_overrides(planted_dataset, tiny_llama, tmp_path, **{"model.fused_norm": value}))
        norms = [m for m in build_run(config).model.backbone.modules() if "RMSNorm" in type(m).__name__]
        assert norms and all(type(m) is kind for m in norms)


def test_a_norm_class_that_computes_something_else_is_left_alone(caplog):
    """A class on the list whose forward differs (here Gemma's (1 + weight) scaling under a LLaMA name)
    keeps its own forward, with a warning; the global random stream is not drawn from."""
    class LlamaRMSNorm(torch.nn.Module):  # noqa: N801 - the name is what the swap looks for
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.zeros(8)), 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)

    model = torch.nn.Sequential(LlamaRMSNorm(), LlamaRMSNorm())
    state = torch.get_rng_state()
    assert fuse_rms_norms(model) == 0
    assert torch.equal(torch.get_rng_state(), state)
    assert all(type(m) is LlamaRMSNorm for m in model)
    assert "does not compute LLaMA's RMSNorm" in caplog.text
