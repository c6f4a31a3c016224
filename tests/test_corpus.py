"""The shipped prompt and LM corpora, their sampler, and the script that builds them.

The central property is that prompts and LM text are disjoint: a decoder's
language model must never have learned a sentence it is later evaluated on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import struct
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emgkey import charset, corpus

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "tools" / "build_corpus.py"
CACHE = Path.home() / ".cache" / "emgkey-corpus"


def _key(text: str) -> str:
    """Case- and punctuation-blind identity (the same rule the build uses, restated here)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@pytest.fixture(scope="module")
def prompts() -> tuple[str, ...]:
    return corpus.load_prompts()


@pytest.fixture(scope="module")
def lm_lines() -> list[str]:
    return list(corpus.load_lm_text())


@pytest.fixture(scope="module")
def build_corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_corpus", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_corpus"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


# --- the shipped files ----------------------------------------------------------------------------


def test_resources_are_package_data() -> None:
    files = resources.files("emgkey.resources")
    for name in (corpus.PROMPTS_RESOURCE, corpus.LM_TEXT_RESOURCE, "CORPUS_LICENSE.md"):
        assert files.joinpath(name).is_file(), name


def test_prompt_count_and_uniqueness(prompts: tuple[str, ...]) -> None:
    assert len(prompts) == 3000
    assert len(set(prompts)) == len(prompts)
    assert len({_key(p) for p in prompts}) == len(prompts), "near-duplicate prompts"


def test_prompts_are_clean_typable_sentences(prompts: tuple[str, ...]) -> None:
    for p in prompts:
        assert charset.clean_str(p) == p, p
        assert not set(p) & {charset.ENTER, charset.BACKSPACE, charset.SHIFT}, p
        assert 20 <= len(p) <= 90, p
        assert len(p.split()) >= 4, p
        assert p == p.strip() and "  " not in p, p
        assert re.match(r"[A-Z]", p) and re.search(r"[.!?][\")]?$", p), p
        assert p.count("(") == p.count(")") and p.count('"') % 2 == 0, p


def test_lm_text_is_clean_and_sized(lm_lines: list[str]) -> None:
    assert len(lm_lines) >= 25_000
    assert len(set(lm_lines)) == len(lm_lines)
    size = resources.files("emgkey.resources").joinpath(corpus.LM_TEXT_RESOURCE).read_bytes()
    assert len(size) < 3_000_000
    for line in lm_lines:
        assert line and charset.clean_str(line) == line, line
        assert not set(line) & {charset.ENTER, charset.BACKSPACE, charset.SHIFT}, line


def test_prompts_and_lm_text_share_no_sentence(prompts: tuple[str, ...], lm_lines: list[str]) -> None:
    assert not set(prompts) & set(lm_lines)
    assert not {_key(p) for p in prompts} & {_key(line) for line in lm_lines}


def test_no_prompt_occurs_inside_an_lm_line(prompts: tuple[str, ...], lm_lines: list[str]) -> None:
    """Word-level containment, via an index on each prompt's first three words (a full scan is too slow)."""
    by_head: dict[tuple[str, ...], list[list[str]]] = {}
    for p in prompts:
        words = _key(p).split()
        assert len(words) >= 3, p
        by_head.setdefault(tuple(words[:3]), []).append(words)
    for line in lm_lines:
        words = _key(line).split()
        for pos in range(len(words) - 2):
            for candidate in by_head.get(tuple(words[pos : pos + 3]), ()):
                assert words[pos : pos + len(candidate)] != candidate, (" ".join(candidate), line)


def test_fingerprint_is_the_prompt_file_hash() -> None:
    data = resources.files("emgkey.resources").joinpath(corpus.PROMPTS_RESOURCE).read_bytes()
    assert corpus.corpus_fingerprint() == hashlib.sha256(data).hexdigest()


def test_licence_names_the_sources() -> None:
    text = resources.files("emgkey.resources").joinpath("CORPUS_LICENSE.md").read_text(encoding="utf-8")
    assert "public domain" in text.lower()
    assert "Austen" in text and "Factbook" in text


# --- PromptSampler ---------------------------------------------------------------------------------


