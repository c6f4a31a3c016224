"""Typing prompts and language-model text, shipped as package data.

Two disjoint, public-domain English texts live in ``emgkey/resources``
(see ``docs/corpus.md`` for sources, licence and how they were built):

- ``prompts.txt``: 3,000 short sentences shown to simulated users as typing
  prompts. A prompt's *id* is its 0-based line number, so session files can
  refer to a prompt by id; ``corpus_fingerprint()`` names the file version the
  ids belong to.
- ``lm_text.txt``: ~26k further sentences for a character language model. No
  prompt occurs in it, not even inside a longer line, so a decoder's LM never
  learned the text it is evaluated on.

Every line of both files is already canonical for ``emgkey.charset``:
``clean_str(line) == line``.

Randomness here is derived from SHA-256 of (seed, ...) rather than from a
numpy generator, so prompt orders and held-out splits are identical across
numpy and Python versions and platforms; only ``PromptSampler.sample`` takes a
caller's generator, for callers that already thread one through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PROMPTS_RESOURCE = "prompts.txt"
LM_TEXT_RESOURCE = "lm_text.txt"
_PACKAGE = "emgkey.resources"


def _resource(name: str) -> Traversable:
    return resources.files(_PACKAGE).joinpath(name)


@lru_cache(maxsize=1)
def load_prompts() -> tuple[str, ...]:
    """All prompts, in id order (line order of ``prompts.txt``)."""
    text = _resource(PROMPTS_RESOURCE).read_text(encoding="utf-8")
    return tuple(text.splitlines())


def load_lm_text() -> Iterator[str]:
    """Stream the LM text one sentence (line) at a time, without the newline.

    A generator rather than a list because the file is ~3 MB and most callers
    only need one pass (counting n-grams, packing training windows).
    """
    with _resource(LM_TEXT_RESOURCE).open("r", encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


@lru_cache(maxsize=1)
def corpus_fingerprint() -> str:
    """SHA-256 of ``prompts.txt``: record it next to prompt ids so they stay meaningful if the corpus changes."""
    return hashlib.sha256(_resource(PROMPTS_RESOURCE).read_bytes()).hexdigest()


def _hash_rank(seed: int, salt: str, index: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{salt}\0{index}".encode()).digest()


def _seeded_order(ids: Sequence[int], seed: int, salt: str) -> tuple[int, ...]:
    """A permutation of ``ids`` that depends only on (seed, salt, id), never on library versions."""
    return tuple(sorted(ids, key=lambda i: _hash_rank(seed, salt, i)))


@dataclass(frozen=True)
class PromptSplit:
    """Prompt ids divided into a training pool and a held-out pool (disjoint, both sorted)."""

    train_ids: tuple[int, ...]
    heldout_ids: tuple[int, ...]

    def sampler(self, which: str, seed: int = 0) -> PromptSampler:
        """A sampler over one side: ``which`` is ``"train"`` or ``"heldout"``."""
        if which == "train":
            return PromptSampler(seed, ids=self.train_ids)
        if which == "heldout":
            return PromptSampler(seed, ids=self.heldout_ids)
        raise ValueError(f"which must be 'train' or 'heldout', not {which!r}")


def split_prompts(heldout_fraction: float, seed: int = 0) -> PromptSplit:
    """Split the prompts so evaluation users type sentences no training user typed.

    Exactly ``round(heldout_fraction * n)`` prompts are held out, chosen by a
    seeded hash order; the same (fraction, seed) always gives the same split.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    n = len(load_prompts())
    order = _seeded_order(range(n), seed, "split")
    k = round(heldout_fraction * n)
    return PromptSplit(train_ids=tuple(sorted(order[k:])), heldout_ids=tuple(sorted(order[:k])))


@dataclass
class PromptSampler:
    """Deterministic prompt schedule: ``prompt(i)`` is the i-th prompt a simulated user types.

    The schedule walks a seeded permutation of the allowed ids, then a fresh
    permutation for the next pass, so every prompt is used once per pass and
    ``prompt(i)`` needs no state: session ``i`` can be regenerated alone.

    Args:
        seed: selects the schedule; different users should use different seeds.
        ids: prompt ids to draw from (default: all); e.g. ``split_prompts(...).train_ids``.
    """

    seed: int = 0
    ids: Sequence[int] | None = None
    _ids: tuple[int, ...] = field(init=False, repr=False)
    _orders: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        n = len(load_prompts())
        ids = tuple(range(n)) if self.ids is None else tuple(int(i) for i in self.ids)
        if not ids:
            raise ValueError("PromptSampler needs at least one prompt id")
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"prompt ids out of range 0..{n - 1}: {bad[:5]}")
        if len(set(ids)) != len(ids):
            raise ValueError("prompt ids must be distinct")
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def _pass_order(self, pass_no: int) -> tuple[int, ...]:
        order = self._orders.get(pass_no)
        if order is None:
            if len(self._orders) >= 8:  # bounded: a long run walks passes in order
                self._orders.clear()
            order = self._orders[pass_no] = _seeded_order(self._ids, self.seed, f"pass{pass_no}")
        return order

    def prompt_id(self, i: int) -> int:
        """Corpus id of the i-th scheduled prompt (``i >= 0``; wraps into later passes)."""
        if i < 0:
            raise IndexError(f"schedule index must be >= 0, got {i}")
        pass_no, pos = divmod(i, len(self._ids))
        return self._pass_order(pass_no)[pos]

    def prompt(self, i: int) -> str:
        """Text of the i-th scheduled prompt."""
        return load_prompts()[self.prompt_id(i)]

    def sample_ids(self, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` corpus ids drawn with the caller's generator, without replacement while ``n <= len(self)``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ids = np.asarray(self._ids)
        full, rest = divmod(n, len(ids))
        picks = [rng.permutation(ids) for _ in range(full)]
        picks.append(rng.choice(ids, size=rest, replace=False))
        return [int(i) for i in np.concatenate(picks)]

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        """``n`` prompt texts drawn with the caller's generator (see ``sample_ids``)."""
        prompts = load_prompts()
        return [prompts[i] for i in self.sample_ids(rng, n)]
