"""Name normalization, the leak guard (no target class may come back as a neighbor) and vocabularies."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field

import yaml

logger = logging.getLogger(__name__)

_KEEP_S = ("ss", "us", "is", "os", "as")


def _singular(word: str) -> str:
    if len(word) <= 3 or word.endswith(_KEEP_S):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalize(name: str) -> str:
    """A comparison key: accents, case, punctuation, extra whitespace and plural ``-s`` endings removed.

    Example:
        >>> normalize("  Teddy-Bears ") == normalize("teddy bear")
        True
    """
    text = unicodedata.normalize("NFKD", str(name))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w]+|_", " ", text)
    return " ".join(_singular(w) for w in text.split())


def clean_name(name: str) -> str:
    """A display name: control characters dropped, whitespace collapsed, outer quotes / markup stripped."""
    text = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in str(name))
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" \"'`*_.;:,").strip()


def split_synonyms(words: str) -> list[str]:
    """``"teddy, teddy bear"`` -> ``["teddy", "teddy bear"]`` (the Tiny-ImageNet / ImageNet words format)."""
    return [w.strip() for w in str(words).split(",") if w.strip()]


@dataclass
class Entry:
    """A named class: display name, synonyms and optional WordNet id."""

    name: str
    synonyms: list[str] = field(default_factory=list)
    wnid: str | None = None

    def keys(self) -> set[str]:
        """Normalized forms of the name and every synonym."""
        return {k for k in (normalize(n) for n in [self.name, *self.synonyms]) if k}


class LeakGuard:
    """Rejects a proposed name that is, or stands for, one of the target classes.

    A name leaks when its normalized form equals a target's name, query or any synonym, or when it resolves (by its
    wnid or, given a WordNet, its most frequent noun sense) to a target's synset; with ``nested=True`` also when that
    synset is a hyponym or hypernym of a target synset (its images would be images of the target).

    Example:
        >>> guard = LeakGuard([Entry("n04399382", ["teddy", "teddy bear"], "n04399382")])
        >>> guard.check("Teddy Bears")
        'matches target n04399382'

    Args:
        targets: the target classes.
        wordnet: a ``WordNet`` for synset matching; None to match names only.
        nested: also reject hyponyms / hypernyms of a target synset (needs ``wordnet``).
    """

    def __init__(self, targets: list[Entry], wordnet=None, nested: bool = True):
        self.wordnet = wordnet
        self.nested = nested and wordnet is not None
        self.by_key: dict[str, str] = {}
        self.by_offset: dict[int, str] = {}
        for t in targets:
            for k in t.keys():
                self.by_key.setdefault(k, t.name)
            if wordnet is not None:  # by wnid, else by the name's most frequent noun sense
                synset = wordnet.resolve(t.wnid) if t.wnid else wordnet.resolve(t.name)
                if synset is not None:
                    self.by_offset.setdefault(synset.offset, t.name)

    def check(self, name: str, wnid: str | None = None) -> str | None:
        """Why ``name`` leaks a target class, or None when it does not."""
        key = normalize(name)
        if key in self.by_key:
            return f"matches target {self.by_key[key]}"
        if self.wordnet is None:
            return None
        synset = self.wordnet.resolve(wnid) if wnid else self.wordnet.resolve(name)
        if synset is None:
            return None
        if synset.offset in self.by_offset:
            return f"same synset as target {self.by_offset[synset.offset]}"
        if self.nested:
            for anc in self.wordnet.ancestors(synset.offset):
                if anc in self.by_offset:
                    return f"hyponym of target {self.by_offset[anc]}"
            for off, target in self.by_offset.items():
                if synset.offset in self.wordnet.ancestors(off):
                    return f"hypernym of target {target}"
        return None


class Vocabulary:
    """The names a neighbor may take (e.g. the classes of an image pool); a proposed name maps onto one entry.

    Example:
        >>> vocab = Vocabulary([Entry("tabby", ["tabby", "tabby cat"], "n02123045")])
        >>> vocab.match("Tabby cats").wnid
        'n02123045'
    """

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.by_key: dict[str, Entry] = {}
        self.by_wnid: dict[str, Entry] = {}
        for e in entries:
            for k in e.keys():
                self.by_key.setdefault(k, e)
            if e.wnid:
                self.by_wnid[e.wnid] = e

    def match(self, name: str, wnid: str | None = None) -> Entry | None:
        """The vocabulary entry ``name`` (or ``wnid``) stands for, or None."""
        if wnid and wnid in self.by_wnid:
            return self.by_wnid[wnid]
        return self.by_key.get(normalize(name))

    def __len__(self) -> int:
        return len(self.entries)


def _entry(name: str, words: str | None = None) -> Entry:
    from neighbor_lt.neighbors.wordnet import is_wnid

    name = str(name).strip()
    synonyms = split_synonyms(words) if words else []
    if is_wnid(name):
        return Entry(synonyms[0] if synonyms else name, synonyms, name)
    return Entry(name, synonyms or [name])


def load_vocabulary(spec, base_dir: str | None = None) -> Vocabulary:
    """A vocabulary from a list of names / wnids, or a file.

    Files: ``.txt`` (one name or wnid per line), ``.json`` / ``.yaml`` (a list), ``.tsv`` / ``.csv`` with a ``wnid``
    and / or ``words`` (comma-separated synonyms) or ``name`` column, such as Tiny-ImageNet's ``classes.tsv``.
    A wnid without words is named after its WordNet synset when the stage resolves it.
    """
    if isinstance(spec, (list, tuple)):
        return Vocabulary([_entry(x) for x in spec])
    path = str(spec)
    if base_dir and not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(base_dir, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {spec}")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".tsv", ".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
        entries = []
        for row in rows:
            name = row.get("wnid") or row.get("name") or row.get("words")
            if name:
                entries.append(_entry(name, row.get("words")))
        return Vocabulary(entries)
    with open(path, encoding="utf-8") as f:
        if ext == ".json":
            items = json.load(f)
        elif ext in (".yaml", ".yml"):
            items = yaml.safe_load(f)
        else:
            items = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return Vocabulary([_entry(x) for x in items])