def test_sampler_is_deterministic_and_addressable(prompts: tuple[str, ...]) -> None:
    a, b = corpus.PromptSampler(seed=7), corpus.PromptSampler(seed=7)
    assert [a.prompt(i) for i in range(50)] == [b.prompt(i) for i in range(50)]
    # Addressable: asking for session 1234 alone gives what a sequential walk gives.
    assert corpus.PromptSampler(seed=7).prompt(1234) == a.prompt(1234)
    assert a.prompt(5) == prompts[a.prompt_id(5)]


def test_sampler_seeds_differ() -> None:
    a, b = corpus.PromptSampler(seed=1), corpus.PromptSampler(seed=2)
    assert [a.prompt_id(i) for i in range(20)] != [b.prompt_id(i) for i in range(20)]


def test_sampler_pin() -> None:
    """Guards the hash-based schedule against accidental change (it must not depend on numpy)."""
    s = corpus.PromptSampler(seed=0)
    assert [s.prompt_id(i) for i in range(3)] == [
        sorted(range(3000), key=lambda i: hashlib.sha256(f"0\0pass0\0{i}".encode()).digest())[k] for k in range(3)
    ]


def test_each_pass_uses_every_prompt_once() -> None:
    s = corpus.PromptSampler(seed=3)
    n = len(s)
    first = [s.prompt_id(i) for i in range(n)]
    second = [s.prompt_id(i) for i in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second


def test_sampler_restricted_to_ids() -> None:
    ids = [5, 10, 15, 20]
    s = corpus.PromptSampler(seed=0, ids=ids)
    assert len(s) == 4
    assert {s.prompt_id(i) for i in range(40)} == set(ids)


@pytest.mark.parametrize("ids", [[], [3000], [-1], [1, 1]])
def test_sampler_rejects_bad_ids(ids: list[int]) -> None:
    with pytest.raises(ValueError):
        corpus.PromptSampler(seed=0, ids=ids)


def test_sampler_rejects_negative_index() -> None:
    with pytest.raises(IndexError):
        corpus.PromptSampler().prompt(-1)


@given(seed=st.integers(0, 2**32), i=st.integers(0, 100_000))
def test_prompt_id_in_range(seed: int, i: int) -> None:
    ids = (1, 2, 3, 500, 2999)
    assert corpus.PromptSampler(seed=seed, ids=ids).prompt_id(i) in ids


def test_sample_uses_the_callers_rng(prompts: tuple[str, ...]) -> None:
    s = corpus.PromptSampler()
    got = s.sample(np.random.default_rng(42), 10)
    assert got == s.sample(np.random.default_rng(42), 10)
    assert got != s.sample(np.random.default_rng(43), 10)
    assert all(p in prompts for p in got)


def test_sample_without_replacement_then_full_passes() -> None:
    s = corpus.PromptSampler(ids=range(10))
    rng = np.random.default_rng(0)
    assert len(set(s.sample_ids(rng, 10))) == 10
    many = s.sample_ids(rng, 25)
    assert len(many) == 25 and set(many) == set(range(10))
    assert s.sample_ids(rng, 0) == []
    with pytest.raises(ValueError):
        s.sample_ids(rng, -1)


# --- held-out split --------------------------------------------------------------------------------


def test_split_is_exact_disjoint_and_deterministic() -> None:
    split = corpus.split_prompts(0.2, seed=0)
    assert len(split.heldout_ids) == 600 and len(split.train_ids) == 2400
    assert not set(split.train_ids) & set(split.heldout_ids)
    assert sorted(split.train_ids + split.heldout_ids) == list(range(3000))
    assert corpus.split_prompts(0.2, seed=0) == split
    assert corpus.split_prompts(0.2, seed=1) != split


def test_split_samplers_stay_on_their_side() -> None:
    split = corpus.split_prompts(0.1, seed=5)
    heldout = split.sampler("heldout", seed=9)
    assert {heldout.prompt_id(i) for i in range(1000)} <= set(split.heldout_ids)
    train = split.sampler("train")
    assert {train.prompt_id(i) for i in range(1000)} <= set(split.train_ids)
    with pytest.raises(ValueError):
        split.sampler("test")


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        corpus.split_prompts(fraction)


def test_split_extremes() -> None:
    assert corpus.split_prompts(0.0).heldout_ids == ()
    assert corpus.split_prompts(1.0).train_ids == ()


# --- the build script's pieces ---------------------------------------------------------------------


def test_split_sentences_respects_abbreviations(build_corpus: ModuleType) -> None:
    text = "Mr. Elton came in. He saw J. Smith at No. 4 Queen St. and left! Did he? Yes."
    assert build_corpus.split_sentences(text) == [
        "Mr. Elton came in.",
        "He saw J. Smith at No. 4 Queen St. and left!",
        "Did he?",
        "Yes.",
    ]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("She paused--and went on.", "She paused - and went on."),
        ("It\u2019s \u201cfine\u201d \u2014 really.", 'It\'s "fine" - really.'),
        ("Caf\u00e9 society  was   dull.", "Cafe society was dull."),
        ("It cost \u00a320,000.", None),  # £ would be dropped, so the sentence is rejected
        ("See [note] here.", None),  # markup-only characters
        ("A\tB", "A B"),  # whitespace collapses before the charset sees it
    ],
)
def test_clean_sentence(build_corpus: ModuleType, raw: str, clean: str | None) -> None:
    assert build_corpus.clean_sentence(raw) == clean


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("She was mortified, shocked, confounded.", True),
        ("said Mr. Knightley,", False),
        ("4.8% of total installed capacity (2012 est.)", False),
        ("He said (quietly it.", False),
        ("It was 'quite so.", False),
        ("Harriet's cousins' house was near.", True),
        ("CHAPTER XII.", False),
    ],
)
def test_is_sentence(build_corpus: ModuleType, text: str, ok: bool) -> None:
    assert build_corpus.is_sentence(text) is ok


