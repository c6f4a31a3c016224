"""Shrinkage linear discriminant analysis with equal priors (numpy only).

Shared by the simulator's realism report (``firmware_sim.report``: key identification from keystroke
features) and the device's key-prototype rescoring (``edge_runtime.keyproto``), so both mean the same thing
by "an LDA of keystrokes".
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def lda_stats(x: F64, y: npt.NDArray[np.int_], n_classes: int, shrinkage: float) -> tuple[F64, F64]:
    """Class means (K, D) and the shrunk pooled within-class covariance (D, D) of a shrinkage LDA.

    x (N, D), y (N,) in ``range(n_classes)``, every class present; ``shrinkage`` in [0, 1] pulls the
    covariance towards ``trace / D * I`` (Ledoit-Wolf style, fixed weight).
    """
    assert x.ndim == 2 and len(x) == len(y), f"x (N, D) and y (N,) expected, got {x.shape} and {y.shape}"
    assert 0.0 <= shrinkage <= 1.0, f"shrinkage {shrinkage} outside [0, 1]"
    d = x.shape[1]
    means = np.stack([x[y == k].mean(axis=0) for k in range(n_classes)])  # (K, D)
    resid = x - means[y]  # (N, D)
    cov = resid.T @ resid / max(len(x) - n_classes, 1)  # (D, D)
    return means, (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)


def lda_weights(means: F64, cov: F64) -> tuple[F64, F64]:
    """Equal-prior linear discriminant of class means and a shared covariance: (weights (D, K), biases (K,))."""
    w = np.asarray(np.linalg.solve(cov, means.T), dtype=np.float64)  # (D, K)
    b = np.asarray(-0.5 * np.sum(means.T * w, axis=0), dtype=np.float64)  # (K,)
    return w, b
