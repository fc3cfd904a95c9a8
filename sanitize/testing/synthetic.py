"""Synthetic CLIP-like embeddings with planted near-duplicates, for tests and benchmarks.

The model (every random draw comes from `seed`):

- structure: a random orthonormal basis U (d × rank). Real CLIP embeddings keep most of their variance in
  a few dozen directions; here all structure lives in span(U), with variances λ_i ∝ i^-spectrum_decay.
- mean: one shared unit direction μ with weight `mean_weight`, so unrelated rows still have a positive
  cosine, as unrelated CLIP image embeddings do (about 0.3–0.5).
- concepts: `n_concepts` centres c_j = U(√λ ⊙ g_j), g_j standard normal; concept j is drawn with
  probability ∝ (j + 1)^-zipf, so a few concepts are large (and `giant_share` can force one concept to
  hold a given share of the rows).
- rows: v = mean_weight·μ + c_j + spread·U(√λ ⊙ w) + noise·e/√d, normalised (w, e standard normal).
- planted near-duplicates: a share `dup_fraction` of the rows are copies of another row (an original
  gets one or more copies): copy = normalise(original + s·(√ρ·U(√λ ⊙ w') / ‖√λ‖ + √(1-ρ)·e'/√d)), with
  s uniform in [dup_noise/3, dup_noise] and ρ = `dup_structure`. A share ρ of the perturbation follows
  the data's own directions (crops, recompression and overlays move an embedding along directions the
  data varies in), so it crosses the boundaries a k-means partition draws across those directions —
  which is why one clustering misses a share of the pairs; the rest is isotropic noise. Copies of one
  original are also near each other, some straddling any threshold, so chains (a~b, b~c, a!~c) occur.

Rows are generated in fixed chunks with their own seeds and written into `out` at shuffled positions, so
a million rows can go straight into a memmap with bounded memory; the result depends only on the
arguments, not on `out` or the machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sanitize.errors import ConfigError

logger = logging.getLogger(__name__)

CHUNK_ROWS = 32768


@dataclass(frozen=True)
class SyntheticEmbeddings:
    """x: (n, d) unit rows. source: (n,) int64, for a planted copy the row it copies, otherwise the row itself.

    concept: (n,) int32 concept of each row (a copy has its original's concept).
    """

    x: np.ndarray
    source: np.ndarray
    concept: np.ndarray

    def planted_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """All pairs (a < b) inside each planted group (an original and its copies), as int64 arrays."""
        copies = np.flatnonzero(self.source != np.arange(len(self.source)))
        group_of = self.source  # copies point at their original; originals at themselves
        members = np.concatenate([copies, np.unique(self.source[copies])])
        order = np.lexsort((members, group_of[members]))
        members = members[order]
        groups = group_of[members]
        a_out, b_out = [], []
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        sizes = np.diff(np.r_[starts, len(members)])
        for size in np.unique(sizes):
            block = members[starts[sizes == size][:, None] + np.arange(size)]
            i, j = np.triu_indices(size, 1)
            a_out.append(block[:, i].ravel())
            b_out.append(block[:, j].ravel())
        a = np.concatenate(a_out) if a_out else np.empty(0, np.int64)
        b = np.concatenate(b_out) if b_out else np.empty(0, np.int64)
        return np.minimum(a, b), np.maximum(a, b)


def clip_like(
    n: int,
    d: int = 512,
    *,
    n_concepts: int | None = None,
    rank: int = 48,
    spectrum_decay: float = 0.6,
    mean_weight: float = 0.8,
    spread: float = 0.6,
    noise: float = 0.35,
    zipf: float = 0.7,
    giant_share: float = 0.0,
    dup_fraction: float = 0.05,
    copies_per_original: float = 1.5,
    dup_noise: float = 0.32,
    dup_structure: float = 0.5,
    seed: int = 0,
    dtype: np.dtype | type = np.float32,
    out: np.ndarray | None = None,
) -> SyntheticEmbeddings:
    """Generate n CLIP-like unit embeddings of dimension d with planted near-duplicate groups.

    See the module docstring for the model. `n_concepts` defaults to n // 200 (at least 1). `giant_share`
    (0..1): force concept 0 to hold that share of the non-copy rows. `copies_per_original`: mean number of
    copies of each original. `out`: optional (n, d) array (e.g. np.lib.format.open_memmap) to fill instead
    of allocating; it is returned as `x`. Raises ConfigError for out-of-range arguments.
    """
    _check(n, d, rank, dup_fraction, copies_per_original, giant_share, out)
    if not 0 <= dup_structure <= 1:
        raise ConfigError(f"dup_structure must be in [0, 1], got {dup_structure}")
    rank = min(rank, d)
    n_concepts = max(1, n // 200) if n_concepts is None else n_concepts
    root = np.random.SeedSequence(seed)
    model_seq, chunk_seq = root.spawn(2)
    rng = np.random.default_rng(model_seq)

    basis, _ = np.linalg.qr(rng.standard_normal((d, rank)))
    basis = basis.astype(np.float32)  # (d, rank), orthonormal columns
    scale = np.arange(1, rank + 1, dtype=np.float64) ** (-spectrum_decay / 2)
    scale = (scale / np.linalg.norm(scale)).astype(np.float32)  # √λ with Σλ = 1
    mean = rng.standard_normal(d).astype(np.float32)
    mean /= np.linalg.norm(mean)
    centres = (rng.standard_normal((n_concepts, rank)) * scale).astype(np.float32)
    popularity = np.arange(1, n_concepts + 1, dtype=np.float64) ** -zipf
    popularity /= popularity.sum()
    if giant_share > 0 and n_concepts > 1:
        popularity = np.r_[giant_share, (1 - giant_share) * popularity[1:] / popularity[1:].sum()]

    n_copies = round(dup_fraction * n)
    n_base = n - n_copies
    position = rng.permutation(n).astype(np.int64)  # logical row -> stored row
    n_originals = min(n_base, max(1, round(n_copies / copies_per_original))) if n_copies else 0
    originals = rng.choice(n_base, size=n_originals, replace=False) if n_copies else np.empty(0, np.int64)
    copy_of = originals[rng.integers(0, max(n_originals, 1), size=n_copies)] if n_copies else originals
    copy_scale = rng.uniform(dup_noise / 3, dup_noise, size=n_copies).astype(np.float32)

    x = np.empty((n, d), dtype=dtype) if out is None else out
    concept = np.empty(n, dtype=np.int32)
    source = np.empty(n, dtype=np.int64)
    chunk_seqs = iter(chunk_seq.spawn(-(-n_base // CHUNK_ROWS) + -(-n_copies // CHUNK_ROWS)))

    for start in range(0, n_base, CHUNK_ROWS):
        crng = np.random.default_rng(next(chunk_seqs))
        m = min(CHUNK_ROWS, n_base - start)
        labels = crng.choice(n_concepts, size=m, p=popularity).astype(np.int32)
        latent = centres[labels] + spread * crng.standard_normal((m, rank), dtype=np.float32) * scale
        v = mean_weight * mean + latent @ basis.T
        v += (noise / np.sqrt(d)) * crng.standard_normal((m, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        pos = position[start : start + m]
        x[pos] = v
        concept[pos] = labels
        source[pos] = pos

    for start in range(0, n_copies, CHUNK_ROWS):
        crng = np.random.default_rng(next(chunk_seqs))
        m = min(CHUNK_ROWS, n_copies - start)
        orig_pos = position[copy_of[start : start + m]]
        s = copy_scale[start : start + m, None]
        structured = crng.standard_normal((m, rank), dtype=np.float32) * scale @ basis.T
        isotropic = crng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        perturbation = np.sqrt(dup_structure) * structured + np.sqrt(1 - dup_structure) * isotropic
        v = np.asarray(x[orig_pos], dtype=np.float32) + s * perturbation
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        pos = position[n_base + start : n_base + start + m]
        x[pos] = v
        concept[pos] = concept[orig_pos]
        source[pos] = orig_pos
    logger.info("clip_like: %d rows (%d planted copies of %d originals), d=%d, rank=%d, %d concepts",
                n, n_copies, n_originals, d, rank, n_concepts)
    return SyntheticEmbeddings(x=x, source=source, concept=concept)


def _check(n, d, rank, dup_fraction, copies_per_original, giant_share, out) -> None:
    if n < 1 or d < 1 or rank < 1:
        raise ConfigError(f"n, d and rank must be positive, got n={n}, d={d}, rank={rank}")
    if not 0 <= dup_fraction < 1:
        raise ConfigError(f"dup_fraction must be in [0, 1), got {dup_fraction}")
    if copies_per_original < 1:
        raise ConfigError(f"copies_per_original must be >= 1, got {copies_per_original}")
    if not 0 <= giant_share < 1:
        raise ConfigError(f"giant_share must be in [0, 1), got {giant_share}")
    if out is not None and tuple(out.shape) != (n, d):
        raise ConfigError(f"out has shape {tuple(out.shape)}, expected ({n}, {d})")
