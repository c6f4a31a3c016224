"""Character n-gram language model: build an ARPA file, and query it with or without KenLM.

Building (``build_ngram_model`` / ``emgkey lm build``): KenLM's ``lmplz`` cannot be
installed here, so this module counts character n-grams itself (numpy, n-grams
packed into int64 keys) and estimates an **interpolated modified Kneser-Ney** model
(Chen & Goodman 1998), the smoothing ``lmplz`` uses:

- highest order: raw counts; lower orders: continuation counts ``N1+(. g)`` (how many
  distinct characters precede ``g``), except n-grams that start with ``<s>``, which
  cannot be extended to the left and keep their raw counts;
- three discounts per order, ``D1, D2, D3+``, from the counts of counts
  (``Y = n1 / (n1 + 2 n2)``, ``Dk = k - (k + 1) Y n_{k+1} / n_k``); when a tiny
  corpus makes the formula degenerate, fixed discounts (0.5, 1.0, 1.5) are used;
- ``p(w | h) = (a(hw) - D(a(hw))) / sum_w' a(hw') + gamma(h) p(w | h')`` with
  ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / sum_w' a(hw')``, and unigrams
  interpolated with the uniform distribution over the predictable vocabulary
  (every token but ``<s>``), which is what gives ``<unk>`` its probability.

Optional count pruning (``prune[n-1] = k`` drops n-grams of order ``n`` seen at most
``k`` times; thresholds must not decrease with the order, so every kept n-gram keeps
its prefixes and suffixes, as ARPA readers require) recomputes each context's backoff
weight so that every conditional distribution still sums to one.

Tokens: one per character; the space is written ``<space>`` because ARPA separates
tokens with whitespace. Sentences are the corpus lines, wrapped in ``<s>`` ... ``</s>``.
Log probabilities are base 10, as in ARPA and KenLM.

Querying (``load_lm``): ``kenlm.Model`` when the ``kenlm`` package is installed
(``backend="kenlm"``), else ``ArpaLM``, a pure numpy/python reader of the same file
with the standard backoff rule; the two give the same scores
(``tests/test_runtime_lm.py`` checks when kenlm is present). Both expose the small
``CharLM`` interface the beam decoder uses: ``begin_state()``, ``score(state, token)``,
``end_score(state)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emgkey.errors import ConfigError, EmgkeyError

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
SPACE_TOKEN = "<space>"
LOG10_ZERO = -99.0  # ARPA's "impossible" (used for <s>, which is never predicted)
_SPECIAL = (UNK, BOS, EOS)  # token ids 0, 1, 2
_FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


class LMError(EmgkeyError):
    """An LM file cannot be read, or a backend is unavailable."""


def char_to_token(c: str) -> str:
    """The ARPA token of one character (only the space needs escaping)."""
    assert len(c) == 1, f"one character per token, got {c!r}"
    return SPACE_TOKEN if c == " " else c


def token_to_char(t: str) -> str:
    return " " if t == SPACE_TOKEN else t


# ---------------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMBuildConfig:
    order: int = 6
    # prune[n-1] = k: drop n-grams of order n seen <= k times (0 keeps all). Non-decreasing.
    prune: tuple[int, ...] = ()
    # Characters to include in the vocabulary even if the corpus lacks them (e.g. every
    # key of the charset), so they get a smoothed probability of their own, not <unk>'s.
    extra_chars: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.order <= 9:
            raise ConfigError(f"LM order must be in 1..9, got {self.order}")
        if len(self.prune) > self.order:
            raise ConfigError(f"{len(self.prune)} prune thresholds for an order-{self.order} model")
        if any(p < 0 for p in self.prune) or list(self.prune) != sorted(self.prune):
            raise ConfigError(f"prune thresholds must be >= 0 and non-decreasing with the order, got {self.prune}")
        if self.prune and self.prune[0] != 0:
            raise ConfigError("unigrams are never pruned: prune[0] must be 0")

    def threshold(self, n: int) -> int:
        return self.prune[n - 1] if n - 1 < len(self.prune) else (self.prune[-1] if self.prune else 0)


@dataclass
class NGramTables:
    """An ARPA model in arrays: for order n, n-gram keys (sorted, base-``len(vocab)`` digits,
    first token most significant), log10 probabilities and log10 backoff weights."""

    vocab: list[str]  # token id -> token string; ids 0, 1, 2 are <unk>, <s>, </s>
    keys: list[np.ndarray]  # [n-1]: (K_n,) int64, sorted
    logp: list[np.ndarray]  # [n-1]: (K_n,) float64 log10 p(w | h)
    backoff: list[np.ndarray]  # [n-1]: (K_n,) float64 log10 b(h); 0 where none
    counts_of_counts: dict[int, list[int]] = field(default_factory=dict)  # diagnostics
    discounts: dict[int, tuple[float, float, float]] = field(default_factory=dict)

    @property
    def order(self) -> int:
        return len(self.keys)

    @property
    def base(self) -> int:
        return len(self.vocab)

    def decode_key(self, key: int, n: int) -> list[int]:
        ids = []
        for _ in range(n):
            key, d = divmod(key, self.base)
            ids.append(d)
        return ids[::-1]


def _encode(sentences: Iterable[str], vocab_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """All sentences as one id array with <s>/</s> around each, and each position's sentence number."""
    ids: list[int] = []
    sent: list[int] = []
    for i, s in enumerate(sentences):
        row = [1, *(vocab_index[char_to_token(c)] for c in s), 2]
        ids.extend(row)
        sent.extend([i] * len(row))
    return np.asarray(ids, dtype=np.int64), np.asarray(sent, dtype=np.int64)


