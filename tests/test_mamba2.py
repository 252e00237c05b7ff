"""Mamba-2 memory layer: chunked SSD equals the token-by-token recurrence (outputs and gradients, float64),
streaming in pieces equals one call, bad input is named."""

from __future__ import annotations

import pytest
import torch

from avmem.memory.ssm import Mamba2Config, Mamba2Memory, ssd_chunked, ssd_reference


def _inputs(length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kw = dict(generator=g, dtype=torch.float64)
    b_, h, p, n = 2, 3, 4, 5
    return (torch.randn(b_, length, h, p, **kw), torch.rand(b_, length, h, **kw) * 0.5,
            -torch.rand(h, **kw) * 2 - 0.1, torch.randn(b_, length, n, **kw), torch.randn(b_, length, n, **kw),
            torch.randn(b_, h, p, n, **kw))


@pytest.mark.parametrize("length, chunk", [(1, 4), (7, 8), (16, 8), (37, 8), (40, 64)])
def test_chunked_scan_matches_the_recurrence_in_outputs_and_gradients(length, chunk):
    args = [t.requires_grad_() for t in _inputs(length)]
    y1, s1 = ssd_chunked(*args[:5], chunk, args[5])
    loss1 = (y1 * torch.cos(y1)).sum() + (s1 ** 2).sum()
    g1 = torch.autograd.grad(loss1, args)
    y2, s2 = ssd_reference(*args[:5], args[5])
    loss2 = (y2 * torch.cos(y2)).sum() + (s2 ** 2).sum()
    g2 = torch.autograd.grad(loss2, args)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_layer_streams_in_pieces_and_starts_near_identity():
    torch.manual_seed(0)
    layer = Mamba2Memory(Mamba2Config(dim=32, d_state=8, headdim=16, chunk=8)).double()
    u = torch.randn(1, 50, 32, dtype=torch.float64)
    whole, end = layer(u)
    first, mid = layer(u[:, :23])
    second, end2 = layer(u[:, 23:], state=mid)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(end2.ssm, end.ssm, rtol=1e-12, atol=1e-12)
    assert float((whole - u).detach().abs().max()) < float(u.abs().max())  # residual through a small tanh gate
    whole.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bad_input_is_named():
    layer = Mamba2Memory(Mamba2Config(dim=32, d_state=8, headdim=16))
    with pytest.raises(ValueError, match=r"\[B, L, 32\]"):
        layer(torch.randn(1, 5, 31))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.full((1, 5, 32), float("nan")))
    with pytest.raises(ValueError, match="divisible by headdim"):
        Mamba2Config(dim=30, headdim=16)
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        Mamba2Config(dim=32, d_state=0)
