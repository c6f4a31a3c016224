"""Character n-gram LM: modified Kneser-Ney estimates, ARPA round trip, normalisation, KenLM agreement."""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from emgkey.edge_runtime import cli
from emgkey.edge_runtime.lm import (
    BOS,
    EOS,
    UNK,
    ArpaLM,
    LMBuildConfig,
    LMError,
    build_arpa,
    build_ngram_model,
    char_to_token,
    kenlm_available,
    load_lm,
    perplexity,
    read_arpa,
    text_to_tokens,
    write_arpa,
)
from emgkey.errors import ConfigError

CORPUS = [
    "the cat sat on the mat",
    "the dog sat",
    "a cat and a dog",
    "cats sat on mats",
    "the cat ate",
    "dogs and cats",
]


def _all_states(lm: ArpaLM, max_len: int) -> list[tuple[int, ...]]:
    ids = range(len(lm.vocab))
    states = [lm.begin_state(), ()]
    for n in range(1, max_len + 1):
        states += list(itertools.product(ids, repeat=n))
    return states


# ---------------------------------------------------------------------------------------------------------------------
# A direct, dictionary-based interpolated modified Kneser-Ney, written from the textbook definition
# (Chen & Goodman 1998): the vectorised builder must agree with it exactly.
# ---------------------------------------------------------------------------------------------------------------------


def _reference_kn(sentences: list[str], order: int, extra: str = ""):
    seqs = [[BOS, *text_to_tokens(s), EOS] for s in sentences]
    vocab = sorted({t for s in seqs for t in s[1:]} | {char_to_token(c) for c in extra} | {UNK})  # predictable
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    for s in seqs:
        for n in range(1, order + 1):
            for i in range(len(s) - n + 1):
                counts[n][tuple(s[i : i + n])] += 1

    def adjusted(n: int) -> Counter:
        if n == order:
            return Counter(counts[n])
        out: Counter = Counter()
        for g, c in counts[n].items():
            if g[0] == BOS:
                out[g] = c
        ext = Counter(g[1:] for g in counts[n + 1])
        for g in counts[n]:
            if g[0] != BOS:
                out[g] = ext[g]
        return out

    adj = {n: adjusted(n) for n in range(1, order + 1)}
    adj[1] = Counter({g: c for g, c in adj[1].items() if g != (BOS,)})

    def discounts(n: int) -> tuple[float, float, float]:
        coc = Counter(adj[n].values())
        n1, n2, n3, n4 = (coc[k] for k in (1, 2, 3, 4))
        if min(n1, n2, n3, n4) == 0:
            return (0.5, 1.0, 1.5)
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        return d if all(0 < dk <= k for k, dk in zip((1, 2, 3), d)) else (0.5, 1.0, 1.5)

    disc = {n: discounts(n) for n in range(1, order + 1)}
    by_ctx: dict[int, dict[tuple, dict[str, int]]] = {n: defaultdict(dict) for n in range(1, order + 1)}
    for n in range(1, order + 1):
        for g, a in adj[n].items():
            by_ctx[n][g[:-1]][g[-1]] = a

    def D(n: int, a: int) -> float:
        return 0.0 if a == 0 else disc[n][min(a, 3) - 1]

    def prob(w: str, h: tuple) -> float:
        n = len(h) + 1
        if n == 1:
            row = by_ctx[1][()]
            denom = sum(row.values())
            gamma = sum(D(1, a) for a in row.values()) / denom
            return (max(row.get(w, 0) - D(1, row.get(w, 0)), 0) / denom) + gamma / len(vocab)
        row = by_ctx[n].get(h, {})
        if not row:
            return prob(w, h[1:])
        denom = sum(row.values())
        gamma = sum(D(n, a) for a in row.values()) / denom
        a = row.get(w, 0)
        return (a - D(n, a)) / denom + gamma * prob(w, h[1:])

    return vocab, prob


