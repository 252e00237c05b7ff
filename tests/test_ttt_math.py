"""Hand-derived derivatives of the fast-weight MLP against torch.func / autograd oracles (float64)."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp, vjp

from avmem.memory.ttt.cg import cg_official, cg_textbook
from avmem.memory.ttt.fast_mlp import (
    FastWeights,
    forward_keys,
    gauss_newton_product,
    mlp_jvp,
    mlp_vjp,
    output_grad_to_z2,
    weighted_param_grad,
)
from avmem.memory.ttt.update import Curvature, HFUpdate, newton_schulz

DT = torch.float64
NAMES = ("W1", "b1", "W2", "b2")


def random_problem(B=2, H=3, N=7, d=4, h=6):
    theta = FastWeights(
        torch.randn(B, H, d, h, dtype=DT), torch.randn(B, H, 1, h, dtype=DT) * 0.3,
        torch.randn(B, H, h, d, dtype=DT), torch.randn(B, H, 1, d, dtype=DT) * 0.3,
    )
    keys = torch.randn(B, H, N, d, dtype=DT)
    gamma = 1 + 0.3 * torch.randn(H, 1, d, dtype=DT)
    beta = 0.3 * torch.randn(H, 1, d, dtype=DT)
    return theta, keys, gamma, beta


def z2_of(keys):
    def f(th):
        hidden = torch.nn.functional.gelu(keys @ th["W1"] + th["b1"], approximate="tanh")
        return hidden @ th["W2"] + th["b2"]
    return f


def ln_of(keys, gamma, beta):
    def f(th):
        z = z2_of(keys)(th)
        c = z - z.mean(-1, keepdim=True)
        return c * torch.rsqrt(c.square().mean(-1, keepdim=True) + 1e-8) * gamma + beta
    return f


def as_dict(fw: FastWeights) -> dict:
    return dict(zip(NAMES, fw.tensors()))


def close(a: FastWeights, b: dict, tol=1e-11):
    for name, x in zip(NAMES, a.tensors()):
        torch.testing.assert_close(x, b[name], rtol=tol, atol=tol)


def test_jvp_and_vjp_match_torch_func():
    theta, keys, gamma, beta = random_problem()
    _, cache = forward_keys(theta, keys, gamma, beta)
    v = theta.map(torch.randn_like)
    _, jv_ref = jvp(z2_of(keys), (as_dict(theta),), (as_dict(v),))
    torch.testing.assert_close(mlp_jvp(cache, v), jv_ref, rtol=1e-12, atol=1e-12)
    u = torch.randn_like(jv_ref)
    _, pullback = vjp(z2_of(keys), as_dict(theta))
    close(mlp_vjp(cache, u), pullback(u)[0])


@pytest.mark.parametrize("curvature", ["mlp", "ln"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gauss_newton_product_matches_torch_func(curvature, weighted):
    theta, keys, gamma, beta = random_problem()
    _, cache = forward_keys(theta, keys, gamma, beta)
    v = theta.map(torch.randn_like)
    c = torch.rand(1, 1, keys.shape[2], 1, dtype=DT) if weighted else None
    f = ln_of(keys, gamma, beta) if curvature == "ln" else z2_of(keys)
    _, jv = jvp(f, (as_dict(theta),), (as_dict(v),))
    _, pullback = vjp(f, as_dict(theta))
    ref = pullback(jv if c is None else c * jv)[0]
    got = gauss_newton_product(cache, v, c, gamma if curvature == "ln" else None, damping=0.25)
    close(got, {n: ref[n] + 0.25 * getattr(v, n) for n in NAMES})


def test_gauss_newton_product_gradient_matches_finite_differences():
    """The curvature product is differentiated in training: check d<w, G(theta) v>/dtheta."""
    theta, keys, gamma, beta = random_problem(B=1, H=2, N=5)
    v, w = theta.map(torch.randn_like), theta.map(torch.randn_like)

    def f(*tensors):
        _, cache = forward_keys(FastWeights(*tensors), keys, gamma, beta)
        return gauss_newton_product(cache, v, None, gamma).dot(w).sum()

    args = [t.clone().requires_grad_() for t in theta.tensors()]
    assert torch.autograd.gradcheck(f, args)


def test_weighted_gradient_matches_autograd():
    theta, keys, gamma, beta = random_problem()
    target = torch.randn_like(keys)
    lag_target = torch.randn_like(keys)
    mask = (torch.rand(1, 1, keys.shape[2], 1) > 0.4).to(DT)
    eta = torch.rand(*keys.shape[:3], 1, dtype=DT)
    lam = 0.1

    def loss(th):
        y = ln_of(keys, gamma, beta)(th)
        per = 0.5 * (y - target).square().sum(-1, keepdim=True)
        per = per + lam * mask * 0.5 * (y - lag_target).square().sum(-1, keepdim=True)
        return (eta * per).sum()

    ref = torch.func.grad(loss)(as_dict(theta))
    y, cache = forward_keys(theta, keys, gamma, beta)
    err = (y - target) + lam * mask * (y - lag_target)
    got = weighted_param_grad(cache, output_grad_to_z2(err, cache, gamma), eta)
    close(got, ref)


def dense_gn(cache, like: FastWeights, damping: float) -> torch.Tensor:
    """Dense per-task G [B, H, P, P] built column by column from GN products."""
    B, H = like.W1.shape[:2]
    sizes = [t.shape[-2] * t.shape[-1] for t in like.tensors()]
    P = sum(sizes)
    cols = []
    for j in range(P):
        e = torch.zeros(B, H, P, dtype=DT)
        e[..., j] = 1
        pieces = torch.split(e, sizes, dim=-1)
        v = FastWeights(*(p.reshape(t.shape) for p, t in zip(pieces, like.tensors())))
        gv = gauss_newton_product(cache, v, None, None, damping)
        cols.append(torch.cat([t.reshape(B, H, -1) for t in gv.tensors()], dim=-1))
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_with_as_many_iterations_as_parameters_equals_dense_solve(seed):
    """Textbook-indicator CG run for P iterations solves (G + damping I) x = b (P = 17 here).

    The damping keeps the condition number near 15 so that float64 CG converges before rounding
    breaks the indicator's monotonicity (which stops it, by design, near convergence).
    """
    torch.manual_seed(seed)
    theta, keys, gamma, beta = random_problem(B=1, H=2, N=12, d=2, h=3)
    _, cache = forward_keys(theta, keys, gamma, beta)
    b = theta.map(torch.randn_like)
    damping = 5.0
    G = dense_gn(cache, theta, damping)
    flat_b = torch.cat([t.reshape(1, 2, -1) for t in b.tensors()], dim=-1)
    ref = torch.linalg.solve(G, flat_b.unsqueeze(-1)).squeeze(-1)
    P = flat_b.shape[-1]
    assert P == theta.numel_per_task()
    x = cg_textbook(lambda v: gauss_newton_product(cache, v, None, None, damping), b, P)
    got = torch.cat([t.reshape(1, 2, -1) for t in x.tensors()], dim=-1)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-6


def test_cg_stop_rules_differ_as_documented():
    """The official indicator divides by sum r^T r, the textbook one by x^T G x = sum alpha r^T r."""
    theta, keys, gamma, beta = random_problem(B=4, H=8, N=6, d=4, h=8)
    _, cache = forward_keys(theta, keys, gamma, beta)
    b = theta.map(lambda t: torch.randn_like(t) * 1e-2)
    op = lambda v: gauss_newton_product(cache, v)  # noqa: E731
    x_off, x_txt = cg_official(op, b, 3), cg_textbook(op, b, 3)
    assert any(not torch.allclose(a, c) for a, c in zip(x_off.tensors(), x_txt.tensors()))


def test_cg_zero_gradient_gives_zero_step_without_nan():
    theta, keys, gamma, beta = random_problem(B=1, H=2)
    _, cache = forward_keys(theta, keys, gamma, beta)
    b = theta.map(torch.zeros_like)
    for solver in (cg_official, cg_textbook):
        x = solver(lambda v: gauss_newton_product(cache, v), b, 3)
        assert all(torch.equal(t, torch.zeros_like(t)) for t in x.tensors())


@pytest.mark.parametrize("solve", [cg_official, cg_textbook])
def test_gradcheck_through_one_hf_update(solve):
    """Gradients through an unrolled 3-iteration CG update (early-stop masks are piecewise constant)."""
    theta, keys, gamma, beta = random_problem(B=1, H=2, N=5, d=3, h=4)
    rule = HFUpdate(3, solve)
    target = torch.randn_like(keys)
    eta = torch.rand(1, 2, 5, 1, dtype=DT)

    def step(W1, b1, W2, b2, k):
        th = FastWeights(W1, b1, W2, b2)
        y, cache = forward_keys(th, k, gamma, beta)
        grad = weighted_param_grad(cache, output_grad_to_z2(y - target, cache, gamma), eta)
        delta = rule(grad, Curvature(cache, None, None, 0.0))
        return tuple((th - delta).tensors())

    args = [t.clone().requires_grad_() for t in theta.tensors()] + [keys.clone().requires_grad_()]
    assert torch.autograd.gradcheck(step, args, atol=1e-6, rtol=1e-5)


def test_newton_schulz_orthogonalises():
    g = torch.randn(3, 16, 24, dtype=DT)
    x = newton_schulz(g, 5)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25
    assert torch.allclose(newton_schulz(g.transpose(-2, -1), 5), x.transpose(-2, -1))
