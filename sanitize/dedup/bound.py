"""Searching a block of pairs with a quarter of the arithmetic: an upper bound on cosines from the projected space.

For unit rows x, y and the clusterings' orthonormal projection P (d × p, `clustering.fit_projection`):

    x·y = (Pᵀx)·(Pᵀy) + (Qx)·(Qy) <= (Pᵀx)·(Pᵀy) + |Qx| |Qy|,   |Qx|² = 1 - |Pᵀx|²,

where Q projects onto the rest of the space. Appending |Qx| to Pᵀx gives (p + 1)-dim "bound rows" whose products
are upper bounds of the cosines, at (p + 1)/d of the arithmetic (129/512 by default). A block is searched on the
bound first and only the pairs it nominates are checked in full dimension; no pair at or above the cut is lost,
because the bound is never below the cosine (rounding included: `RESIDUAL_SLACK`). How much the bound prunes
depends on the data: on rows whose energy outside the p leading directions is small against 1 - threshold it
nominates a few times the true pairs; when it nominates more than `MAX_NOMINATED_SHARE` of a block, checking
them would cost more than the full product, and the block is searched in full dimension instead. Either way the
answer is the same pairs.
"""

from __future__ import annotations

import numpy as np

from sanitize.dedup.device import product_hits

# Added to |Qx|² before the square root: |Pᵀx|² carries float32 rounding of ~1e-6 (and unit rows are unit to
# ~1e-7), so without it a row lying almost inside the subspace could get a residual a little too small.
RESIDUAL_SLACK = 1e-5
# Checking one nominated pair (a gather and a 512-term dot) costs about what 300 entries of a block product do
# (measured here: 2.2 µs against 7.7 ms for a 1000 × 1000 × 512 product); beyond this share of the block's pairs
# the full product is cheaper.
MAX_NOMINATED_SHARE = 1 / 512
# The out-of-core search stores bound rows as float16 (a quarter of the bytes of the rows they bound). Rounding moves
# each entry by at most 2⁻¹¹ of itself, so a bound row (length ~1) by at most 4.9e-4 and a product of two by at
# most 9.8e-4 (Cauchy–Schwarz); comparing stored bounds at cut - 2⁻⁹ keeps every pair at or above the cut.
STORED_DTYPE = np.float16
STORED_MARGIN = 2.0**-9


def bound_rows(unit: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(n, p + 1) float32 bound rows of the (n, d) float32 unit rows `unit` under the (d, p) orthonormal
    `projection`: products of bound rows are >= the products of the rows themselves."""
    return bound_rows_of_projected(unit @ projection)


def bound_rows_of_projected(projected: np.ndarray) -> np.ndarray:
    """Bound rows from unit rows already multiplied by the projection ((n, p) float32, not normalised; not
    modified): the projected coordinates and an upper bound of each row's length outside the subspace."""
    outside = 1.0 - np.einsum("ij,ij->i", projected, projected)
    residual = np.sqrt(np.maximum(outside, 0.0) + RESIDUAL_SLACK).astype(np.float32)
    return np.concatenate([projected, residual[:, None]], axis=1)


def block_hits(
    xi: np.ndarray, xj: np.ndarray, cut: float, *, same: bool,
    bi: np.ndarray | None = None, bj: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Positions (li, lj) of the pairs of float32 unit rows xi[li], xj[lj] whose product is >= cut, row-major.

    `same`: xi and xj are one block (only li < lj is returned). `bi`, `bj`: their bound rows (`bound_rows`), or
    None to compute the full product. Returns (li, lj, settled): settled is True when the bound settled the
    block (its nominees checked one by one), False when the full product was computed. The positions are those
    of the full product `xi @ xj.T >= cut` up to float32 rounding of a product at the cut itself; callers confirm
    each pair at a threshold above the cut.
    """
    if bi is not None and bj is not None:
        found = nominees(bi, bj, cut, same=same)
        if found is not None:
            li, lj = found
            keep = np.einsum("ij,ij->i", xi[li], xj[lj]) >= cut
            return li[keep], lj[keep], True
    li, lj = product_hits(xi, xj, cut, same=same)
    return li, lj, False


def nominees(bi: np.ndarray, bj: np.ndarray, cut: float, *, same: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions (li, lj), row-major, of the pairs of two blocks of bound rows whose bound is >= cut (li < lj when
    `same`); None when they are more than `MAX_NOMINATED_SHARE` of the block's pairs (search it in full instead).
    Bound rows stored as float16 (`STORED_DTYPE`) are compared at cut - `STORED_MARGIN`."""
    if bi.dtype == STORED_DTYPE:
        bi, bj, cut = bi.astype(np.float32), bj.astype(np.float32), cut - STORED_MARGIN
    li, lj = product_hits(bi, bj, cut, same=same)
    if len(li) > MAX_NOMINATED_SHARE * len(bi) * len(bj):
        return None
    return li, lj
