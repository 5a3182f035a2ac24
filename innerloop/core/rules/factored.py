"""The factored learned optimizer: the per-parameter MLP of ``lopt.py`` with Adafactor's row and column second
moments for large matrices (Shazeer & Stern 2018, https://arxiv.org/abs/1804.04235; Metz et al. 2022,
https://arxiv.org/abs/2203.11860, ``adafac_mlp_lopt`` in google/learned_optimization; departure: the factored moments
replace the full ones instead of sitting beside them, for memory)."""

from __future__ import annotations

import torch

from ...validate import positive_int
from .lopt import PerParameterMLP


def rank_one(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Adafactor's second moment ``row col^T / mean(row)`` per decay, flat: ``(J, rows * cols)``."""
    return (row[:, :, None] * col[:, None, :] / (row.mean(1) + 1e-30)[:, None, None]).reshape(row.shape[0], -1)


class FactoredMLPOptimizer(PerParameterMLP):
    """The MLP optimizer with Adafactor-style second moments (Shazeer & Stern 2018, https://arxiv.org/abs/1804.04235).

    A tensor whose 2-D view ``(shape[0], numel / shape[0])`` has both sides at least ``factor_min`` keeps row and
    column means of g^2 per decay instead of a full accumulator; its second moment is ``row col^T / mean(row)``.
    Smaller tensors keep full accumulators (the features are the same, so one MLP serves both).

    Args:
        lr: the nominal step (as :class:`MLPOptimizer`).
        factor_min: the smallest side that is factored (optax's ``min_dim_size_to_factor``).
        **kwargs: as :class:`MLPOptimizer`.
    """

    def __init__(self, lr: float = 1e-3, *, factor_min: int = 128, **kwargs) -> None:
        super().__init__(lr, **kwargs)
        self.factor_min = positive_int("factor_min", factor_min)

    def hparams(self) -> dict:
        """As :meth:`MLPOptimizer.hparams`, with ``factor_min``."""
        return {**super().hparams(), "factor_min": self.factor_min}

    def factored(self, p: torch.Tensor) -> tuple[int, int] | None:
        """``(rows, cols)`` of the 2-D view when ``p`` is factored, else None."""
        if p.dim() < 2:
            return None
        rows, cols = p.shape[0], p.numel() // p.shape[0]
        return (rows, cols) if min(rows, cols) >= self.factor_min else None

    def init_entry(self, p):
        """Full accumulators, or ``{"m", "row": (J, rows), "col": (J, cols)}`` for a factored tensor."""
        dims = self.factored(p)
        if dims is None:
            return super().init_entry(p)
        j = len(self.initial_rms)
        return {"m": p.new_zeros(len(self.initial_momentum), p.numel()), "row": p.new_zeros(j, dims[0]),
                "col": p.new_zeros(j, dims[1])}  # fmt: skip

    def second_moments(self, grad, entry, c):
        """Row and column means of g^2 per decay, and their rank-one second moment ``(J, numel)``."""
        dims = self.factored(grad)
        if dims is None:
            return super().second_moments(grad, entry, c)
        g2, c = grad.reshape(dims).square() + 1e-30, c[:, None]
        row = torch.lerp(g2.mean(1), entry["row"], c)
        col = torch.lerp(g2.mean(0), entry["col"], c)
        return rank_one(row, col), {"row": row, "col": col}

    def block_width(self, entry):
        """Whole rows of the 2-D view for a factored tensor."""
        if "row" not in entry:
            return self.block
        cols = entry["col"].shape[1]
        return cols * max(1, self.block // cols)

    def accumulate_(self, g, entry, c, spare) -> None:
        """As the MLP optimizer's; a factored tensor keeps the row and column means of g^2."""
        if "row" not in entry:
            return super().accumulate_(g, entry, c, spare)
        dims, c = (entry["row"].shape[1], entry["col"].shape[1]), c[:, None]
        g2 = torch.mul(g, g, out=spare).add_(1e-30).view(dims)
        torch.lerp(g2.mean(1), entry["row"], c, out=entry["row"])
        torch.lerp(g2.mean(0), entry["col"], c, out=entry["col"])

    def second_moments_(self, entry, c, v, lo, hi) -> None:
        """Full accumulators, or the rank-one second moment ``row col^T / mean(row)`` of whole rows ``lo:hi``."""
        if "row" not in entry:
            return super().second_moments_(entry, c, v, lo, hi)
        row, col = entry["row"], entry["col"]
        r0, r1 = lo // col.shape[1], hi // col.shape[1]
        full = torch.mul(row[:, r0:r1, None], col[:, None, :], out=v.view(len(c), r1 - r0, col.shape[1]))
        full.div_((row.mean(1) + 1e-30)[:, None, None])

    def compiled_view(self, p):
        """The 2-D view of a factored tensor (what :meth:`second_moments` factors), else flat."""
        return self.factored(p) or (-1,)

    def stored_moments(self, entry):
        """Full accumulators, or the rank-one second moment ``row col^T / mean(row)`` of a factored tensor."""
        if "row" not in entry:
            return super().stored_moments(entry)
        return rank_one(entry["row"], entry["col"])

    def describe(self) -> str:
        """``FactoredMLPOptimizer(lr=..., factor_min=...)``."""
        return f"{super().describe()[:-1]}, factor_min={self.factor_min})"
