import copy

import numpy as np
import pytest
import torch

from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.network import LocalResponseNorm, _LocalResponseNorm, local_response_norm, lrn_by_ops


def plain_lrn(x: torch.Tensor, towers: int, n=5, k=2.0, per_term=1e-4 / 5, beta=0.75) -> torch.Tensor:
    """The formula map by map, per tower, left to autograd: the reference for values and gradients. ``per_term``
    weighs each squared term: alpha / n as the authors' code computed, alpha for the printed reading."""
    out = []
    for tower in x.chunk(towers, dim=1):
        c = tower.shape[1]
        for i in range(c):
            lo, hi = max(0, i - n // 2), min(c - 1, i + n // 2)
            out.append(tower[:, i] / (k + per_term * tower[:, lo : hi + 1].pow(2).sum(1)) ** beta)
    return torch.stack(out, 1)


def test_fast_lrn_equals_the_formula_per_tower_in_float64():
    x = torch.randn(2, 12, 3, 3, dtype=torch.float64) * 30
    np.testing.assert_allclose(local_response_norm(x, towers=2), plain_lrn(x, 2), rtol=1e-12)
    # The window stops at the tower boundary: a one-tower window over the same maps gives other values.
    assert not torch.allclose(local_response_norm(x, towers=2), plain_lrn(x, 1))


@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 takes the rsqrt path, any other beta takes pow
@pytest.mark.parametrize("formula, per_term", [("cuda-convnet2", 1e-4 / 5), ("printed", 1e-4)])
def test_fast_lrn_gradcheck(towers, beta, formula, per_term):
    x = (torch.randn(2, 8, 3, 3, dtype=torch.float64) * 30).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: local_response_norm(a, beta=beta, towers=towers, formula=formula), (x,))
    np.testing.assert_allclose(local_response_norm(x, beta=beta, towers=towers, formula=formula).detach(),
                               plain_lrn(x.detach(), towers, beta=beta, per_term=per_term), rtol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fast_lrn_matches_autograd_through_the_formula(dtype, tol):
    x64 = torch.randn(4, 16, 5, 5, dtype=torch.float64).relu() * 30
    grad = torch.randn_like(x64)
    expected = torch.func.vjp(lambda a: plain_lrn(a, 2), x64)
    x = x64.to(dtype).requires_grad_()
    y = local_response_norm(x, towers=2)
    y.backward(grad.to(dtype))
    torch.testing.assert_close(y.double(), expected[0], rtol=tol, atol=tol)
    torch.testing.assert_close(x.grad.double(), expected[1](grad)[0], rtol=tol, atol=tol)


def small_module(**options) -> AlexNetModule:
    torch.manual_seed(0)
    return AlexNetModule(0.01, 0.9, 5e-4, 0.1, 3, num_classes=10, width=0.25, input_size=67, dropout=0.0, **options)


def outputs_and_grads(module: AlexNetModule, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.configure_model()
    y = module(x)
    y.square().sum().backward()
    return y, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("option", ["channels_last", pytest.param("compile", marks=pytest.mark.slow)])
def test_speed_options_give_the_plain_results(option):
    x = torch.randn(4, 3, 67, 67)
    plain = small_module()
    fast = small_module(**{option: True})
    fast.network.load_state_dict(copy.deepcopy(plain.network.state_dict()))
    y0, g0 = outputs_and_grads(plain, x)
    y1, g1 = outputs_and_grads(fast, x)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_bf16_mixed_precision_gives_the_float32_results_within_bf16_tolerance():
    from lightning.pytorch.plugins import MixedPrecision

    x = torch.randn(4, 3, 67, 67)
    plain = small_module()
    y0, g0 = outputs_and_grads(plain, x)
    mixed = small_module()
    with MixedPrecision("bf16-mixed", "cpu").forward_context():  # what --trainer.precision bf16-mixed runs in
        y1 = mixed(x)
        assert y1.dtype == torch.bfloat16  # autocast is on: the layers computed in bfloat16
    y1.float().square().sum().backward()
    torch.testing.assert_close(y1.float(), y0, rtol=0.05, atol=0.05 * y0.abs().max().item())
    # bfloat16 keeps 8 bits of mantissa: single weight gradients that are sums of many cancelling products
    # (conv1's) are noisy, the gradient as a whole is not.
    grads = [torch.cat([p.grad.flatten() for p in module.parameters()]) for module in (mixed, plain)]
    assert torch.nn.functional.cosine_similarity(*grads, dim=0) > 0.999


@pytest.mark.slow
def test_freed_memory_is_kept_for_reuse_after_keep_freed_memory():
    """A freed 256 MB tensor leaves the process's resident memory with glibc's defaults, and stays after
    keep_freed_memory. glibc still returns it when the heap cannot grow in place (about 1 process in 6 here,
    depending on the address-space layout), so the kept case gets three processes."""
    import subprocess
    import sys

    script = """
import os, sys, torch
from alexnet_lightning.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
x = torch.ones(64 * 2**20)  # 256 MB, every page touched
del x
print((resident() - before) // 2**20)
"""

    def kept_mb(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                  check=True).stdout)

    assert kept_mb("default") < 64
    assert any(kept_mb("keep") > 200 for _ in range(3))


def test_keep_freed_memory_hands_glibc_values_that_a_c_int_holds(monkeypatch):
    """mallopt takes C ints: 1 << 36 arrived as 0, a trim threshold of 0 that returned the top of the heap at every
    free, so that the next batch-sized tensor paid page faults for all its pages again."""
    import ctypes

    from alexnet_lightning.training import allocator as memory

    received = {}

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int)
    def mallopt(option: int, value: int) -> int:  # what glibc's mallopt sees
        received[option] = value
        return 1

    libc = type("Libc", (), {"mallopt": mallopt})
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert memory.keep_freed_memory()
    m_trim_threshold, m_mmap_threshold = -1, -3
    assert received == {m_mmap_threshold: 2**30, m_trim_threshold: 2**31 - 1}


