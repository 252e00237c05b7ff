"""TTTMemory: fast path vs naive reference (outputs and gradients), streaming, checkpointing, bad input."""

from __future__ import annotations

import pytest
import torch

from avmem.memory.ttt import TTTConfig, TTTMemory, TTTState, official_positions
from avmem.memory.ttt.naive import naive_forward

DT = torch.float64
GRID = (2, 3)


def make_layer(**kw) -> TTTMemory:
    base = dict(dim=32, num_heads=2, hidden_mult=2, mini_batch=8, base_lr=5.0, lag_distance=8)
    base.update(kw)
    torch.manual_seed(1)
    layer = TTTMemory(TTTConfig(**base)).to(DT)
    with torch.no_grad():  # move away from the zero / one initialisations
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return layer


def stream(fn, layer: TTTMemory, xs, positions_padded=True):
    state, start, ys = None, 0, []
    mb = layer.cfg.mini_batch
    for x in xs:
        n = x.shape[1]
        length = -(-n // mb) * mb if positions_padded else n
        y, state = fn(x, official_positions(GRID, start, length), state)
        ys.append(y)
        start += n
    return ys, state


def objective(ys, state):
    return sum((y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).square().sum() for y in ys) + \
        sum(t.square().sum() for t in state.fast.tensors())


CASES = [
    dict(update="sgd", compat="official"),
    dict(update="sgd", compat="clean"),
    dict(update="hf", compat="official"),
    dict(update="hf", compat="clean"),
    dict(update="hf", compat="official", cg_iters=6),
    dict(update="hf", compat="clean", curvature="ln", damping=0.1),
    dict(update="hf", compat="clean", curvature="mlp", damping=0.3),
    dict(update="muon", compat="official"),
    dict(update="muon", compat="clean"),
    dict(update="hf", compat="official", lag_distance=0),
    dict(update="hf", compat="official", lag_distance=20),
    dict(update="hf", compat="clean", lag_distance=20, hidden_mult=1),
    dict(update="hf", compat="official", num_heads=1, dim=16, mini_batch=4),
    # previous call shorter than the lag: the official slice prev[-lag : P - (lag - L)] (lag = 2P, L < P)
    dict(update="hf", compat="official", mini_batch=4, lag_distance=16, lengths=(8, 4, 3, 8, 12, 20)),
    dict(update="sgd", compat="official", mini_batch=4, lag_distance=24, lengths=(12, 8, 4, 30, 2)),
    dict(update="hf", compat="clean", mini_batch=4, lag_distance=16, lengths=(8, 4, 3, 8, 12, 20)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_fast_path_matches_naive_reference_outputs_and_gradients(case):
    case = dict(case)
    lengths = case.pop("lengths", (13, 8, 21))
    layer = make_layer(**case)
    xs = [torch.randn(2, n, layer.cfg.dim, dtype=DT) for n in lengths]
    ys_f, st_f = stream(layer, layer, xs)
    ys_n, st_n = stream(lambda x, p, s: naive_forward(layer, x, p, s), layer, xs)
    for a, b in zip(ys_f, ys_n):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(st_f.fast.tensors(), st_n.fast.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    params = list(layer.parameters())
    g_f = torch.autograd.grad(objective(ys_f, st_f), params)
    g_n = torch.autograd.grad(objective(ys_n, st_n), params)
    for (name, _), a, b in zip(layer.named_parameters(), g_f, g_n):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("compat", ["official", "clean"])
@pytest.mark.parametrize("update", ["sgd", "hf", "muon"])
def test_chunked_equals_one_shot_on_mini_batch_boundaries(compat, update):
    layer = make_layer(compat=compat, update=update)
    x = torch.randn(2, 48, 32, dtype=DT)
    one, st_one = stream(layer, layer, [x])
    # official carry-over needs each call to hold at least lag_distance (8) tokens; clean mode does not
    splits = (8, 16, 24) if compat == "official" else (8, 8, 16, 8, 8)
    parts = list(torch.split(x, splits, dim=1))
    many, st_many = stream(layer, layer, parts)
    torch.testing.assert_close(torch.cat(many, dim=1), one[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(st_many.fast.tensors(), st_one.fast.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert st_many.tokens == st_one.tokens == 48


def test_padding_takes_part_in_the_update_only_in_official_mode():
    """Official: 12 tokens padded to 16 == the same 12 tokens followed by 4 real zero tokens.

    Clean: the 4 padding rows are masked, so the two calls differ; and the padding rows' positions
    matter only in official mode.
    """
    x = torch.randn(1, 12, 32, dtype=DT)
    x_zeros = torch.cat([x, torch.zeros(1, 4, 32, dtype=DT)], 1)
    pos = official_positions(GRID, 0, 16)
    pos_other_pad = pos.clone()
    pos_other_pad[12:] = 99
    for compat in ("official", "clean"):
        layer = make_layer(compat=compat)
        y_pad, s_pad = layer(x, pos)
        y_zero, s_zero = layer(x_zeros, pos)
        y_other, _ = layer(x, pos_other_pad)
        same_as_zero_rows = torch.allclose(y_pad, y_zero[:, :12]) and torch.allclose(s_pad.fast.W1, s_zero.fast.W1)
        pad_positions_matter = not torch.allclose(y_pad, y_other)
        assert same_as_zero_rows == (compat == "official")
        assert pad_positions_matter == (compat == "official")


def test_gradients_flow_across_calls_and_detach_cuts_them():
    layer = make_layer()
    x1, x2 = torch.randn(1, 16, 32, dtype=DT), torch.randn(1, 16, 32, dtype=DT, requires_grad=True)
    x1.requires_grad_(True)
    _, s = layer(x1, official_positions(GRID, 0, 16))
    y2, _ = layer(x2, official_positions(GRID, 16, 16), s)
    (g,) = torch.autograd.grad(y2.sum(), [x1])
    assert g.abs().sum() > 0
    y2d, _ = layer(x2, official_positions(GRID, 16, 16), s.detach())
    assert y2d.grad_fn is not None
    (g2,) = torch.autograd.grad(y2d.sum(), [x1], allow_unused=True)
    assert g2 is None


def test_activation_checkpointing_gives_identical_gradients():
    plain = make_layer(update="hf")
    ckpt = make_layer(update="hf", checkpoint_group=2)
    x = torch.randn(1, 40, 32, dtype=DT)
    outs = []
    for layer in (plain, ckpt):
        y, s = layer(x, official_positions(GRID, 0, 40))
        grads = torch.autograd.grad(objective([y], s), list(layer.parameters()))
        outs.append((y, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def test_float32_and_bfloat16_run_and_unbatched_positions_broadcast():
    for dtype in (torch.float32, torch.bfloat16):
        layer = TTTMemory(TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=8)).to(dtype)
        x = torch.randn(3, 10, 32, dtype=dtype)
        y, s = layer(x, official_positions(GRID, 0, 16))
        y2, _ = layer(x, official_positions(GRID, 0, 16).expand(3, -1, -1))
        assert y.dtype == dtype and torch.isfinite(y.float()).all()
        torch.testing.assert_close(y, y2)
        assert s.last_loss.shape == (3,) and s.fast.W1.dtype == dtype


def test_state_round_trips_through_tensors():
    layer = make_layer()
    _, s = layer(torch.randn(2, 11, 32, dtype=DT), official_positions(GRID, 0, 16))
    s2 = TTTState.from_tensors({k: v.clone() for k, v in s.tensors().items()})
    x = torch.randn(2, 8, 32, dtype=DT)
    y_a, _ = layer(x, official_positions(GRID, 11, 8), s)
    y_b, _ = layer(x, official_positions(GRID, 11, 8), s2)
    torch.testing.assert_close(y_a, y_b, rtol=0, atol=0)
    assert s2.tokens == 11


def test_ttt_loss_telemetry_decreases_and_hf_converges_faster_than_sgd():
    """Re-feeding one sequence: the reconstruction loss falls, faster with HF than SGD (seed 001 A.2.2)."""
    x = torch.randn(1, 16, 32, dtype=DT)
    final = {}
    for update in ("sgd", "hf"):
        layer = make_layer(update=update, compat="clean", base_lr=1.0, lag_distance=0)
        state, losses = None, []
        with torch.no_grad():
            for _ in range(6):
                _, state = layer(x, official_positions(GRID, 0, 16), state)
                losses.append(float(state.last_loss))
        assert losses[-1] < 0.8 * losses[0]
        final[update] = losses[-1]
    assert final["hf"] < 0.5 * final["sgd"]


class TestBadInput:
    layer = TTTMemory(TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=8))
    pos = official_positions(GRID, 0, 8)

    def test_shapes_and_dtypes(self):
        with pytest.raises(ValueError, match=r"shape \[B, T, 32\]"):
            self.layer(torch.randn(8, 32), self.pos)
        with pytest.raises(ValueError, match=r"shape \[B, T, 32\]"):
            self.layer(torch.randn(1, 8, 31), self.pos)
        with pytest.raises(ValueError, match="at least one token"):
            self.layer(torch.randn(1, 0, 32), self.pos[:0])
        with pytest.raises(ValueError, match="dtype torch.float64"):
            self.layer(torch.randn(1, 8, 32, dtype=DT), self.pos)
        with pytest.raises(ValueError, match="torch.Tensor"):
            self.layer([[0.0] * 32], self.pos)

    def test_nan_and_inf(self):
        x = torch.randn(1, 8, 32)
        x[0, 3, 5] = float("nan")
        with pytest.raises(ValueError, match="NaN or Inf"):
            self.layer(x, self.pos)
        x[0, 3, 5] = float("inf")
        with pytest.raises(ValueError, match="NaN or Inf"):
            self.layer(x, self.pos)
        _, s = self.layer(torch.randn(1, 8, 32), self.pos)
        s.fast.W1 = s.fast.W1.clone()
        s.fast.W1[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="state.fast.W1 contains NaN"):
            self.layer(torch.randn(1, 8, 32), official_positions(GRID, 8, 8), s)

    def test_positions(self):
        x = torch.randn(1, 5, 32)
        with pytest.raises(ValueError, match="integer"):
            self.layer(x, self.pos.float())
        with pytest.raises(ValueError, match=r"positions must have shape"):
            self.layer(x, self.pos[:, :2])
        with pytest.raises(ValueError, match=r"positions must have shape"):
            self.layer(x, official_positions(GRID, 0, 7))
        with pytest.raises(ValueError, match=r"positions must have shape"):
            self.layer(x, official_positions(GRID, 0, 8).expand(2, -1, -1))
        with pytest.raises(ValueError, match=">= 0"):
            self.layer(x, -official_positions(GRID, 1, 8))
        with pytest.raises(ValueError, match="padded positions"):
            self.layer(x, official_positions(GRID, 0, 5))
        clean = TTTMemory(TTTConfig(dim=32, num_heads=2, mini_batch=8, compat="clean"))
        y, _ = clean(x, official_positions(GRID, 0, 5))
        assert y.shape == x.shape

    def test_state_shape_mismatch(self):
        _, s = self.layer(torch.randn(2, 8, 32), self.pos)
        with pytest.raises(ValueError, match=r"state.fast.W1 has shape \[2, 2, 16, 16\], expected \[1, 2, 16, 16\]"):
            self.layer(torch.randn(1, 8, 32), self.pos, s)
        with pytest.raises(ValueError, match="TTTState"):
            self.layer(torch.randn(1, 8, 32), self.pos, {"W1": 0})

    @pytest.mark.parametrize("kwargs, message", [
        (dict(dim=30, num_heads=4), "divisible"),
        (dict(dim=64, num_heads=8), "multiple of 16"),
        (dict(cg_iters=-1), "cg_iters"),
        (dict(mini_batch=0), "mini_batch"),
        (dict(update="adam"), "update"),
        (dict(compat="exact"), "compat"),
        (dict(base_lr=float("nan")), "base_lr"),
        (dict(base_lr=0.0), "base_lr"),
        (dict(curvature="ln"), "curvature='ln' needs compat='clean'"),
        (dict(damping=0.1), "damping > 0 needs compat='clean'"),
        (dict(compat="clean", update="sgd", damping=0.1), "only apply to update='hf'"),
        (dict(lag_distance=-5), "lag_distance"),
        (dict(num_heads=True), "num_heads"),
    ])
    def test_config(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            TTTConfig(**kwargs)

    def test_config_dict_round_trip(self):
        cfg = TTTConfig(dim=64, num_heads=4, update="muon")
        assert TTTConfig.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(ValueError, match="unknown keys"):
            TTTConfig.from_dict({**cfg.to_dict(), "heads": 3})


@pytest.mark.parametrize("compat", ["official", "clean"])
def test_update_step_has_no_host_synchronisation(compat):
    """The whole update-then-read step, CG early stop included, traces as one graph (no .item(), no
    data-dependent Python branch), so it can be compiled or captured in a CUDA graph."""
    from avmem.memory.ttt.layer import MiniBatches

    layer = TTTMemory(TTTConfig(dim=32, num_heads=2, mini_batch=8, lag_distance=8, update="hf", compat=compat))
    fast = layer.init_state(2).fast
    mb = MiniBatches(
        q=torch.randn(2, 2, 8, 16), k=torch.randn(2, 2, 8, 16), target=torch.randn(2, 2, 8, 16),
        eta=torch.rand(2, 2, 8, 1), valid=torch.ones(1, 1, 8, 1), lag_target=torch.randn(2, 2, 8, 16),
        lag_mask=torch.ones(1, 1, 8, 1), curv_weight=None if compat == "official" else torch.ones(1, 1, 8, 1),
    )
    compiled = torch.compile(layer._mini_batch, fullgraph=True, backend="eager")
    got, ref = compiled(fast, mb), layer._mini_batch(fast, mb)
    torch.testing.assert_close(got[1], ref[1])
    for a, b in zip(got[0].tensors(), ref[0].tensors()):
        torch.testing.assert_close(a, b)
