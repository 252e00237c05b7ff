"""TTTMemory fast path (fused.py) vs the eager reference: outputs, states and gradients."""

from __future__ import annotations

import pytest
import torch

from avmem.memory.ttt import TTTConfig, TTTMemory, official_positions
from avmem.memory.ttt.fused import StepSpec, compiled, fused_step, rope_real
from avmem.memory.ttt.rope import apply_rope, rope_cis, rope_cos_sin

from .test_ttt_layer import CASES, DT, GRID, make_layer, objective, stream


def run_both(layer: TTTMemory, lengths, mode: str, dtype=DT, batch: int = 2):
    """Stream the same inputs through the eager reference and ``mode``; returns both results and the inputs."""
    xs = [torch.randn(batch, n, layer.cfg.dim, dtype=dtype, requires_grad=True) for n in lengths]
    results = []
    for fast in ("off", mode):
        layer.set_fast(fast)
        ys, st = stream(layer, layer, xs)
        grads = torch.autograd.grad(objective(ys, st), list(layer.parameters()) + xs)
        results.append((ys, st, grads))
    return results, xs


def assert_same(ref, got, rtol, atol):
    (ys_r, st_r, g_r), (ys_g, st_g, g_g) = ref, got
    for a, b in zip(ys_g, ys_r):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    for a, b in zip(st_g.fast.tensors(), st_r.fast.tensors()):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    torch.testing.assert_close(st_g.last_loss, st_r.last_loss, rtol=rtol, atol=atol)
    assert st_g.tokens == st_r.tokens
    for a, b in zip(g_g, g_r):  # parameters, then the inputs of every call
        torch.testing.assert_close(a, b, rtol=1e3 * rtol, atol=1e3 * atol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_fused_path_matches_eager_reference(case):
    """The fused functions (run eagerly: the maths torch.compile gets) equal the reference in float64."""
    case = dict(case)
    lengths = case.pop("lengths", (13, 8, 21))
    layer = make_layer(**case)
    (ref, got), _ = run_both(layer, lengths, "fused")
    assert_same(ref, got, rtol=1e-11, atol=1e-12)


def test_fused_path_with_activation_checkpointing_and_fp32_flag_in_float64():
    """Checkpointed groups recompute the fused step; fast_fp32 changes nothing when the model is float64."""
    layer = make_layer(update="hf", checkpoint_group=2, fast_fp32=True)
    (ref, got), _ = run_both(layer, (40,), "fused")
    assert_same(ref, got, rtol=1e-11, atol=1e-12)


def test_fp32_work_precision_tracks_float32_in_bfloat16():
    """bf16 model: fast_fp32 keeps activations and CG vectors in fp32; both bf16 paths stay close to fp32."""
    torch.manual_seed(3)
    cfg = dict(dim=64, num_heads=2, mini_batch=16, base_lr=5.0, lag_distance=16, update="hf")
    ref = TTTMemory(TTTConfig(**cfg))
    x = torch.randn(1, 40, 64)
    pos = official_positions(GRID, 0, 48)
    with torch.no_grad():
        y32, s32 = ref(x, pos)
        errors = {}
        for fast, fp32 in (("off", False), ("fused", False), ("fused", True)):
            layer = TTTMemory(TTTConfig(**cfg, fast=fast, fast_fp32=fp32))
            layer.load_state_dict(ref.state_dict())
            layer = layer.to(torch.bfloat16)
            y, s = layer(x.to(torch.bfloat16), pos)
            assert y.dtype == s.fast.W1.dtype == torch.bfloat16
            delta_ref = s32.fast.W1 - ref.ttt.W1
            errors[fast, fp32] = ((s.fast.W1.float() - s32.fast.W1).norm() / delta_ref.norm()).item()
            assert ((y.float() - y32).norm() / y32.norm()).item() < 1e-2
    # fast weights after one call: relative error of the update W1 - W1_0 against float32
    assert errors["fused", False] == errors["off", False]  # same roundings without compilation
    assert errors["fused", True] < errors["off", False] < 0.05, errors


def test_rope_real_equals_complex_rope():
    pos = official_positions(GRID, 5, 24).unsqueeze(0)
    x = torch.randn(1, 24, 3, 32)
    cos, sin = rope_cos_sin(pos, 32, 10000.0)
    torch.testing.assert_close(rope_real(x, cos, sin), apply_rope(x, rope_cis(pos, 32, 10000.0)), rtol=1e-6, atol=1e-6)


def test_auto_mode_is_eager_on_cpu_and_modes_are_validated():
    layer = TTTMemory(TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=8))
    assert layer.cfg.fast == "auto" and layer.fast_mode == "off"
    assert layer.set_fast("fused").fast_mode == "fused"
    with pytest.raises(ValueError, match="fast must be one of"):
        TTTConfig(fast="triton")
    with pytest.raises(ValueError, match="fast_fp32 must be a bool"):
        TTTConfig(fast_fp32=1)
    with pytest.raises(ValueError, match="unknown fast-path mode"):
        compiled("epilogue", "eager")


