"""Character error rate, split into insertions, deletions and substitutions.

Definitions follow emg2qwerty: CER = Levenshtein distance between the decoded
and the target label strings (keys as typed, backspaces included, uncorrected)
divided by the target length. The breakdown counts the edit operations of one
minimum-cost alignment (ties broken substitution > deletion > insertion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EditCounts:
    insertions: int = 0
    deletions: int = 0
    substitutions: int = 0
    target_len: int = 0

    @property
    def errors(self) -> int:
        return self.insertions + self.deletions + self.substitutions

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.insertions + other.insertions,
            self.deletions + other.deletions,
            self.substitutions + other.substitutions,
            self.target_len + other.target_len,
        )

    def rate(self, count: int) -> float:
        """Percent of the target length (0 for an empty target with no errors)."""
        if self.target_len == 0:
            return 0.0 if count == 0 else 100.0 * count
        return 100.0 * count / self.target_len

    @property
    def cer(self) -> float:
        return self.rate(self.errors)

    def as_dict(self) -> dict[str, float]:
        return {
            "cer": self.cer,
            "ins": self.rate(self.insertions),
            "del": self.rate(self.deletions),
            "sub": self.rate(self.substitutions),
            "errors": float(self.errors),
            "target_len": float(self.target_len),
        }


def edit_counts(prediction: str, target: str) -> EditCounts:
    """Minimum edit distance from ``target`` to ``prediction`` with its operation counts."""
    return align(prediction, target)[0]


def substitution_pairs(prediction: str, target: str) -> list[tuple[str, str]]:
    """``(target char, predicted char)`` of every substitution in the alignment ``edit_counts`` counts.

    >>> substitution_pairs("tesr", "test")
    [('t', 'r')]
    """
    return align(prediction, target)[1]


def align(prediction: str, target: str) -> tuple[EditCounts, list[tuple[str, str]]]:
    """One minimum-cost alignment: its counts and its substitutions (in target order)."""
    n, m = len(target), len(prediction)
    if n == 0 or m == 0:
        return EditCounts(insertions=m, deletions=n, target_len=n), []
    t = np.frombuffer(target.encode("utf-32-le"), dtype=np.uint32)
    p = np.frombuffer(prediction.encode("utf-32-le"), dtype=np.uint32)
    # dist[i, j]: cost of turning target[:i] into prediction[:j]; rows computed vectorised
    # over j except for the insertion recurrence, which is a running minimum.
    dist = np.empty((n + 1, m + 1), dtype=np.int32)
    dist[0] = np.arange(m + 1)
    dist[:, 0] = np.arange(n + 1)
    offsets = np.arange(m + 1, dtype=np.int32)
    for i in range(1, n + 1):
        sub = dist[i - 1, :-1] + (p != t[i - 1])  # (m,)
        dele = dist[i - 1, 1:] + 1  # (m,)
        best = np.minimum(sub, dele)
        row = np.concatenate(([i], best)).astype(np.int32)
        # insertion: row[j] = min(row[j], row[j-1] + 1) == min_k<=j (row[k] + j - k)
        dist[i] = np.minimum.accumulate(row - offsets) + offsets
    counts = EditCounts(target_len=n)
    subs: list[tuple[str, str]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i, j] == dist[i - 1, j - 1] + (p[j - 1] != t[i - 1]):
            if p[j - 1] != t[i - 1]:
                counts.substitutions += 1
                subs.append((target[i - 1], prediction[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and dist[i, j] == dist[i - 1, j] + 1:
            counts.deletions += 1
            i -= 1
        else:
            counts.insertions += 1
            j -= 1
    return counts, subs[::-1]


def cer(prediction: str, target: str) -> float:
    return edit_counts(prediction, target).cer
