"""The distribution machinery of the deep distribution measures (Liao et al., IEEE TIP 2024), written
once for every backbone and reused by ZS-IQA.

A feature tap (B, C, h, w) is fitted to multiples of the window (8) and its memory, image by image,
is read as 64 rows of L = C*h*w/64 values (:func:`columns`): each of the L columns is one 64-atom
distribution. Distances compare the two images' columns one by one; the official code's numerics are
followed exactly (see the notes on each function). Columns keep the official layout, atoms first,
(B, 64, L): with cancellations (near-identical distributions) float32 results depend on the order in
which softmaxes and sums reduce, and this layout reduces in the official order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["fit_to_window", "columns", "wasserstein_grid", "wasserstein_grid_reference", "wasserstein_grid_pot",
           "js_divergence",
           "symmetric_kl", "l2_weight", "WINDOW"]

WINDOW = 8  # the official code's window: columns of 8 * 8 = 64 atoms


def fit_to_window(tap: torch.Tensor, window: int = WINDOW, rounding: str = "round") -> torch.Tensor:
    """Zero-pad or crop (B, C, h, w) to multiples of ``window`` as the official code does.

    The target is ``R(h / window) * window`` with R = Python's ``round`` (half to even) or ``ceil``
    (the MobileNet files). Missing rows are added at the bottom and missing columns on the left;
    a negative difference crops the bottom rows / left columns (``nn.ZeroPad2d`` semantics).
    """
    rnd = {"round": round, "ceil": math.ceil}[rounding]
    h, w = tap.shape[-2:]
    extra_rows = rnd(h / window) * window - h
    extra_cols = rnd(w / window) * window - w
    if extra_rows == 0 and extra_cols == 0:
        return tap
    return F.pad(tap, (extra_cols, 0, 0, extra_rows))


def columns(tap: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """(B, C, h, w) fitted tap -> (B, window**2, L): atom r of column j of image b is element r*L + j
    of that image's flattened features, i.e. the official code's reshape to (64, L), a memory
    reinterpretation, not spatial patches. Each image gets its own columns (the official code mixes
    the images of a batch into 64*B-atom columns)."""
    return tap.reshape(tap.shape[0], window * window, -1)


def wasserstein_grid_reference(u_weights: torch.Tensor, v_weights: torch.Tensor, p: float,
                               nonnegative: bool | None = None) -> torch.Tensor:
    """POT's ``wasserstein_1d`` (W_p^p, no root) between two weightings of the grid 0..n-1, for every
    column at once. Inputs (..., n, L), atoms first -> (..., L). Exact for any weights, signed ones included.

    As POT: cumulative weights cu, cv (not renormalised), q = sort(cu ++ cv), quantile indices
    i(q) = min(n - 1, searchsorted_left(c, q)), result = sum_k (q_k - q_{k-1}) |iu_k - iv_k|^p with q_0 = 0.
    ``nonnegative`` is accepted (and ignored) so that the implementations are interchangeable.
    """
    n = u_weights.shape[-2]
    cu, cv = _atoms_last(u_weights).cumsum(-1), _atoms_last(v_weights).cumsum(-1)
    q = torch.sort(torch.cat((cu, cv), dim=-1), dim=-1).values
    iu = torch.searchsorted(cu, q).clamp_(max=n - 1)
    iv = torch.searchsorted(cv, q).clamp_(max=n - 1)
    delta = torch.diff(q, dim=-1, prepend=torch.zeros_like(q[..., :1]))
    gap = (iu - iv).abs().to(q.dtype)
    return (delta * (gap if p == 1 else gap.pow(p))).sum(-1)


def wasserstein_grid(u_weights: torch.Tensor, v_weights: torch.Tensor, p: float,
                     nonnegative: bool | None = None) -> torch.Tensor:
    """Same value as :func:`wasserstein_grid_reference`, several times faster for non-negative weights.

    With non-negative weights the quantile index is a(q) = #{k < n-1 : cu_k < q}, a step function that
    rises at the thresholds x_k = cu_k (k = 0..n-2); likewise b(q) with y_k = cv_k. The result is
    the integral of |a - b|^p over q, summed segment by segment of the merged thresholds: the
    segment ending at x_k has a = k and b = #{y < x_k}; the one ending at y_k has b = k and
    a = #{x <= y_k} (ties give zero-length segments; beyond both last thresholds a = b). One
    searchsorted of n queries and a histogram replace POT's sort of 2n values and two searchsorteds
    of 2n queries. Signed weights (non-monotone cumulative sums) take the reference path, whose
    searchsorted behaviour they need. ``nonnegative`` skips the sign check when the caller knows.
    """
    if nonnegative is None:
        nonnegative = not (bool((u_weights < 0).any()) or bool((v_weights < 0).any()))
    if not nonnegative:
        return wasserstein_grid_reference(u_weights, v_weights, p)
    n = u_weights.shape[-2]
    cu = _atoms_last(u_weights).cumsum(-1)  # (..., L, n); thresholds x = cu[..., :n-1]
    cv = _atoms_last(v_weights).cumsum(-1)
    # #{y < x_k}: searching the full cv counts the total mass y_{n-1} too, only when all others count.
    y_below_x = torch.searchsorted(cv, cu).clamp_(max=n - 1)[..., :-1]
    x_upto_y = _counts_at_most(y_below_x, n)[..., :-1]  # #{x <= y_k}
    x_pad = F.pad(cu[..., :-1], (1, 0))  # (0, x_0, ..., x_{n-2}): x_pad[m] = m-th smallest x, 1-based
    y_pad = F.pad(cv[..., :-1], (1, 0))
    start_x = torch.maximum(x_pad[..., :-1], y_pad.gather(-1, y_below_x))
    start_y = torch.maximum(y_pad[..., :-1], x_pad.gather(-1, x_upto_y))
    k = torch.arange(n - 1, device=cu.device, dtype=cu.dtype)
    gap_x = _power(k - y_below_x.to(cu.dtype), p)
    gap_y = _power(x_upto_y.to(cu.dtype) - k, p)
    return ((x_pad[..., 1:] - start_x) * gap_x).sum(-1) + ((y_pad[..., 1:] - start_y) * gap_y).sum(-1)


def wasserstein_grid_pot(u_weights: torch.Tensor, v_weights: torch.Tensor, p: float,
                         nonnegative: bool | None = None) -> torch.Tensor:
    """The same computed by POT's ``ot.lp.wasserstein_1d`` as the official code calls it (the cross-check
    for tests and the benchmark; POT is a test dependency). Inputs (..., n, L) -> (..., L); ``nonnegative``
    is accepted and ignored."""
    import ot

    n = u_weights.shape[-2]
    lead = u_weights.shape[:-2]
    u = u_weights.reshape(-1, n, u_weights.shape[-1])
    v = v_weights.reshape(-1, n, v_weights.shape[-1])
    grid = torch.arange(n, device=u.device)[:, None].expand(n, u.shape[-1])
    out = [ot.lp.wasserstein_1d(grid, grid, a, b, p=p) for a, b in zip(u, v, strict=True)]
    return torch.stack(out).reshape(*lead, -1)


def _power(gap: torch.Tensor, p: float) -> torch.Tensor:
    """|gap|^p for integer-valued gaps."""
    if p == 2:
        return gap * gap
    return gap.abs() if p == 1 else gap.abs().pow(p)


def _atoms_last(weights: torch.Tensor) -> torch.Tensor:
    """(..., n, L) -> contiguous (..., L, n): cumulative sums and searches run along contiguous rows."""
    return weights.transpose(-1, -2).contiguous()


def _counts_at_most(values: torch.Tensor, n: int) -> torch.Tensor:
    """For integer rows ``values`` in [0, n-1]: out[..., k] = #{j : values[..., j] <= k}, k = 0..n-1.

    Here it turns the counts #{y < x_j} into #{x <= y_k}: x_j <= y_k  <=>  #{y < x_j} <= k.
    One flat bincount is much faster than a batched scatter on the CPU.
    """
    rows = values.numel() // values.shape[-1]
    offsets = torch.arange(rows, device=values.device).view(*values.shape[:-1], 1) * n
    hist = torch.bincount((values + offsets).flatten(), minlength=rows * n)
    return hist.view(*values.shape[:-1], n).cumsum(-1)


def _kl_terms(target: torch.Tensor, log_input: torch.Tensor) -> torch.Tensor:
    """Elementwise ``nn.KLDivLoss(reduction='none')(log_input, target)``: xlogy(t, t) - t * log_input."""
    return torch.xlogy(target, target) - target * log_input


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps_inside: float = 0.0, eps_outside: float = 0.0,
                  dim: int = -2) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log) of pdfs along ``dim``: 1/2 [KL(p||m) + KL(q||m)],
    log m = log((p + q + eps_inside) / 2 + eps_outside); the official files differ in where their
    1e-17 sits (VGG: none; SqueezeNet, MobileNet: inside; EfficientNet: outside)."""
    log_m = torch.log((p + q + eps_inside) / 2 + eps_outside)
    return 0.5 * (_kl_terms(p, log_m).sum(dim) + _kl_terms(q, log_m).sum(dim))


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 0.0, dim: int = -2) -> torch.Tensor:
    """Symmetric KL divergence (natural log): 1/2 [KL(p||q) + KL(q||p)], with ``eps`` inside the log
    of the second argument as in the official code (0 for VGG, 1e-17 otherwise)."""
    return 0.5 * (_kl_terms(p, torch.log(q + eps)).sum(dim) + _kl_terms(q, torch.log(p + eps)).sum(dim))


def l2_weight(distance: torch.Tensor, c: float) -> torch.Tensor:
    """Weight of the L2 term: 1 / (sqrt(exp(-1 / (d + c))) * (d + c)^2), not detached (official)."""
    shifted = distance + c
    return 1 / (torch.sqrt(torch.exp(-1 / shifted)) * shifted**2)
