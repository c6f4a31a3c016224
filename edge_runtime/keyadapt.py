"""Key classes that keep learning while the user types (numpy only; used by ``keyproto``).

A minute of calibration holds a few presses of each key; the user then types on, and every key the decoder
names with confidence is one more press of that key. ``KeyAdaptation`` keeps, per prior class, the sum and
count of the user's (centred) key vectors, calibration presses first, and re-derives a class's mean with the
same two-covariance rule that fitted it (``keyproto._map_mean``):

    mean_k = prior_k + B (B + W / n_k)^-1 (sum_k / n_k - prior_k)

Computed in the generalized eigenbasis of (B, W), ``V^T W V = I`` and ``V^T B V = diag(eig)``, the update of
one class is two (D, D) products: ``mean = prior + V^-T diag(eig / (eig + 1 / n)) V^T (user - prior)``, and
the LDA column of the class is ``w = W^-1 mean = V V^T mean``, ``b = -mean . w / 2``. A decoded press counts
``weight`` pseudo-presses when its combined posterior is at least ``min_posterior``.

The profile file keeps the state after calibration; the decoder adapts a copy per stream (restarting a
stream starts from the calibration again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def generalized_basis(between: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V (D, D) and eig (D,) with ``V^T within V = I`` and ``V^T between V = diag(eig)`` (eig clipped at 0)."""
    chol = np.linalg.cholesky(within)  # within = L L^T
    li = np.linalg.inv(chol)
    eig, q = np.linalg.eigh(li @ between @ li.T)
    return li.T @ q, np.clip(eig, 0.0, None)


@dataclass
class KeyAdaptation:
    prior_means: np.ndarray  # (K0, D) the prior's class means
    basis: np.ndarray  # (D, D) V
    eig: np.ndarray  # (D,)
    sums: np.ndarray  # (K0, D) the user's centred key vectors summed per class
    counts: np.ndarray  # (K0,) presses (pseudo-presses) behind each sum
    weight: float = 0.5  # pseudo-presses one confidently decoded press adds (0: the profile stays as calibrated)
    min_posterior: float = 0.9  # the combined posterior a decoded press needs to count
    _basis_inv_t: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        k, d = self.prior_means.shape
        assert self.basis.shape == (d, d) and self.eig.shape == (d,), f"basis ({d}, {d}) and eig ({d},) expected"
        assert self.sums.shape == (k, d) and self.counts.shape == (k,), f"sums ({k}, {d}) and counts ({k},) expected"
        assert self.weight >= 0.0 and 0.0 <= self.min_posterior <= 1.0, "weight >= 0, min_posterior in [0, 1]"

    @property
    def basis_inv_t(self) -> np.ndarray:
        if self._basis_inv_t is None:
            self._basis_inv_t = np.linalg.inv(self.basis).T
        return self._basis_inv_t

    def mean(self, i: int, total: np.ndarray, n: float) -> np.ndarray:
        """Class ``i``'s mean after ``n`` presses summing to ``total`` (D,); the prior's with none."""
        prior = self.prior_means[i]
        if n <= 0:
            return prior.copy()
        shrink = self.eig / (self.eig + 1.0 / n)  # (D,)
        return prior + self.basis_inv_t @ (shrink * (self.basis.T @ (total / n - prior)))

    def column(self, mean: np.ndarray) -> tuple[np.ndarray, float]:
        """The LDA weight column (D,) and bias of a class mean: ``W^-1 mean`` and ``-mean . W^-1 mean / 2``."""
        w = self.basis @ (self.basis.T @ mean)
        return w, float(-0.5 * mean @ w)

    def copy(self) -> KeyAdaptation:
        return KeyAdaptation(
            self.prior_means,
            self.basis,
            self.eig,
            self.sums.copy(),
            self.counts.copy(),
            self.weight,
            self.min_posterior,
        )