def test_builder_matches_textbook_modified_kneser_ney():
    order = 3
    vocab, prob = _reference_kn(CORPUS, order, extra="xz")
    lm = ArpaLM(build_ngram_model(CORPUS, LMBuildConfig(order=order, extra_chars="xz")))
    rng = np.random.default_rng(0)
    contexts = [(BOS,), (BOS, "t"), ("t", "h"), ("a", "t"), ("<space>", "c"), ("q", "t"), ("c", "a"), ("x", "x")]
    contexts += [tuple(rng.choice(vocab[1:], size=2)) for _ in range(30)]
    for h in contexts:
        state = tuple(lm.token_id(t) for t in h)
        for w in vocab:
            ref = math.log10(prob(w, h))
            got, _ = lm.score(state, w)
            assert got == pytest.approx(ref, abs=1e-9), f"p({w!r} | {h}) = {got}, reference {ref}"


@pytest.mark.parametrize("prune", [(), (0, 0, 1), (0, 1, 1)])
def test_every_conditional_distribution_sums_to_one(prune):
    tables = build_ngram_model(CORPUS, LMBuildConfig(order=3, prune=prune, extra_chars="q"))
    lm = ArpaLM(tables)
    predictable = [i for i, t in enumerate(lm.vocab) if t != BOS]
    for state in _all_states(lm, 2):
        total = float(np.sum(10.0 ** lm.distribution(state)[predictable]))
        assert total == pytest.approx(1.0, abs=1e-9), f"context {state}: probabilities sum to {total}"
    if prune:
        assert len(tables.keys[2]) < len(build_ngram_model(CORPUS, LMBuildConfig(order=3)).keys[2])


def test_arpa_round_trip_and_written_precision(tmp_path):
    tables = build_ngram_model(CORPUS, LMBuildConfig(order=4))
    path = write_arpa(tables, tmp_path / "lm.arpa", header=["a comment line"])
    text = path.read_text()
    assert text.startswith("# a comment line\n") and "\\data\\" in text and text.rstrip().endswith("\\end\\")
    back = read_arpa(path)
    assert back.vocab == tables.vocab
    for n in range(4):
        np.testing.assert_array_equal(back.keys[n], tables.keys[n])
        np.testing.assert_allclose(back.logp[n], tables.logp[n], atol=1e-6)
        np.testing.assert_allclose(back.backoff[n], tables.backoff[n], atol=1e-6)
    a, b = ArpaLM(tables), ArpaLM.from_file(path)
    for s in [*CORPUS, "zebra!"]:
        assert a.sentence_score(text_to_tokens(s)) == pytest.approx(b.sentence_score(text_to_tokens(s)), abs=1e-5)


def test_queries_follow_the_backoff_rule():
    lm = ArpaLM(build_ngram_model(CORPUS, LMBuildConfig(order=3)))
    t = lm.tables
    # Unknown tokens score as <unk>; the score of a sentence is the sum of its tokens' scores.
    state = lm.begin_state()
    assert lm.score(state, "Q")[0] == lm.score(state, UNK)[0]
    toks = text_to_tokens("the cat")
    total, state = 0.0, lm.begin_state()
    for tok in [*toks, EOS]:
        lp, state = lm.score(state, tok)
        total += lp
    assert lm.sentence_score(toks) == pytest.approx(total)
    # A stored trigram is its own probability; an unseen one backs off through the bigram context.
    h, w = (lm.token_id("t"), lm.token_id("h")), lm.token_id("e")
    row = int(np.searchsorted(t.keys[2], (h[0] * t.base + h[1]) * t.base + w))
    assert lm.score(h, "e")[0] == pytest.approx(t.logp[2][row])
    unseen = lm.token_id("z") if "z" in lm.vocab else lm.token_id("d")
    bigram_ctx = int(np.searchsorted(t.keys[1], h[0] * t.base + h[1]))
    lower = lm.score((h[1],), lm.vocab[unseen])[0]
    assert lm.score(h, lm.vocab[unseen])[0] == pytest.approx(t.backoff[1][bigram_ctx] + lower)


