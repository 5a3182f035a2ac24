"""Similarity of two representations of the same n inputs, ``X (n, p)`` and ``Y (n, q)``.

Linear CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations Revisited", ICML)::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)        (columns centred)

SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, NeurIPS): keep the top singular directions of each side that
explain ``keep`` of its variance, then the mean canonical correlation between them. PWCCA (Morcos, Raghu & Bengio
2018, NeurIPS): canonical correlations weighted by how much of X each canonical direction accounts for.
All are computed in float64; 1 means the same representation up to the measure's invariances.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def _pair(x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as centred float64 ``(n, features)`` matrices of the same n (conv maps are flattened)."""
    if x.dim() < 2 or y.dim() < 2 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"{where} compares two representations of the same inputs: X and Y must be (n, features) with one n, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise InputError(f"{where} needs at least 2 inputs (rows), got {x.shape[0]}")
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise InputError(f"{where} needs finite representations; X or Y holds NaN or inf (a diverged adaptation?)")
    return x - x.mean(0), y - y.mean(0)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x (n, p)`` and ``y (n, q)`` in [0, 1]: invariant to orthogonal maps and isotropic scaling."""
    x, y = _pair(x, y, "linear_cka")
    if x.shape[1] + y.shape[1] > 2 * x.shape[0]:  # wide features: the n x n Gram form is cheaper
        k, m = x @ x.T, y @ y.T
        cross, nx, ny = (k * m).sum(), k.norm(), m.norm()
    else:
        cross, nx, ny = (y.T @ x).pow(2).sum(), (x.T @ x).norm(), (y.T @ y).norm()
    if nx == 0 or ny == 0:
        return float("nan")  # a constant representation: no similarity is defined
    return float(cross / (nx * ny))


def _basis(x: torch.Tensor, keep: float) -> torch.Tensor:
    """An orthonormal basis ``(n, k)`` of the top singular directions of ``x`` explaining ``keep`` of its variance."""
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    s = s[s > s.max() * x.shape[0] * torch.finfo(s.dtype).eps] if s.numel() and s.max() > 0 else s[:0]
    if s.numel() == 0:
        return u[:, :0]
    energy = s.pow(2).cumsum(0) / s.pow(2).sum()
    k = int((energy < keep - 1e-12).sum()) + 1
    return u[:, : min(k, s.numel())]


def canonical_correlations(x: torch.Tensor, y: torch.Tensor, keep: float = 1.0) -> torch.Tensor:
    """The canonical correlations (descending) between the top-``keep`` singular subspaces of ``x`` and ``y``."""
    if not 0 < keep <= 1:
        raise InputError(f"keep is the fraction of variance kept, in (0, 1], got {keep}")
    x, y = _pair(x, y, "canonical_correlations")
    bx, by = _basis(x, keep), _basis(y, keep)
    if bx.shape[1] == 0 or by.shape[1] == 0:
        return x.new_zeros(0)
    return torch.linalg.svdvals(bx.T @ by).clamp(0, 1)


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """SVCCA: the mean canonical correlation of the directions explaining ``keep`` of each side's variance."""
    rho = canonical_correlations(x, y, keep)
    return float(rho.mean()) if rho.numel() else float("nan")


def pwcca(x: torch.Tensor, y: torch.Tensor, keep: float = 1.0) -> float:
    """PWCCA: canonical correlations weighted by ``alpha_i = sum_j |<h_i, x_j>|`` (h_i: X's canonical variates)."""
    if not 0 < keep <= 1:
        raise InputError(f"keep is the fraction of variance kept, in (0, 1], got {keep}")
    xc, yc = _pair(x, y, "pwcca")
    bx, by = _basis(xc, keep), _basis(yc, keep)
    if bx.shape[1] == 0 or by.shape[1] == 0:
        return float("nan")
    a, rho, _ = torch.linalg.svd(bx.T @ by, full_matrices=False)
    h = bx @ a[:, : rho.numel()]  # X's canonical variates, unit norm, (n, k)
    alpha = (h.T @ xc).abs().sum(1)
    return float((alpha * rho.clamp(0, 1)).sum() / alpha.sum())


def neurons_by_examples(activation: torch.Tensor) -> torch.Tensor:
    """A layer's activations as CCA's ``(data points, neurons)``: a conv map ``(n, C, H, W)`` gives ``(n H W, C)``
    (each spatial position a data point, channels the neurons, as Raghu et al. 2017 treat conv layers)."""
    if activation.dim() > 2:
        return activation.movedim(1, -1).reshape(-1, activation.shape[1])
    return activation.reshape(activation.shape[0], -1)


MEASURES = {"cka": linear_cka, "svcca": svcca, "pwcca": pwcca}


def similarity(x: torch.Tensor, y: torch.Tensor, measure: str) -> float:
    """``measure`` (``cka``, ``svcca``, ``pwcca``) of two activations of one layer on the same inputs;
    CCA measures see conv maps as ``(n H W, C)`` (:func:`neurons_by_examples`), CKA flattens them."""
    if measure not in MEASURES:
        raise InputError(f"similarity measure {measure!r} is not known; choose one of {', '.join(MEASURES)}")
    if measure == "cka":
        return linear_cka(x, y)
    return MEASURES[measure](neurons_by_examples(x), neurons_by_examples(y))
