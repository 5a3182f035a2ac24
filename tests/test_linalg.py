"""core.linalg: conjugate gradient (TRPO's natural gradient today, iMAML's implicit gradient next)."""

import pytest
import torch
from torch.func import vmap

from innerloop.core.linalg import conjugate_gradient


def spd(n, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    return m @ m.transpose(-1, -2) + 0.5 * torch.eye(n, dtype=torch.float64)


def counting(a):
    calls = []

    def matvec(v):
        calls.append(1)
        return (a @ v.unsqueeze(-1)).squeeze(-1)

    return matvec, calls


def reference_cg(matvec, b, iterations=10, tolerance=1e-10):
    """rl/trpo.py's conjugate gradient before it moved to core.linalg (the numbers TRPO runs were made with)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr < tolerance:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def test_solves_a_positive_definite_system_to_1e_10_in_float64():
    a, b = spd(8), torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = conjugate_gradient(lambda v: a @ v, b, iterations=40, tol=1e-24)
    assert (x - torch.linalg.solve(a, b)).abs().max() < 1e-10
    assert (a @ x - b).norm() < 1e-10


def test_stops_early_once_the_squared_residual_is_below_tol():
    a, b = spd(30, seed=2), torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    matvec, calls = counting(a)
    x = conjugate_gradient(matvec, b, iterations=500, tol=1e-8)
    assert 0 < len(calls) < 500  # stopped long before the cap
    assert (a @ x - b).square().sum() < 1e-8
    matvec, few = counting(a)
    conjugate_gradient(matvec, b, iterations=500, tol=1e-2)
    assert len(few) < len(calls)  # a looser tolerance stops sooner
    matvec, none = counting(a)
    conjugate_gradient(matvec, b, iterations=7, tol=None)
    assert len(none) == 7  # tol=None: always the full count
    matvec, zero = counting(a)
    assert torch.equal(
        conjugate_gradient(matvec, torch.zeros(30, dtype=torch.float64), 5), torch.zeros(30, dtype=torch.float64)
    )
    assert zero == []  # b = 0 is solved before any product


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("seed", "n", "iterations"), [(0, 6, 3), (1, 12, 10), (2, 5, 20), (3, 40, 10)])
def test_matches_the_old_trpo_solver_bit_for_bit(seed, n, iterations, dtype):
    a = spd(n, seed).to(dtype)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 10)).to(dtype)

    def fisher(v):
        return a @ v + 1e-5 * v

    assert torch.equal(conjugate_gradient(fisher, b, iterations), reference_cg(fisher, b, iterations))


def test_damping_solves_the_shifted_system_as_imaml_needs():
    """iMAML: (I + H / lambda) x = g, given as matvec=H, damping=lambda, b=lambda g."""
    h, lam = spd(10, seed=4), 2.0
    g = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = conjugate_gradient(lambda v: h @ v, lam * g, iterations=30, tol=1e-24, damping=lam)
    assert torch.allclose(x, torch.linalg.solve(torch.eye(10, dtype=torch.float64) + h / lam, g), atol=1e-10)
    y = conjugate_gradient(lambda v: v + h @ v / lam, g, iterations=30, tol=1e-24)  # the same system as a closure
    assert torch.allclose(x, y, atol=1e-10)


def test_a_batch_of_systems_each_converges_on_its_own():
    a = spd(6, seed=6, batch=(3,))
    a[0] = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64))  # 6 distinct eigenvalues
    a[1] = 3.0 * torch.eye(6, dtype=torch.float64)  # solved in one step: it must then stay put
    b = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    matvec, _ = counting(a)
    x = conjugate_gradient(matvec, b, iterations=30, tol=1e-24)
    assert x.shape == (3, 6) and torch.isfinite(x).all()
    assert torch.allclose(x, torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1), atol=1e-10)
    for i in range(3):  # each row is its own solve, not a solve of the stacked system
        alone = conjugate_gradient(lambda v, ai=a[i]: ai @ v, b[i], iterations=30, tol=1e-24)
        assert torch.allclose(x[i], alone, atol=1e-12)


def test_runs_under_vmap_with_tol_none():
    a = spd(5, seed=8, batch=(4,))
    b = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    x = vmap(lambda ai, bi: conjugate_gradient(lambda v: ai @ v, bi, iterations=5, tol=None))(a, b)
    assert torch.allclose(x, torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1), atol=1e-8)


# -- flatten / copy back by offset (core.params): distributed all-reduce, ProMP, TRPO, learned optimizers ---------------
def test_negative_curvature_stops_a_system_on_a_descent_direction():
    """Truncated CG (iMAML-HF's Newton systems): an indefinite A stops at the first p with p'Ap <= 0, keeping a
    descent direction (x'b > 0); without the flag CG steps along it and x'b turns negative. Batched and under vmap."""
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    plain = conjugate_gradient(lambda v: a @ v, b, 2, tol=None)
    assert plain @ b < 0  # a saddle: plain CG solves A x = b, an ascent direction for -b's objective
    x = conjugate_gradient(lambda v: a @ v, b, 2, tol=None, negative_curvature=True)
    torch.testing.assert_close(x, b)  # the first direction p = b has p'Ap = -3 < 0: x = b (steepest descent)
    spd = torch.eye(2, dtype=torch.float64) * 2
    both = torch.stack([a, spd])
    batched = conjugate_gradient(lambda v: torch.einsum("kij,kj->ki", both, v), b.expand(2, 2), 2, None, 0.0, True)
    torch.testing.assert_close(batched, torch.stack([b, b / 2]))  # the positive definite system is solved
    mapped = vmap(lambda m: conjugate_gradient(lambda v: m @ v, b, 2, tol=None, negative_curvature=True))(both)
    torch.testing.assert_close(mapped, batched)


def test_flatten_and_unflatten_round_trip_lists_and_dicts_in_order():
    from innerloop.core.params import flatten, unflatten

    w = torch.arange(6.0).reshape(2, 3).t()  # not contiguous: parameters_to_vector's view(-1) refuses it
    b = torch.tensor([7.0, 8.0])
    flat = flatten([w, b])
    assert torch.equal(flat, torch.tensor([0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 7.0, 8.0]))
    back = unflatten(flat, [w, b])
    assert isinstance(back, list) and torch.equal(back[0], w) and torch.equal(back[1], b)
    params = {"b": b, "w": w}  # a dict's own order, not sorted names
    assert torch.equal(flatten(params), torch.cat([b, w.reshape(-1)]))
    named = unflatten(flatten(params) * 2, params)
    assert list(named) == ["b", "w"] and torch.equal(named["w"], 2 * w) and torch.equal(named["b"], 2 * b)


def test_unflatten_is_differentiable_and_copy_flat_writes_in_place():
    from innerloop.core.params import copy_flat_, flatten, unflatten

    flat = torch.arange(5.0, requires_grad=True)
    a, b = unflatten(flat, [torch.empty(2), torch.empty(3)])
    (a.sum() + 2 * b.sum()).backward()
    assert torch.equal(flat.grad, torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]))
    grads = [torch.zeros(2, 2), torch.zeros(3)]
    ids = [id(g) for g in grads]
    copy_flat_(grads, torch.arange(7.0))
    assert [id(g) for g in grads] == ids  # the same tensors (an optimizer's p.grad), filled in place
    assert torch.equal(grads[0], torch.tensor([[0.0, 1.0], [2.0, 3.0]])) and torch.equal(
        grads[1], torch.tensor([4.0, 5.0, 6.0])
    )
    assert torch.equal(flatten(grads), torch.arange(7.0))