def test_build_config_is_validated():
    with pytest.raises(ConfigError, match="order"):
        LMBuildConfig(order=0)
    with pytest.raises(ConfigError, match="non-decreasing"):
        LMBuildConfig(order=3, prune=(0, 2, 1))
    with pytest.raises(ConfigError, match="unigrams"):
        LMBuildConfig(order=3, prune=(1, 1, 1))


def test_reserved_tokens_cannot_come_from_characters():
    # Characters are single tokens, so the corpus can never produce "<s>": building must succeed.
    tables = build_ngram_model(["a <s> b"], LMBuildConfig(order=2))
    assert "<" in tables.vocab and "<s>" in tables.vocab


def test_bad_files_are_typed_errors(tmp_path):
    with pytest.raises(LMError, match="no such"):
        read_arpa(tmp_path / "missing.arpa")
    bad = tmp_path / "bad.arpa"
    bad.write_text("hello\nworld\n")
    with pytest.raises(LMError, match="data"):
        read_arpa(bad)
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\ta\n")
    with pytest.raises(LMError):
        read_arpa(bad)
    with pytest.raises(ConfigError, match="backend"):
        load_lm(bad, backend="nope")


def test_lm_helps_on_held_out_text():
    from emgkey.corpus import load_lm_text, load_prompts

    lines = list(itertools.islice(load_lm_text(), 3000))
    uni = ArpaLM(build_ngram_model(lines, LMBuildConfig(order=1)))
    tri = ArpaLM(build_ngram_model(lines, LMBuildConfig(order=4)))
    held_out = load_prompts()[:200]
    assert perplexity(tri, held_out) < 0.6 * perplexity(uni, held_out)


def test_cli_builds_and_evaluates(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(CORPUS * 3) + "\n")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "lm.arpa"
    args = parser.parse_args(["lm", "build", "--order", "3", "--out", str(out), "--text", str(text), "--no-eval"])
    assert args.func(args) == 0
    assert "order 3" in capsys.readouterr().out
    lm = ArpaLM.from_file(out)
    assert lm.order == 3 and lm.has_token("<space>") and lm.has_token("Z")  # every key is in the vocabulary
    args = parser.parse_args(["lm", "eval", "--lm", str(out), "--text", str(text), "--backend", "python"])
    assert args.func(args) == 0
    assert "perplexity" in capsys.readouterr().out


@pytest.mark.skipif(not kenlm_available(), reason="kenlm is not installed (optional: pip install kenlm)")
def test_kenlm_and_python_backends_agree(tmp_path):
    lines = [*CORPUS, "The Cat, 12 dogs!", "tHe mat?"]
    path = tmp_path / "lm.arpa"
    build_arpa(path, lines, LMBuildConfig(order=4, extra_chars="Qq"))
    py, ken = load_lm(path, "python"), load_lm(path, "kenlm")
    assert type(ken).__name__ == "KenLMBackend" and ken.order == py.order == 4
    rng = np.random.default_rng(1)
    probes = [*lines, "zzz qq", "the catalogue", "", "a\u23ceb"]
    probes += ["".join(rng.choice(list("the catsmodg!Q"), size=12)) for _ in range(50)]
    for s in probes:
        toks = text_to_tokens(s)
        sp, sk = py.begin_state(), ken.begin_state()
        for tok in [*toks, EOS]:
            lp, sp = py.score(sp, tok)
            lk, sk = ken.score(sk, tok)
            assert lp == pytest.approx(lk, abs=2e-5), f"{s!r}: token {tok!r}: python {lp}, kenlm {lk}"
        assert py.sentence_score(toks) == pytest.approx(ken.sentence_score(toks), abs=1e-4)
