"""The leak guard (no target class may come back as a neighbor) and vocabularies (the names a neighbor may take).

Names are compared with ``neighbor_lt.neighbors.names`` (one normalizer: case, spaces, hyphens, underscores,
plurals, split / joined spellings); with a WordNet, also by synset, the proposed name read in its sense closest to the
target it was proposed for.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field

import yaml

from neighbor_lt.neighbors.names import NameIndex, clean_name, is_wnid, normalize, split_synonyms
from neighbor_lt.neighbors.wordnet import VISUAL_LEXNAMES, SenseChoice

logger = logging.getLogger(__name__)

__all__ = ["Entry", "LeakGuard", "Verdict", "Vocabulary", "clean_name", "load_vocabulary", "normalize"]


@dataclass
class Entry:
    """A named class: display name, synonyms and optional WordNet id."""

    name: str
    synonyms: list[str] = field(default_factory=list)
    wnid: str | None = None


@dataclass
class Verdict:
    """What the guard found for one proposed name: why it leaks (None when it does not) and the WordNet sense it
    was read in (None without WordNet or when WordNet lacks the name)."""

    reason: str | None
    sense: SenseChoice | None = None


class LeakGuard:
    """Rejects a proposed name that is, or stands for, one of the target classes.

    A name leaks when any spelling of it (``names.name_keys``) is a target's name, query or synonym; or, given a
    WordNet, when its sense closest to the target it was proposed for (or its given wnid) is a target's synset; with
    ``nested=True`` also when that sense is a hyponym or hypernym of a target synset (its images would be images of
    the target). A target without a wnid is matched in every sense of its name a photo can show.

    Example:
        >>> guard = LeakGuard([Entry("n04399382", ["teddy", "teddy bear"], "n04399382")])
        >>> guard.check("Teddy Bears"), guard.check("teddy-bear"), guard.check("koala")
        ('matches target n04399382', 'matches target n04399382', None)

    Args:
        targets: the target classes.
        wordnet: a ``WordNet`` for synset matching; None to match names only.
        nested: also reject hyponyms / hypernyms of a target synset (needs ``wordnet``).
    """

    def __init__(self, targets: list[Entry], wordnet=None, nested: bool = True):
        self.wordnet = wordnet
        self.nested = nested and wordnet is not None
        self.names = NameIndex()
        self.by_offset: dict[int, str] = {}
        self.senses: dict[str, SenseChoice] = {}  # target name -> the synset it stands for
        for t in targets:
            for n in [t.name, *t.synonyms]:
                self.names.add(n, t.name)
            if wordnet is None:
                continue
            names = [n for n in [t.name, *t.synonyms] if not is_wnid(n)]
            sense = wordnet.target_sense(t.wnid or (t.name if is_wnid(t.name) else None), names)
            if sense is None:
                continue
            self.senses[t.name] = sense
            offsets = [sense.synset.offset]
            if not t.wnid and not is_wnid(t.name):  # no id: every sense a photo shows may be the one meant
                for n in names:
                    offsets += [s.offset for s in wordnet.lookup(n) if s.lexname in VISUAL_LEXNAMES]
            for off in offsets:
                self.by_offset.setdefault(off, t.name)

    def target_offset(self, target: str | None) -> int | None:
        """The synset offset of a target class (by its name), None when unknown."""
        sense = self.senses.get(target) if target is not None else None
        return sense.synset.offset if sense is not None else None

    def screen(self, name: str, wnid: str | None = None, target: str | None = None) -> Verdict:
        """Check a name proposed for ``target`` (a target class name); see the class docstring."""
        match = self.names.get(name)
        if match is not None:
            return Verdict(f"matches target {match}")
        if self.wordnet is None:
            return Verdict(None)
        near = self.target_offset(target)
        sense = (self.wordnet.given_sense(wnid, near) if wnid else None) or self.wordnet.choose_sense(name, near)
        if sense is None:
            return Verdict(None)
        offset = sense.synset.offset
        if offset in self.by_offset:
            return Verdict(f"same synset as target {self.by_offset[offset]}", sense)
        if self.nested:
            for anc in self.wordnet.ancestors(offset):
                if anc in self.by_offset:
                    return Verdict(f"hyponym of target {self.by_offset[anc]}", sense)
            for off, t in self.by_offset.items():
                if offset in self.wordnet.ancestors(off):
                    return Verdict(f"hypernym of target {t}", sense)
        return Verdict(None, sense)

    def check(self, name: str, wnid: str | None = None, target: str | None = None) -> str | None:
        """Why ``name`` leaks a target class, or None when it does not."""
        return self.screen(name, wnid, target).reason


class Vocabulary:
    """The names a neighbor may take (e.g. the classes of an image pool); a proposed name maps onto one entry.

    Example:
        >>> vocab = Vocabulary([Entry("tabby", ["tabby", "tabby cat"], "n02123045")])
        >>> vocab.match("Tabby cats").wnid
        'n02123045'
    """

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.names = NameIndex()
        self.by_wnid: dict[str, Entry] = {}
        for i, e in enumerate(entries):
            for n in [e.name, *e.synonyms]:
                self.names.add(n, i)
            if e.wnid:
                self.by_wnid[e.wnid] = e

    def match(self, name: str, wnid: str | None = None, prefer=None) -> Entry | None:
        """The vocabulary entry ``name`` (or ``wnid``) stands for, or None.

        Args:
            prefer: when several entries share the name (ImageNet has two ``crane`` classes), the one with the
                smallest ``prefer(entry)`` wins; by default the first.
        """
        if wnid and wnid in self.by_wnid:
            return self.by_wnid[wnid]
        found = [self.entries[i] for i in self.names.get_all(name)]
        if len(found) > 1 and prefer is not None:
            return min(found, key=prefer)
        return found[0] if found else None

    def __len__(self) -> int:
        return len(self.entries)


def _entry(name: str, words: str | None = None) -> Entry:
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