def _ngram_keys(ids: np.ndarray, sent: np.ndarray, n: int, base: int) -> np.ndarray:
    """Keys of every n-gram occurrence that stays inside one sentence (L - n + 1 at most)."""
    if len(ids) < n:
        return np.zeros(0, dtype=np.int64)
    valid = sent[: len(ids) - n + 1] == sent[n - 1 :]
    key = np.zeros(len(ids) - n + 1, dtype=np.int64)
    for j in range(n):
        key = key * base + ids[j : len(ids) - n + 1 + j]
    return key[valid]


def _discounts(adjusted: np.ndarray) -> tuple[tuple[float, float, float], list[int]]:
    coc = [int(np.sum(adjusted == k)) for k in (1, 2, 3, 4)]
    n1, n2, n3, n4 = coc
    if min(coc) == 0:
        return _FALLBACK_DISCOUNTS, coc
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < dk <= k for k, dk in zip((1, 2, 3), d)):
        return _FALLBACK_DISCOUNTS, coc
    return d, coc


def _group(ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted context keys -> (unique contexts, start index of each group, inverse index)."""
    uniq, start, inverse = np.unique(ctx, return_index=True, return_inverse=True)
    return uniq, start, inverse


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query key in sorted ``keys`` (all must be present)."""
    idx = np.searchsorted(keys, query)
    assert np.all(idx < len(keys)) and np.all(keys[np.minimum(idx, len(keys) - 1)] == query), (
        "an n-gram's lower-order suffix or prefix is missing: pruning thresholds must not decrease with the order"
    )
    return idx


def build_ngram_model(sentences: Iterable[str], config: LMBuildConfig | None = None) -> NGramTables:
    """Estimate an interpolated modified Kneser-Ney character model (see the module docstring)."""
    cfg = config or LMBuildConfig()
    sentences = list(sentences)
    chars = sorted({char_to_token(c) for s in sentences for c in s} | {char_to_token(c) for c in cfg.extra_chars})
    for special in _SPECIAL:
        if special in chars:
            raise ConfigError(f"the corpus contains the reserved token {special!r}")
    vocab = [*_SPECIAL, *chars]
    base = len(vocab)
    if base ** (cfg.order + 1) >= 2**62:
        raise ConfigError(f"vocabulary of {base} tokens is too large to pack order-{cfg.order} n-grams in int64")
    ids, sent = _encode(sentences, {t: i for i, t in enumerate(vocab)})

    # Raw counts per order, sorted unique keys.
    raw_keys: list[np.ndarray] = []
    raw_counts: list[np.ndarray] = []
    for n in range(1, cfg.order + 1):
        k, c = np.unique(_ngram_keys(ids, sent, n, base), return_counts=True)
        raw_keys.append(k)
        raw_counts.append(c.astype(np.int64))
    # The unigram distribution predicts every token but <s>, including unseen ones (<unk>, extra chars).
    uni_seen = dict(zip(raw_keys[0].tolist(), raw_counts[0].tolist()))
    raw_keys[0] = np.arange(base, dtype=np.int64)
    raw_counts[0] = np.array([uni_seen.get(i, 0) for i in range(base)], dtype=np.int64)

    # Adjusted counts: raw at the top order and for <s>-initial n-grams, continuation counts elsewhere.
    adjusted: list[np.ndarray] = []
    for n in range(1, cfg.order + 1):
        keys, counts = raw_keys[n - 1], raw_counts[n - 1]
        if n == cfg.order:
            adjusted.append(counts.copy())
            continue
        suf, ext = np.unique(raw_keys[n] % (base**n), return_counts=True)  # distinct left extensions
        a = np.zeros(len(keys), dtype=np.int64)
        pos = np.searchsorted(suf, keys)
        found = (pos < len(suf)) & (suf[np.minimum(pos, len(suf) - 1)] == keys)
        a[found] = ext[pos[found]]
        starts_bos = (keys // (base ** (n - 1))) == 1
        a[starts_bos] = counts[starts_bos]
        adjusted.append(a)

    # Interpolated probabilities of every observed n-gram, order by order, and gamma per context.
    predictable = np.ones(base, dtype=bool)
    predictable[1] = False  # <s> is never predicted
    probs: list[np.ndarray] = []
    gammas: list[tuple[np.ndarray, np.ndarray]] = []  # per order n >= 2: (context keys, gamma)
    tables = NGramTables(vocab=vocab, keys=[], logp=[], backoff=[])
    for n in range(1, cfg.order + 1):
        keys, a = raw_keys[n - 1], adjusted[n - 1]
        if n == 1:
            a = np.where(predictable, a, 0)
        (d1, d2, d3), coc = _discounts(a[a > 0])
        tables.discounts[n], tables.counts_of_counts[n] = (d1, d2, d3), coc
        disc = np.select([a == 0, a == 1, a == 2], [0.0, d1, d2], default=d3)  # (K,)
        uctx, start, inv = _group(keys // base)  # unigrams: one group, the empty context
        denom = np.add.reduceat(a.astype(np.float64), start)  # (G,)
        gamma = np.divide(np.add.reduceat(disc, start), denom, out=np.ones_like(denom), where=denom > 0)
        u = np.divide(a - disc, denom[inv], out=np.zeros(len(keys)), where=denom[inv] > 0)
        if n == 1:
            lower = np.where(predictable, 1.0 / predictable.sum(), 0.0)
        else:
            lower = probs[n - 2][_lookup(raw_keys[n - 2], keys % (base ** (n - 1)))]
        prob = u + gamma[inv] * lower
        probs.append(np.where(predictable, prob, 0.0) if n == 1 else prob)
        if n >= 2:
            gammas.append((uctx, gamma))

    # Count pruning (orders >= 2); non-decreasing thresholds keep the model closed under sub-n-grams.
    keep = [np.ones(base, dtype=bool)] + [raw_counts[n - 1] > cfg.threshold(n) for n in range(2, cfg.order + 1)]
    pruned = any(not k.all() for k in keep)
    for n in range(1, cfg.order + 1):
        p = probs[n - 1][keep[n - 1]]
        tables.keys.append(raw_keys[n - 1][keep[n - 1]])
        tables.logp.append(np.where(p > 0, np.log10(np.maximum(p, 1e-300)), LOG10_ZERO))
        tables.backoff.append(np.zeros(len(p)))
    for n in range(2, cfg.order + 1):
        keys = tables.keys[n - 1]
        if not pruned:
            uctx, gamma = gammas[n - 2]
            bo = gamma
        else:
            # What mass the kept extensions of h leave, over what the lower order gives the same words:
            # renormalises every p(. | h) after pruning (equals gamma(h) when nothing was pruned).
            uctx, start, _ = _group(keys // base)
            p_here = 10.0 ** tables.logp[n - 1]
            p_lower = 10.0 ** tables.logp[n - 2][_lookup(tables.keys[n - 2], keys % (base ** (n - 1)))]
            left = np.clip(1.0 - np.add.reduceat(p_here, start), 1e-12, None)
            left_lower = np.clip(1.0 - np.add.reduceat(p_lower, start), 1e-12, None)
            bo = left / left_lower
        if len(uctx):
            tables.backoff[n - 2][_lookup(tables.keys[n - 2], uctx)] = np.log10(bo)
    return tables


def write_arpa(tables: NGramTables, path: str | Path, header: Sequence[str] = ()) -> Path:
    """Write ARPA text. Lines before ``\\data\\`` are free comments (KenLM and ``ArpaLM`` skip them)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in header:
            f.write(f"# {line}\n")
        f.write("\n\\data\\\n")
        for n in range(1, tables.order + 1):
            f.write(f"ngram {n}={len(tables.keys[n - 1])}\n")
        vocab = tables.vocab
        for n in range(1, tables.order + 1):
            f.write(f"\n\\{n}-grams:\n")
            keys, logp, bo = tables.keys[n - 1], tables.logp[n - 1], tables.backoff[n - 1]
            digits = np.stack([(keys // tables.base**j) % tables.base for j in range(n - 1, -1, -1)], axis=1)  # (K, n)
            has_bo = n < tables.order
            lines = []
            for row, lp, b in zip(digits.tolist(), logp.tolist(), bo.tolist()):
                words = " ".join(vocab[i] for i in row)
                lines.append(f"{lp:.7g}\t{words}\t{b:.7g}\n" if has_bo else f"{lp:.7g}\t{words}\n")
            f.writelines(lines)
        f.write("\n\\end\\\n")
    tmp.replace(path)
    return path


def build_arpa(
    out: str | Path, sentences: Iterable[str] | None = None, config: LMBuildConfig | None = None
) -> NGramTables:
    """Build from ``sentences`` (default: ``emgkey.corpus.load_lm_text()``) and write ``out``."""
    from emgkey.corpus import load_lm_text

    cfg = config or LMBuildConfig()
    tables = build_ngram_model(load_lm_text() if sentences is None else sentences, cfg)
    header = [
        "emgkey character n-gram LM: interpolated modified Kneser-Ney",
        f"order={cfg.order} prune={list(cfg.prune)} tokens=characters, space written {SPACE_TOKEN}",
        "discounts " + " ".join(f"{n}:{','.join(f'{d:.4f}' for d in ds)}" for n, ds in tables.discounts.items()),
    ]
    write_arpa(tables, out, header)
    return tables


# ---------------------------------------------------------------------------------------------------------------------
# Querying
# ---------------------------------------------------------------------------------------------------------------------


class CharLM(Protocol):
    """What the beam decoder needs from an LM. States are opaque and hashable; scores are log10."""

    order: int

    def begin_state(self) -> Hashable:
        """The context after ``<s>``."""
        ...

    def score(self, state: Hashable, token: str) -> tuple[float, Hashable]:
        """log10 p(token | state) and the state after it. Unknown tokens score as ``<unk>``."""
        ...

    def end_score(self, state: Hashable) -> float:
        """log10 p(</s> | state)."""
        ...

    def has_token(self, token: str) -> bool: ...


def read_arpa(path: str | Path) -> NGramTables:
    """Parse an ARPA file (any producer: this module, KenLM, SRILM) into sorted arrays."""
    path = Path(path)
    if not path.is_file():
        raise LMError(f"{path}: no such LM file")
    with open(path, encoding="utf-8") as f:
        lines = iter(f)
        for line in lines:
            if line.strip() == "\\data\\":
                break
        else:
            raise LMError(f"{path}: no \\data\\ section: not an ARPA file")
        sizes: dict[int, int] = {}
        for line in lines:
            s = line.strip()
            if not s:
                if sizes:
                    break
                continue
            if not s.startswith("ngram "):
                raise LMError(f"{path}: unexpected line in \\data\\: {s!r}")
            order_s, count_s = s[6:].split("=")
            sizes[int(order_s)] = int(count_s)
        order = max(sizes) if sizes else 0
        if order < 1 or sorted(sizes) != list(range(1, order + 1)):
            raise LMError(f"{path}: bad n-gram counts {sizes}")
        # Each section is written straight into preallocated arrays (sizes come from \\data\\), so a
        # large model never exists as Python lists: peak memory stays near the arrays' own size.
        tables: NGramTables | None = None
        index: dict[str, int] = {}
        base = 0
        for n in range(1, order + 1):
            header = next((x.strip() for x in lines if x.strip()), "end of file")
            if header != f"\\{n}-grams:":
                raise LMError(f"{path}: expected \\{n}-grams:, got {header!r}")
            k = sizes[n]
            keys = np.zeros(k, dtype=np.int64)
            logp = np.zeros(k, dtype=np.float64)
            backoff = np.zeros(k, dtype=np.float64)
            words: list[str] = []
            for i in range(k):
                row = next(lines, None)
                if row is None:
                    raise LMError(f"{path}: truncated: fewer {n}-grams than the \\data\\ section says ({k})")
                parts = row.split()
                if len(parts) not in (n + 1, n + 2):
                    raise LMError(f"{path}: malformed {n}-gram line {parts!r}")
                logp[i] = float(parts[0])
                if len(parts) == n + 2:
                    backoff[i] = float(parts[n + 1])
                if n == 1:
                    words.append(parts[1])
                    continue
                key = 0
                try:
                    for w in parts[1 : n + 1]:
                        key = key * base + index[w]
                except KeyError as exc:
                    raise LMError(f"{path}: {n}-gram uses token {exc} missing from the unigrams") from None
                keys[i] = key
            if n == 1:
                if UNK not in words:  # SRILM-style files may lack <unk>; give it the floor
                    words.append(UNK)
                    logp, backoff = np.append(logp, LOG10_ZERO), np.append(backoff, 0.0)
                for special in (BOS, EOS):
                    if special not in words:
                        raise LMError(f"{path}: unigram {special} missing")
                vocab = [*_SPECIAL, *sorted(t for t in words if t not in _SPECIAL)]
                index = {t: i for i, t in enumerate(vocab)}
                base = len(vocab)
                if base**order >= 2**62:
                    raise LMError(f"{path}: {base} tokens at order {order} do not fit this reader's int64 keys")
                keys = np.array([index[w] for w in words], dtype=np.int64)
                tables = NGramTables(vocab=vocab, keys=[], logp=[], backoff=[])
            assert tables is not None
            order_idx = np.argsort(keys, kind="stable")
            tables.keys.append(keys[order_idx])
            tables.logp.append(logp[order_idx])
            tables.backoff.append(backoff[order_idx])
    assert tables is not None
    return tables


class ArpaLM:
    """Pure numpy/python backoff queries over an ARPA model (the fallback for ``kenlm``).

    ``p(w | h)``: the longest stored n-gram ``h_k w`` (``h_k`` the last ``k`` tokens of
    ``h``) gives ``log p``, plus the backoffs of every longer stored context it skipped
    over -- the standard ARPA rule, as KenLM computes it.

    A beam decoder asks for many words after the same few contexts, so this computes a
    context's whole distribution at once: the n-grams ``h_k w`` of one context are one
    contiguous run of the sorted keys (``key = h_k * base + w``), found with two binary
    searches per order, and written into a vector from the shortest context up (a longer
    match overrides, and every skipped context adds its backoff to the words it does not
    cover). Vectors are kept in a bounded cache. A state is the tuple of the last
    ``order - 1`` token ids.
    """

    def __init__(self, tables: NGramTables, cache_size: int = 50_000) -> None:
        self.tables = tables
        self.order = tables.order
        self._index = {t: i for i, t in enumerate(tables.vocab)}
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self._cache_size = cache_size

    @classmethod
    def from_file(cls, path: str | Path) -> ArpaLM:
        return cls(read_arpa(path))

    @property
    def vocab(self) -> list[str]:
        return self.tables.vocab

    def token_id(self, token: str) -> int:
        return self._index.get(token, 0)

    def has_token(self, token: str) -> bool:
        return token in self._index and token not in _SPECIAL

    def begin_state(self) -> tuple[int, ...]:
        return (1,) if self.order > 1 else ()

    def null_state(self) -> tuple[int, ...]:
        return ()

    def _row(self, n: int, key: int) -> int:
        keys = self.tables.keys[n - 1]
        pos = int(keys.searchsorted(key))
        return pos if pos < len(keys) and int(keys[pos]) == key else -1

    def distribution(self, state: tuple[int, ...]) -> np.ndarray:
        """log10 p(w | state) for every token id w, (V,) float64 (cached)."""
        dist = self._cache.get(state)
        if dist is not None:
            return dist
        t, base = self.tables, self.tables.base
        dist = t.logp[0].copy()  # unigrams: every token id has one, in id order
        ctx_key = 0
        for k in range(1, len(state) + 1):  # context h_k = the last k tokens
            ctx_key = ctx_key + state[len(state) - k] * base ** (k - 1)
            keys = t.keys[k]  # (k+1)-grams
            lo = int(keys.searchsorted(ctx_key * base))
            hi = int(keys.searchsorted((ctx_key + 1) * base))
            crow = self._row(k, ctx_key)
            bo = float(t.backoff[k - 1][crow]) if crow >= 0 else 0.0  # a context never seen backs off for free
            found = np.zeros(base, dtype=bool)
            if hi > lo:
                words = (keys[lo:hi] - ctx_key * base).astype(np.intp)
                found[words] = True
                dist = np.where(found, 0.0, dist + bo)
                dist[words] = t.logp[k][lo:hi]
            else:
                dist = dist + bo
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[state] = dist
        return dist

    def _next_state(self, state: tuple[int, ...], w: int) -> tuple[int, ...]:
        return (*state, w)[-(self.order - 1) :] if self.order > 1 else ()

    def score(self, state: Hashable, token: str) -> tuple[float, Hashable]:
        assert isinstance(state, tuple), "ArpaLM states are tuples of token ids"
        w = self._index.get(token, 0)
        return float(self.distribution(state)[w]), self._next_state(state, w)

    def end_score(self, state: Hashable) -> float:
        return self.score(state, EOS)[0]

    def sentence_score(self, tokens: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """log10 of a whole token sequence, like ``kenlm.Model.score``."""
        state: Hashable = self.begin_state() if bos else self.null_state()
        total = 0.0
        for t in [*tokens, EOS] if eos else tokens:
            lp, state = self.score(state, t)
            total += lp
        return total


class KenLMBackend:
    """``kenlm.Model`` behind the ``CharLM`` interface (states are ``kenlm.State``, hashable)."""

    def __init__(self, path: str | Path) -> None:
        try:
            import kenlm  # optional: a C++ extension built from source on the device
        except ImportError as exc:
            raise LMError("the kenlm package is not installed; use backend='python' (ArpaLM)") from exc
        self._kenlm = kenlm
        try:
            self.model = kenlm.Model(str(path))
        except (OSError, RuntimeError) as exc:
            raise LMError(f"{path}: kenlm could not load it: {exc}") from exc
        self.order = int(self.model.order)
        self._cache: dict[tuple[Any, str], tuple[float, Any]] = {}

    def has_token(self, token: str) -> bool:
        return token in self.model and token not in _SPECIAL

    def begin_state(self) -> Hashable:
        s = self._kenlm.State()
        self.model.BeginSentenceWrite(s)
        return s

    def null_state(self) -> Hashable:
        s = self._kenlm.State()
        self.model.NullContextWrite(s)
        return s

    def score(self, state: Hashable, token: str) -> tuple[float, Hashable]:
        hit = self._cache.get((state, token))
        if hit is not None:
            return hit
        out_state = self._kenlm.State()
        lp = float(self.model.BaseScore(state, token, out_state))
        if len(self._cache) >= 1 << 20:
            self._cache.clear()
        self._cache[(state, token)] = (lp, out_state)
        return lp, out_state

    def end_score(self, state: Hashable) -> float:
        return self.score(state, EOS)[0]

    def sentence_score(self, tokens: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        return float(self.model.score(" ".join(tokens), bos=bos, eos=eos))


def kenlm_available() -> bool:
    try:
        import kenlm  # noqa: F401
    except ImportError:
        return False
    return True


def load_lm(path: str | Path, backend: str = "auto") -> CharLM:
    """``backend``: ``"kenlm"``, ``"python"`` (ArpaLM), or ``"auto"`` (kenlm if installed)."""
    if backend not in ("auto", "kenlm", "python"):
        raise ConfigError(f"LM backend must be auto, kenlm or python, not {backend!r}")
    if backend == "kenlm" or (backend == "auto" and kenlm_available()):
        return KenLMBackend(path)
    return ArpaLM.from_file(path)


def text_to_tokens(text: str) -> list[str]:
    return [char_to_token(c) for c in text]


def perplexity(lm: CharLM, sentences: Iterable[str]) -> float:
    """Per-character perplexity (</s> counted as a token), as ``kenlm``'s ``perplexity``."""
    total, n = 0.0, 0
    for s in sentences:
        state = lm.begin_state()
        for t in [*text_to_tokens(s), EOS]:
            lp, state = lm.score(state, t)
            total += lp
            n += 1
    return math.pow(10.0, -total / max(n, 1))