def test_fused_step_traces_as_one_graph_without_host_synchronisation():
    """fullgraph tracing of the step (CG early stop included) needs no .item() and no data-dependent branch."""
    spec = StepSpec(update="hf", cg_iters=3, official_cg=True, lag_weight=0.1, curvature_ln=False, damping=0.0,
                    ns_steps=5, fp32=False)
    B, H, N, d = 2, 2, 8, 16
    args = [torch.randn(B, H, d, d) * 0.1, torch.zeros(B, H, 1, d), torch.randn(B, H, d, d) * 0.1, torch.zeros(B, H, 1, d),
            torch.randn(B, H, N, d), torch.randn(B, H, N, d), torch.randn(B, H, N, d), torch.rand(B, H, N, 1),
            torch.ones(1, 1, N, 1), torch.randn(B, H, N, d), torch.ones(1, 1, N, 1), None,
            torch.ones(H, d), torch.zeros(H, d), None]
    traced = torch.compile(fused_step, fullgraph=True, backend="eager")
    got, ref = traced(*args, spec=spec), fused_step(*args, spec=spec)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_compiled_path_matches_eager_reference_forward_and_backward():
    """torch.compile (inductor, CPU) of the fused functions: outputs and gradients equal the reference.

    One configuration only (hf, official, lag on; calls of 2 and 3 mini-batches) because compiling
    on CPU takes tens of seconds; the maths of every configuration is covered by the fused tests.
    """
    layer = make_layer(update="hf", compat="official")
    (ref, got), xs = run_both(layer, (13, 21), "compile", batch=1)
    assert_same(ref, got, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        y, _ = layer(xs[0].detach(), official_positions(GRID, 0, 16))
    torch.testing.assert_close(y, ref[0][0].detach(), rtol=1e-10, atol=1e-12)


def test_a_compiler_failure_falls_back_to_the_uncompiled_fused_path():
    """A machine whose inductor cannot compile (here: no working C++ compiler) warns and runs uncompiled."""
    import torch._inductor.config as inductor_config

    cfg = TTTConfig(dim=48, num_heads=3, mini_batch=8, lag_distance=8, base_lr=0.7, update="sgd")
    ref = TTTMemory(cfg)
    layer = TTTMemory(TTTConfig(**{**cfg.to_dict(), "fast": "compile"}))
    layer.load_state_dict(ref.state_dict())
    x, pos = torch.randn(1, 12, 48), official_positions((2, 3), 0, 16)
    with torch.no_grad(), inductor_config.patch({"fx_graph_cache": False, "cpp.cxx": ("/nonexistent/cxx",)}):
        with pytest.warns(RuntimeWarning, match="torch.compile failed.*switching this layer to fast='fused'"):
            y, _ = layer(x, pos)
        y_ref, _ = ref(x, pos)
    assert layer.cfg.fast == "fused"
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)


def test_compiled_step_inside_activation_checkpointing():
    """Training recomputes groups of compiled steps in the backward pass (same compiled functions as above)."""
    layer = make_layer(update="hf", compat="official", checkpoint_group=2)
    (ref, got), _ = run_both(layer, (21,), "compile", batch=1)
    assert_same(ref, got, rtol=1e-10, atol=1e-12)


def test_running_out_of_memory_while_compiling_is_not_taken_for_a_compiler_problem(monkeypatch):
    """An out-of-memory error wrapped in a dynamo exception (e.g. while autotuning) is raised as itself, and the
    layer keeps its compiled mode."""
    layer = TTTMemory(TTTConfig(dim=48, num_heads=3, mini_batch=8, lag_distance=8, update="sgd", fast="compile"))

    def oom(*args, **kwargs):
        exc = torch._dynamo.exc.TorchDynamoException("backend failed")
        exc.__cause__ = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise exc

    monkeypatch.setattr(layer, "_forward_fused", oom)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        layer(torch.randn(1, 12, 48), official_positions((2, 3), 0, 16))
    assert layer.cfg.fast == "compile"


def test_the_environment_chooses_what_auto_means(monkeypatch):
    layer = TTTMemory(TTTConfig(dim=48, num_heads=3, mini_batch=8, lag_distance=8, update="sgd"))
    monkeypatch.delenv("AVMEM_TTT_FAST", raising=False)
    assert layer.fast_mode == "off"  # auto on the CPU
    monkeypatch.setenv("AVMEM_TTT_FAST", "fused")
    assert layer.fast_mode == "fused"
    layer.set_fast("off")
    assert layer.fast_mode == "off"  # an explicit mode wins
    layer.set_fast("auto")
    monkeypatch.setenv("AVMEM_TTT_FAST", "turbo")
    with pytest.raises(ValueError, match="AVMEM_TTT_FAST"):
        layer.fast_mode
