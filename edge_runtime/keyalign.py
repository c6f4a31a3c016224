"""Band rotation in key-vector space: put every user's keystrokes in one electrode frame (numpy only).

A band worn turned by ``s`` electrode spacings shows each muscle ``s`` electrodes away, so the class means of a
key prior pooled over training users are blurred over the users' rotations, and its between-user covariance is
mostly that blur. Here each training session's class means are rolled, per band, onto a common reference
(``align_sessions``, iterated: the reference is the mean of the rolled sessions), and a new user's calibration
presses onto the prior's means (``estimate_roll``). The roll is a permutation of key-vector coordinates
(``roll_index``), so a profile fitted in the prior's frame is mapped back to the user's own frame by permuting
its weights (``keyproto.fit_profile``): the decoder reads the user's frames as before.

Key vectors are laid out as (windows x bin groups x n_bands x C) (``keyproto.key_vectors``); rolling a band by
``s`` is ``np.roll(frame[band], s)`` along its electrodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roll_index(shifts: Sequence[int], frame_shape: tuple[int, int, int], dim: int) -> np.ndarray:
    """(D,) permutation ``perm`` with ``x[perm]`` = ``x`` with band ``b``'s electrodes rolled by ``shifts[b]``."""
    n_bands, c, _ = frame_shape
    assert len(shifts) == n_bands, f"one shift per band ({n_bands}), got {len(shifts)}"
    assert dim % (n_bands * c) == 0, f"{dim}-dim key vectors do not split into {n_bands} x {c} electrodes"
    idx = np.arange(dim).reshape(-1, n_bands, c)  # (W * G, n_bands, C)
    return np.stack([np.roll(idx[:, b], int(shifts[b]), axis=-1) for b in range(n_bands)], axis=1).ravel()


def inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv


def estimate_roll(
    means: np.ndarray, ref: np.ndarray, weights: np.ndarray, frame_shape: tuple[int, int, int], max_shift: int
) -> np.ndarray:
    """Per band, the roll in ``[-max_shift, max_shift]`` that best matches ``means`` to ``ref``.

    means, ref (K, D) class means of centred key vectors (rows of classes the user lacks: any value, weight 0);
    weights (K,) presses behind each row of ``means``. Score: the weighted dot product of the rolled means with
    the reference (a roll keeps the norm, so this ranks rolls as correlation does); ties: the smaller roll.
    Returns (n_bands,) int.
    """
    n_bands, c, _ = frame_shape
    k, d = means.shape
    assert ref.shape == (k, d) and weights.shape == (k,), "means, ref and weights must describe the same classes"
    u = (means * weights[:, None]).reshape(k, -1, n_bands, c)  # (K, W * G, n_bands, C)
    r = ref.reshape(k, -1, n_bands, c)
    out = np.zeros(n_bands, dtype=np.int64)
    for b in range(n_bands):
        cand = sorted(range(-max_shift, max_shift + 1), key=abs)  # 0 first: ties keep the smaller roll
        scores = [float(np.sum(np.roll(u[:, :, b], s, axis=-1) * r[:, :, b])) for s in cand]
        out[b] = cand[int(np.argmax(scores))]
    return out


def class_means(x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) mean of the rows of each class (zeros where absent) and (K,) counts."""
    means = np.zeros((len(classes), x.shape[1]))
    counts = np.zeros(len(classes))
    for i, c in enumerate(classes):
        sel = y == c
        counts[i] = sel.sum()
        if counts[i]:
            means[i] = x[sel].mean(axis=0)
    return means, counts


def align_sessions(
    vectors: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    classes: np.ndarray,
    frame_shape: tuple[int, int, int],
    max_shift: int,
    iterations: int = 4,
) -> np.ndarray:
    """(S, n_bands) rolls that put each session's (centred) class means onto their common reference.

    The reference starts as the pooled class means and becomes the press-weighted mean of the rolled sessions
    after each pass; the rolls are finally shifted so that each band's median roll is 0 (the frame of a typical
    user, so that a new user's roll stays small).
    """
    stats = [class_means(v, np.asarray(y), classes) for v, y in zip(vectors, labels)]
    perms_of = lambda s: roll_index(s, frame_shape, vectors[0].shape[1])  # noqa: E731
    shifts = np.zeros((len(vectors), frame_shape[0]), dtype=np.int64)
    for _ in range(iterations):
        tot = np.zeros_like(stats[0][0])
        n = np.zeros(len(classes))
        for (m, cnt), s in zip(stats, shifts):
            tot += m[:, perms_of(s)] * cnt[:, None]
            n += cnt
        ref = tot / np.maximum(n, 1)[:, None]
        new = np.stack([estimate_roll(m, ref, cnt, frame_shape, max_shift) for m, cnt in stats])  # raw -> ref
        if np.array_equal(new, shifts):
            break
        shifts = new
    shifts -= np.round(np.median(shifts, axis=0)).astype(np.int64)
    c = frame_shape[1]
    return (shifts + c // 2) % c - c // 2  # back into [-C/2, C/2)


def max_roll(frame_shape: tuple[int, int, int]) -> int:
    """The largest roll searched: a quarter of the band (2 electrodes of 8, 4 of 16), at least 1."""
    return max(1, frame_shape[1] // 4)
