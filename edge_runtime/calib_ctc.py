"""CTC scoring in numpy: how well emissions explain a prompt, without torch.

Calibration has no keylogger: the prompted text is the target, and the user's typos
(a wrong key, then ⌫ and the right one) are keys the prompt does not contain. A
greedy CER against the prompt counts every such key as an error and is flat at 100%
for a weak generic model, so candidates are ranked by the **CTC log-likelihood of
the prompt** instead: the probability, summed over every alignment, that the
emissions spell the prompt. Frames of a typo can only be explained as blanks (or as
the neighbouring prompt key), which costs every candidate alike, so the ranking
tolerates typos; and the likelihood moves smoothly even when greedy decoding still
emits nothing.

``ctc_log_likelihood_batch`` runs the standard forward recursion (Graves et al.
2006) in log space over the extended label sequence ``blank, y1, blank, y2, ...,
blank``, for many (emissions, target) pairs at once: padded to ``(N, T_max, S_max)``
and looped over time only, so scoring ten prompt segments costs one pass of a few
hundred small array operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emgkey import charset
from emgkey.decoding import greedy_decode
from emgkey.metrics import EditCounts, edit_counts

NEG_INF = -np.inf


def _extended(targets: np.ndarray, blank: int) -> np.ndarray:
    """(L,) labels -> (2L + 1,) ``blank, y1, blank, ..., yL, blank``."""
    ext = np.full(2 * len(targets) + 1, blank, dtype=np.int64)
    ext[1::2] = targets
    return ext


def ctc_log_likelihood_batch(items: Sequence[tuple[np.ndarray, np.ndarray]], blank: int = charset.BLANK) -> np.ndarray:
    """``log p(target | emissions)`` for each ``(log_probs (T, K), target (L,))`` pair -> (N,) float64.

    ``log_probs`` are per-frame log-probabilities (each row a log-softmax). A target that cannot fit in
    its frames (``T`` < ``L`` plus the repeats that need a blank between them) has likelihood ``-inf``.
    An empty target is explained only by blanks.
    """
    n = len(items)
    if n == 0:
        return np.zeros(0)
    exts = [_extended(np.asarray(y, dtype=np.int64), blank) for _, y in items]
    t_len = np.array([len(lp) for lp, _ in items])
    s_len = np.array([len(e) for e in exts])
    t_max, s_max = int(t_len.max()), int(s_len.max())
    # Emission of each extended state at each frame: (N, T_max, S_max); padding is -inf.
    emit = np.full((n, t_max, s_max), NEG_INF)
    # Whether state s may be entered from s - 2 (skip the blank between two different labels).
    skip = np.zeros((n, s_max), dtype=bool)
    for i, ((lp, _), ext) in enumerate(zip(items, exts)):
        lp = np.asarray(lp, dtype=np.float64)
        assert lp.ndim == 2, f"log_probs must be (T, K), got {lp.shape}"
        emit[i, : len(lp), : len(ext)] = lp[:, ext]
        skip[i, 2 : len(ext)] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    alpha = np.full((n, s_max), NEG_INF)
    alpha[:, 0] = emit[:, 0, 0]
    if s_max > 1:
        alpha[:, 1] = np.where(s_len > 1, emit[:, 0, 1], NEG_INF)
    final = np.full((n, s_max), NEG_INF)
    done = t_len == 1
    final[done] = alpha[done]
    with np.errstate(invalid="ignore"):  # -inf - -inf inside logaddexp of two impossible paths
        for t in range(1, t_max):
            step = np.full_like(alpha, NEG_INF)  # from s - 1
            step[:, 1:] = alpha[:, :-1]
            jump = np.full_like(alpha, NEG_INF)  # from s - 2, where allowed
            jump[:, 2:] = alpha[:, :-2]
            jump[~skip] = NEG_INF
            alpha = np.logaddexp(np.logaddexp(alpha, step), jump) + emit[:, t]
            ends = t_len == t + 1
            if ends.any():
                final[ends] = alpha[ends]
    rows = np.arange(n)
    last = final[rows, s_len - 1]
    before = np.where(s_len > 1, final[rows, np.maximum(s_len - 2, 0)], NEG_INF)
    out = np.logaddexp(last, before)
    return np.where(np.isnan(out), NEG_INF, out)


def ctc_log_likelihood(log_probs: np.ndarray, target: np.ndarray, blank: int = charset.BLANK) -> float:
    """One pair; see ``ctc_log_likelihood_batch``."""
    return float(ctc_log_likelihood_batch([(log_probs, target)], blank)[0])


def nll_per_char(
    items: Sequence[tuple[np.ndarray, np.ndarray]], blank: int = charset.BLANK, impossible: float = 100.0
) -> float:
    """Total CTC negative log-likelihood over total target characters (nats per key).

    A segment the emissions cannot explain at all (likelihood ``-inf``: fewer frames than its keys need)
    counts ``impossible`` nats per key instead of swamping the sum.
    """
    if not items:
        return float("nan")
    ll = ctc_log_likelihood_batch(items, blank)
    lengths = np.array([max(len(y), 1) for _, y in items], dtype=np.float64)
    nll = np.where(np.isfinite(ll), -ll, impossible * lengths)
    return float(nll.sum() / lengths.sum())


def greedy_edit_counts(items: Sequence[tuple[np.ndarray, np.ndarray]]) -> EditCounts:
    """Greedy-decoded edit counts against the targets, summed over items (CER = ``.cer``)."""
    total = EditCounts()
    for lp, y in items:
        pred = charset.labels_to_str(greedy_decode(np.asarray(lp)))
        total = total + edit_counts(pred, charset.labels_to_str([int(v) for v in y]))
    return total
