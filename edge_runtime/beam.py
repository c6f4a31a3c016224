"""Online CTC prefix beam search with a character n-gram LM that understands backspace.

The decoder is stateful and online like ``emgkey.decoding.CTCGreedyDecoder``: ``reset()``, then
``decode(emissions, timestamps, finish)`` any number of times; ``labels``/``timestamps`` are the best
hypothesis so far (a partial result that later frames may revise). Feeding a sequence in any split
gives the same result as feeding it whole, because the beam after frame ``t`` depends only on frames
``<= t`` (``tests/test_runtime_beam.py``).

Scoring. A hypothesis is a label prefix (keys as decoded, ⌫ included) with CTC probabilities ``p_b``
(paths ending in blank) and ``p_nb`` (ending in its last label), and an LM score that depends only on
the prefix: ``score = logaddexp(p_b, p_nb) + lm_part``, with

    lm_part = sum over the characters of the *edited* text of (lm_weight * ln p_LM(c | context) + insertion_bonus)

where the edited text is the prefix with backspaces applied. Consequences, by construction:

- the LM context after ⌫ is that of the text with its last character removed, and the ⌫ refunds the
  deleted character's LM score and bonus, so a typo fixed with ⌫ costs the LM nothing: the prefix
  ``c z ⌫ a t`` is scored by the LM as ``c a t`` (emg2qwerty's decoder does the same: its LM state
  lives in a second trie that ⌫ walks up). This is kept as a stack: each typed character pushes an LM
  node (state, cumulative score, parent); ⌫ pops to the parent (at the root it stays);
- ⇧ (shift) is LM-transparent: neither scored nor part of the context (``apply_backspaces`` drops it
  too, so a ⌫ after ⇧ deletes the character before it);
- LM log probabilities are base 10 in files and converted to natural log here, so ``lm_weight``
  weighs nats against the model's natural-log emissions;
- ``insertion_bonus`` (applied only with an LM) offsets the LM's per-character cost, which would
  otherwise favour short outputs;
- at ``finish`` the LM's end of sentence ``</s>`` is added when ``score_eos`` (ranking only).

Pruning per frame: only the ``max_labels_per_frame`` best labels within ``label_threshold`` nats of
the frame's best are expanded (blank always is), and hypotheses more than ``beam_threshold`` below
the best are dropped before keeping ``beam_size``.

Prefixes are identified by a 64-bit rolling hash of their labels (Python's tuple hash of
``(parent_hash, label)``), so merging paths costs O(1) whatever the length; a collision between two
live prefixes (probability ~1e-12 per frame at these beam sizes) would merge them.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.edge_runtime.lm import CharLM, char_to_token
from emgkey.errors import ConfigError

NEG_INF = -math.inf
LN10 = math.log(10.0)
_LM_CHILD_CACHE = 20_000  # memoised (LM node, label) -> child entries per decoder


def _lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for two floats, -inf safe."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def _first(x: tuple[float, _Hyp]) -> float:
    return x[0]


@dataclass(frozen=True)
class BeamConfig:
    beam_size: int = 16
    lm_weight: float = 0.8  # multiplies ln p_LM (emg2qwerty: 2.0 on log10 scores, i.e. 0.87 here)
    insertion_bonus: float = 2.0  # nats per typed character (with an LM only)
    max_labels_per_frame: int = 10
    label_threshold: float = 10.0  # nats below the frame's best label
    beam_threshold: float = 25.0  # nats below the best hypothesis
    score_eos: bool = True  # add log p(</s> | text) at finish
    blank: int = charset.BLANK
    num_classes: int = charset.NUM_CLASSES

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_labels_per_frame < 1:
            raise ConfigError("beam_size and max_labels_per_frame must be >= 1")
        if self.lm_weight < 0 or self.label_threshold <= 0 or self.beam_threshold <= 0:
            raise ConfigError("lm_weight must be >= 0 and the thresholds > 0")


@dataclass(slots=True)
class _LabelNode:
    """One decoded label in a persistent list (shared by every hypothesis extending it)."""

    label: int
    timestamp: float
    parent: _LabelNode | None


@dataclass(slots=True)
class _LMNode:
    """The LM after one typed character: a stack that ⌫ pops."""

    state: Any  # the LM's (hashable) state
    score: float  # cumulative weighted LM score + bonuses of the edited text
    parent: _LMNode | None
    char: str  # the character this node typed ("" at the root)


@dataclass(slots=True)
class _Hyp:
    key: int
    node: _LabelNode | None
    lm: _LMNode
    p_b: float = NEG_INF
    p_nb: float = NEG_INF

    @property
    def last(self) -> int:
        return self.node.label if self.node is not None else -1

    @property
    def acoustic(self) -> float:
        return _lse(self.p_b, self.p_nb)

    @property
    def score(self) -> float:
        return _lse(self.p_b, self.p_nb) + self.lm.score


@dataclass
class CTCBeamDecoder:
    """Prefix beam search with an optional ``CharLM`` (see the module docstring)."""

    config: BeamConfig = field(default_factory=BeamConfig)
    lm: CharLM | None = None
    backspace: int = charset.key_to_label("Key.backspace")
    transparent: frozenset[int] = frozenset({charset.key_to_label("Key.shift")})
    beam: list[_Hyp] = field(init=False, default_factory=list)
    frames: int = field(init=False, default=0)
    _final: _Hyp | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Label -> LM token, for the keys that are characters (⌫ and ⇧ are handled apart).
        self._tokens = {
            lab: char_to_token(chr(charset.UNICODES[lab]))
            for lab in range(charset.NUM_KEYS)
            if lab != self.backspace and lab not in self.transparent
        }
        self.reset()

    def reset(self) -> None:
        root = _LMNode(state=self.lm.begin_state() if self.lm is not None else None, score=0.0, parent=None, char="")
        self.beam = [_Hyp(key=0, node=None, lm=root, p_b=0.0)]
        self._lm_children: dict[tuple[int, int], tuple[_LMNode, _LMNode]] = {}
        self.frames = 0
        self._final = None

    # -- extension ----------------------------------------------------------------------------------------------------

    def _lm_after(self, lm: _LMNode, label: int) -> _LMNode:
        # The same hypothesis is offered the same labels frame after frame: memoise its LM children in a
        # bounded table (keyed by node identity, the node kept in the value so its id cannot be reused).
        hit = self._lm_children.get((id(lm), label))
        if hit is not None and hit[0] is lm:
            return hit[1]
        child = self._lm_child(lm, label)
        if len(self._lm_children) >= _LM_CHILD_CACHE:
            self._lm_children.clear()
        self._lm_children[(id(lm), label)] = (lm, child)
        return child

    def _lm_child(self, lm: _LMNode, label: int) -> _LMNode:
        if label == self.backspace:
            return lm.parent if lm.parent is not None else lm
        if label in self.transparent:
            return lm
        if self.lm is None:
            return _LMNode(state=None, score=lm.score, parent=lm, char=self._tokens[label])
        token = self._tokens[label]
        lp10, state = self.lm.score(lm.state, token)
        score = lm.score + self.config.lm_weight * lp10 * LN10 + self.config.insertion_bonus
        return _LMNode(state=state, score=score, parent=lm, char=token)

    def decode(self, emissions: np.ndarray, timestamps: np.ndarray | None = None, finish: bool = False) -> list[int]:
        """emissions (T, num_classes) log-probs; returns the best label prefix so far."""
        cfg = self.config
        assert emissions.ndim == 2 and emissions.shape[1] == cfg.num_classes, (
            f"expected (T, {cfg.num_classes}) emissions, got {emissions.shape}"
        )
        if timestamps is None:
            timestamps = np.arange(self.frames, self.frames + len(emissions), dtype=np.float64)
        assert len(timestamps) == len(emissions), "one timestamp per emission frame"
        if len(emissions):
            self._final = None
        blank = cfg.blank
        k = min(cfg.max_labels_per_frame, cfg.num_classes)
        em = np.asarray(emissions, dtype=np.float64)
        top = (
            np.argpartition(-em, k - 1, axis=1)[:, :k]
            if k < cfg.num_classes
            else np.tile(np.arange(cfg.num_classes), (len(em), 1))
        )  # (T, k) unordered
        lse, lm_after, beam_size, beam_threshold = _lse, self._lm_after, cfg.beam_size, cfg.beam_threshold
        for t in range(len(em)):
            row = em[t]
            floor = row.max() - cfg.label_threshold
            cands = [(int(c), float(row[c])) for c in top[t] if c != blank and row[c] >= floor]
            p_blank = float(row[blank])
            ts = float(timestamps[t])
            nxt: dict[int, _Hyp] = {}
            for hyp in self.beam:
                acoustic = lse(hyp.p_b, hyp.p_nb)
                stay = nxt.get(hyp.key)
                if stay is None:
                    stay = nxt[hyp.key] = _Hyp(hyp.key, hyp.node, hyp.lm)
                stay.p_b = lse(stay.p_b, acoustic + p_blank)
                last = hyp.node.label if hyp.node is not None else -1
                for lab, p in cands:
                    if lab == last:
                        stay.p_nb = lse(stay.p_nb, hyp.p_nb + p)  # the repeat collapses into the same label
                        from_prev = hyp.p_b + p  # a new instance needs a blank in between
                        if from_prev == NEG_INF:
                            continue
                    else:
                        from_prev = acoustic + p
                    key = hash((hyp.key, lab))
                    ext = nxt.get(key)
                    if ext is None:
                        ext = nxt[key] = _Hyp(key, _LabelNode(lab, ts, hyp.node), lm_after(hyp.lm, lab))
                    ext.p_nb = lse(ext.p_nb, from_prev)
            scored = [(lse(h.p_b, h.p_nb) + h.lm.score, h) for h in nxt.values()]
            if len(scored) > beam_size:
                scored = heapq.nlargest(beam_size, scored, key=_first)
            else:
                scored.sort(key=_first, reverse=True)
            best = scored[0][0]
            self.beam = [h for sc, h in scored if sc >= best - beam_threshold]
            self.frames += 1
        if finish:
            self._finish()
        return self.labels

    def _finish(self) -> None:
        if self.lm is None or not self.config.score_eos:
            self._final = self.beam[0]
            return
        w = self.config.lm_weight * LN10

        def total(h: _Hyp) -> float:
            assert self.lm is not None
            return h.score + w * self.lm.end_score(h.lm.state)

        self._final = max(self.beam, key=total)

    # -- results ------------------------------------------------------------------------------------------------------

    @property
    def best(self) -> _Hyp:
        return self._final if self._final is not None else self.beam[0]

    def _nodes(self, hyp: _Hyp) -> list[_LabelNode]:
        out = []
        node = hyp.node
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    @property
    def labels(self) -> list[int]:
        return [n.label for n in self._nodes(self.best)]

    @property
    def timestamps(self) -> list[float]:
        return [n.timestamp for n in self._nodes(self.best)]

    @property
    def text(self) -> str:
        return charset.labels_to_str(self.labels)

    def nbest(self, n: int = 5) -> list[tuple[list[int], float]]:
        """The ``n`` best prefixes with their scores (acoustic + LM, nats)."""
        return [([x.label for x in self._nodes(h)], h.score) for h in self.beam[:n]]

    def lm_context(self, hyp: _Hyp | None = None) -> str:
        """The edited text the LM conditions on for ``hyp`` (default: the best), from its LM stack."""
        node: _LMNode | None = (hyp or self.best).lm
        chars = []
        while node is not None and node.parent is not None:
            chars.append(node.char)
            node = node.parent
        return "".join(" " if c == "<space>" else c for c in reversed(chars))


def beam_decode(emissions: np.ndarray, config: BeamConfig | None = None, lm: CharLM | None = None) -> list[int]:
    """Batch helper: one sequence (T, num_classes) -> best labels (a loop over the online form)."""
    dec = CTCBeamDecoder(config or BeamConfig(num_classes=emissions.shape[-1]), lm)
    return list(dec.decode(emissions, finish=True))