def test_unshout(build_corpus: ModuleType) -> None:
    assert build_corpus.unshout("He will give YOU something. THAT was all, said Henry VIII.") == (
        "He will give you something. That was all, said Henry VIII."
    )


def test_prompt_filter_rejects_shouted_names(build_corpus: ModuleType) -> None:
    assert build_corpus.is_prompt("Poland joined NATO in 1999 and the EU in 2004.")
    assert not build_corpus.is_prompt("In 1980, a coup led by Samuel DOE ushered in a decade of rule.")
    assert not build_corpus.is_prompt("Too short.")


def test_phrase_index(build_corpus: ModuleType) -> None:
    index = build_corpus.PhraseIndex(["i do not know", "indeed i do not know what to think", "we shall see"])
    assert index.occurs_inside_another("i do not know")
    assert not index.occurs_inside_another("we shall see")
    assert not index.occurs_inside_another("indeed i do not know what to think")


def _xdr_strsxp(values: list[str]) -> bytes:
    """Hand-build R's XDR serialization (version 2) of a character vector."""
    out = b"X\n" + struct.pack(">iii", 2, 0x040201, 0x020300)
    out += struct.pack(">ii", 16, len(values))  # STRSXP, length
    for v in values:
        data = v.encode()
        out += struct.pack(">ii", 9 | (1 << 15), len(data)) + data  # CHARSXP (UTF-8 flag), bytes
    return out


def test_r_unserializer_reads_a_character_vector(build_corpus: ModuleType) -> None:
    vec = build_corpus.RUnserializer(_xdr_strsxp(["Emma", "", "By Jane Austen"])).read()
    assert vec.sexptype == 16
    assert vec.items == ["Emma", "", "By Jane Austen"]


@pytest.mark.slow
def test_build_reproduces_committed_files(build_corpus: ModuleType) -> None:
    """Rebuild from the pinned upstream archives and compare byte for byte."""
    if not all((CACHE / up.filename).exists() for up in (build_corpus.AUSTEN, build_corpus.FACTBOOK)):
        pytest.skip(f"upstream archives not in {CACHE}; run tools/build_corpus.py once to fetch them")
    assert build_corpus.main(["--cache", str(CACHE), "--offline", "--check"]) == 0
