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
    means = np.stack([x[y == k].mean(axis=0) for k in range(n_classes)])  # (K, D)
    resid = x - means[y]  # (N, D)
    cov = resid.T @ resid / max(len(x) - n_classes, 1)  # (D, D)
    return means, shrunk(cov, shrinkage)


def shrunk(cov: F64, shrinkage: float) -> F64:
    """``cov`` pulled towards ``trace / D * I`` by ``shrinkage`` in [0, 1] (Ledoit-Wolf style, fixed weight)."""
    d = cov.shape[0]
    return (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)


def lda_weights(means: F64, cov: F64) -> tuple[F64, F64]:
    """Equal-prior linear discriminant of class means and a shared covariance: (weights (D, K), biases (K,))."""
    w = np.asarray(np.linalg.solve(cov, means.T), dtype=np.float64)  # (D, K)
    b = np.asarray(-0.5 * np.sum(means.T * w, axis=0), dtype=np.float64)  # (K,)
    return w, b


def within_between(
    x: F64, y: npt.NDArray[np.int_], group: npt.NDArray[np.int_], means: F64, min_group: int = 5
) -> tuple[F64, F64 | None]:
    """A two-covariance model of grouped data (groups: users or sessions), for speaker-adaptation-style MAP.

    x (N, D) vectors with class y (N,) in ``range(K)`` from group ``group`` (N,); ``means`` (K, D) the pooled
    class means. Returns ``within`` (D, D): the covariance around each (group, class) mean, i.e. what is left
    once a group's own class means are known; and ``between`` (D, D): the covariance of a group's class means
    around the pooled ones (from (group, class) cells with ``min_group``+ members, each cell's sampling noise
    ``within / n`` subtracted, eigenvalues clipped to stay positive definite), or None with no such cell.
    """
    assert x.ndim == 2 and len(x) == len(y) == len(group), "x (N, D), y (N,) and group (N,) expected"
    d = x.shape[1]
    within = np.zeros((d, d))
    dof = 0
    cells: list[tuple[np.ndarray, int]] = []
    for g in np.unique(group):
        in_g = group == g
        for k in np.unique(y[in_g]):
            sel = in_g & (y == k)
            n = int(sel.sum())
            m = x[sel].mean(axis=0)
            r = x[sel] - m
            within += r.T @ r
            dof += n - 1
            if n >= min_group:
                cells.append((m - means[k], n))
    within /= max(dof, 1)
    if not cells:
        return within, None
    dev = np.stack([c for c, _ in cells])  # (cells, D)
    noise = float(np.mean([1.0 / n for _, n in cells])) * within
    between = dev.T @ dev / len(cells) - noise
    ev, vec = np.linalg.eigh((between + between.T) / 2)
    floor = max(float(ev.max()), 1e-12) * 1e-6
    between = (vec * np.clip(ev, floor, None)) @ vec.T
    return within, np.asarray(between, dtype=np.float64)