def value_and_gradient(lrn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = lrn(x)
    y.backward(grad)
    return y.detach(), x.grad


@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_by_ops_has_the_values_and_gradients_of_the_fast_lrn(towers, beta):
    """The form torch.compile fuses, left to autograd, against the hand-written Function, in float64."""
    x = torch.randn(2, 12, 4, 4, dtype=torch.float64) * 30
    grad = torch.randn_like(x)
    fast = value_and_gradient(lambda a: _LocalResponseNorm.apply(a, 5, 1e-4 / 5, beta, 2.0, towers), x, grad)
    ops = value_and_gradient(lambda a: lrn_by_ops(a, 5, 1e-4 / 5, beta, 2.0, towers), x, grad)
    torch.testing.assert_close(ops[0], fast[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(ops[1], fast[1], rtol=1e-10, atol=1e-12)


def test_the_fast_lrn_keeps_channels_last():
    """A channels-last network stays channels-last through LRN (no layout copies before and after it)."""
    x = torch.randn(2, 16, 5, 5).relu() * 30
    grad = torch.randn_like(x)
    y, dx = value_and_gradient(lambda a: local_response_norm(a, towers=2), x, grad)
    last = x.contiguous(memory_format=torch.channels_last)
    y_last, dx_last = value_and_gradient(lambda a: local_response_norm(a, towers=2), last, grad)
    assert y_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_last, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx_last, dx, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compiled_lrn_is_made_of_plain_ops_with_the_values_and_gradients_of_the_fast_lrn(monkeypatch):
    from alexnet_lightning.model import network

    traced = []
    monkeypatch.setattr(network, "lrn_by_ops", lambda *args: traced.append(1) or lrn_by_ops(*args))
    torch._dynamo.reset()
    layer = LocalResponseNorm(towers=2)
    x = (torch.randn(4, 16, 5, 5).relu() * 30).requires_grad_()
    y = torch.compile(layer)(x)
    assert traced  # the compiler saw the plain ops, which it fuses, not the hand-written Function
    y.square().sum().backward()
    grad, x.grad = x.grad, None
    y0 = _LocalResponseNorm.apply(x, 5, 1e-4 / 5, 0.75, 2.0, 2)
    y0.square().sum().backward()
    torch.testing.assert_close(y, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-4)
    traced.clear()
    layer(x)
    assert not traced  # eager: the Function


def test_compile_mode_reaches_torch_compile(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    small_module(compile=True, compile_mode="reduce-overhead").configure_model()
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]
