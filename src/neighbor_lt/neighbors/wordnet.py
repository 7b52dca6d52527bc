"""Offline neighbor search in the WordNet 3.0 noun hierarchy, read straight from the database files.

The files are those of Debian's ``wordnet-base`` (``/usr/share/wordnet/data.noun``, ``index.noun``, ``noun.exc``).
They are parsed here rather than through NLTK, whose reader also needs a ``lexnames`` file that package lacks; the
noun part is ~82k synsets and loads in about a second.

A neighbor of a target synset is a sibling or cousin: a synset whose lowest common hypernym with the target lies at
most ``depth`` steps above the target. Candidates are ranked by Wu-Palmer similarity (ties by path distance, then by
wnid, so the order is deterministic).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections import deque
from dataclasses import dataclass

from tqdm.auto import tqdm

from neighbor_lt.neighbors.base import Candidate, NeighborBackend, Proposal, TargetQuery

logger = logging.getLogger(__name__)

WORDNET_DIR = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")
WNID_RE = re.compile(r"^n(\d{8})$")


@dataclass(frozen=True)
class Synset:
    """One noun synset: its offset, lemma names (underscores kept) and gloss."""

    offset: int
    lemmas: tuple[str, ...]
    gloss: str

    @property
    def wnid(self) -> str:
        """The ImageNet-style id, ``n`` plus the zero-padded offset."""
        return f"n{self.offset:08d}"

    @property
    def name(self) -> str:
        """The first lemma, human-readable (``teddy bear``)."""
        return self.lemmas[0].replace("_", " ")

    @property
    def names(self) -> list[str]:
        """Every lemma, human-readable."""
        return [lemma.replace("_", " ") for lemma in self.lemmas]


def is_wnid(name: str) -> bool:
    """Whether ``name`` looks like a WordNet noun id (``n01443537``)."""
    return bool(WNID_RE.match(name.strip()))


class WordNet:
    """The WordNet noun hierarchy: synsets, hypernym / hyponym links and lemma lookup.

    Example:
        >>> wn = WordNet.load()
        >>> wn.synset("n01443537").name
        'goldfish'
        >>> round(wn.similarity("n01443537", "n01443537")[0], 2)
        1.0

    Args:
        directory: folder with ``data.noun``, ``index.noun`` and (optionally) ``noun.exc``.
    """

    def __init__(self, directory: str = WORDNET_DIR):
        data_path = os.path.join(directory, "data.noun")
        if not os.path.isfile(data_path):
            raise FileNotFoundError(
                f"WordNet noun database not found at {data_path}: install it with `apt-get install -y wordnet-base` "
                "or set WORDNET_DIR"
            )
        self._ancestors: dict[int, dict[int, int]] = {}
        self.synsets: dict[int, Synset] = {}
        self.hypernyms: dict[int, tuple[int, ...]] = {}
        self.hyponyms: dict[int, tuple[int, ...]] = {}
        with open(data_path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # license header
                    continue
                data, _, gloss = line.partition(" | ")
                fields = data.split()
                offset, w_cnt = int(fields[0]), int(fields[3], 16)
                lemmas = tuple(fields[4 : 4 + 2 * w_cnt : 2])
                i = 4 + 2 * w_cnt
                p_cnt = int(fields[i])
                up, down = [], []
                for j in range(i + 1, i + 1 + 4 * p_cnt, 4):
                    symbol, target, pos = fields[j], int(fields[j + 1]), fields[j + 2]
                    if pos != "n":
                        continue
                    if symbol in ("@", "@i"):
                        up.append(target)
                    elif symbol in ("~", "~i"):
                        down.append(target)
                self.synsets[offset] = Synset(offset, lemmas, gloss.strip())
                self.hypernyms[offset] = tuple(up)
                self.hyponyms[offset] = tuple(down)
        self.index: dict[str, tuple[int, ...]] = {}
        with open(os.path.join(directory, "index.noun"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                fields = line.split()
                p_cnt = int(fields[3])
                synset_cnt = int(fields[2])
                offsets = fields[4 + p_cnt + 2 :]
                self.index[fields[0]] = tuple(int(o) for o in offsets[:synset_cnt])
        self.exceptions: dict[str, str] = {}
        exc_path = os.path.join(directory, "noun.exc")
        if os.path.isfile(exc_path):
            with open(exc_path, encoding="latin-1") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2:
                        self.exceptions[parts[0]] = parts[1]
        logger.info("WordNet: %d noun synsets, %d lemmas from %s", len(self.synsets), len(self.index), directory)

    @classmethod
    @functools.lru_cache(maxsize=2)
    def load(cls, directory: str = WORDNET_DIR) -> WordNet:
        """The parsed database, loaded once per process and directory."""
        return cls(directory)

    # ---- lookup ----

    def synset(self, wnid: str) -> Synset:
        """The synset of a wnid (``n01443537``); KeyError if unknown."""
        match = WNID_RE.match(wnid.strip())
        if not match or int(match.group(1)) not in self.synsets:
            raise KeyError(f"not a WordNet 3.0 noun id: {wnid!r}")
        return self.synsets[int(match.group(1))]

    def lookup(self, name: str) -> list[Synset]:
        """Noun synsets of a name, most frequent sense first, trying WordNet's plural rules (``morphy``)."""
        key = re.sub(r"\s+", "_", name.strip().lower())
        for form in self._base_forms(key):
            if form in self.index:
                return [self.synsets[o] for o in self.index[form]]
        return []

    def resolve(self, name: str) -> Synset | None:
        """The synset a class name stands for: the wnid's synset, else the name's most frequent noun sense."""
        if is_wnid(name):
            try:
                return self.synset(name)
            except KeyError:
                return None
        found = self.lookup(name)
        return found[0] if found else None

    def _base_forms(self, word: str):
        yield word
        if word in self.exceptions:
            yield self.exceptions[word]
        for suffix, ending in (
            ("ses", "s"),
            ("xes", "x"),
            ("zes", "z"),
            ("ches", "ch"),
            ("shes", "sh"),
            ("men", "man"),
            ("ies", "y"),
            ("s", ""),
        ):
            if word.endswith(suffix):
                yield word[: -len(suffix)] + ending

    # ---- hierarchy ----

    def ancestors(self, offset: int) -> dict[int, int]:
        """Every hypernym of a synset (itself included) with its shortest upward distance."""
        if offset not in self._ancestors:
            seen = {offset: 0}
            queue = deque([offset])
            while queue:
                node = queue.popleft()
                for parent in self.hypernyms[node]:
                    if parent not in seen:
                        seen[parent] = seen[node] + 1
                        queue.append(parent)
            self._ancestors[offset] = seen
        return self._ancestors[offset]

    def depth(self, offset: int) -> int:
        """Shortest number of hypernym steps from the synset to a root (``entity`` has depth 0)."""
        return min(d for node, d in self.ancestors(offset).items() if not self.hypernyms[node])

    def similarity(self, a: str | int, b: str | int) -> tuple[float, int]:
        """Wu-Palmer similarity and path distance between two synsets (wnids or offsets).

        Wu-Palmer is ``2 * d(lcs) / (d(a) + d(b))`` with depths counted from 1 at the root along the paths through
        the lowest common subsumer (``lcs``); the distance is the number of edges between ``a`` and ``b`` through it.
        Unrelated synsets give ``(0.0, -1)``.
        """
        a = a if isinstance(a, int) else self.synset(a).offset
        b = b if isinstance(b, int) else self.synset(b).offset
        up_a, up_b = self.ancestors(a), self.ancestors(b)
        best = (0.0, -1)
        for anc in up_a.keys() & up_b.keys():
            lcs_depth = self.depth(anc) + 1
            wup = 2 * lcs_depth / (up_a[anc] + up_b[anc] + 2 * lcs_depth)
            dist = up_a[anc] + up_b[anc]
            if wup > best[0] or (wup == best[0] and (best[1] < 0 or dist < best[1])):
                best = (wup, dist)
        return best

    def descendants(self, offset: int, max_levels: int) -> dict[int, int]:
        """Hyponyms of a synset down to ``max_levels`` steps, with their shortest downward distance."""
        seen = {offset: 0}
        queue = deque([offset])
        while queue:
            node = queue.popleft()
            if seen[node] >= max_levels:
                continue
            for child in self.hyponyms[node]:
                if child not in seen:
                    seen[child] = seen[node] + 1
                    queue.append(child)
        return seen


class WordNetBackend(NeighborBackend):
    """Siblings and cousins from WordNet, ranked by Wu-Palmer similarity; offline and deterministic.

    A target is found by its wnid (``n01443537``), else by its query name and synonyms. Without a vocabulary the
    candidates are the hyponyms of the target's hypernyms up to ``depth`` steps above it (each taken down as many
    levels as it is above the target, plus one); with one, they are the vocabulary's synsets whose lowest common
    hypernym with the target is at most ``depth`` steps above it. The target's own hypernyms and hyponyms never count.

    Example:
        >>> backend = WordNetBackend(depth=2)
        >>> proposal = backend.propose([TargetQuery(0, "n01443537", "goldfish", wnid="n01443537")])[0]
        >>> proposal.status, len(proposal.candidates) > 0
        ('ok', True)

    Args:
        depth: how many hypernym steps above the target the shared ancestor may lie.
        min_similarity: drop candidates with a lower Wu-Palmer similarity (0..1).
        max_distance: drop candidates more than this many edges away from the target.
        max_candidates: keep at most this many ranked candidates per target.
        wordnet_dir: folder of the WordNet database files.
    """

    name = "wordnet"

    def __init__(
        self,
        depth: int = 3,
        min_similarity: float | None = None,
        max_distance: int | None = None,
        max_candidates: int = 50,
        wordnet_dir: str | None = None,
    ):
        super().__init__()
        self.depth = depth
        self.min_similarity = min_similarity
        self.max_distance = max_distance
        self.max_candidates = max_candidates
        self.wordnet = WordNet.load(wordnet_dir or WORDNET_DIR)

    def settings(self):
        return {
            "depth": self.depth,
            "min_similarity": self.min_similarity,
            "max_distance": self.max_distance,
            "max_candidates": self.max_candidates,
        }

    def find(self, query: TargetQuery) -> Synset | None:
        """The synset of a target: its wnid, else its query name or a synonym."""
        for key in [query.wnid, query.name, query.query, *query.synonyms]:
            if key:
                synset = self.wordnet.resolve(key)
                if synset is not None:
                    return synset
        return None

    def _pool(self, target: int, vocabulary) -> dict[int, str]:
        """Candidate offsets -> display name, before similarity ranking."""
        wn = self.wordnet
        up = wn.ancestors(target)
        if vocabulary is None:
            pool = {}
            for anc, steps in up.items():
                if 1 <= steps <= self.depth:
                    for off in wn.descendants(anc, steps + 1):
                        pool.setdefault(off, wn.synsets[off].name)
            return pool
        pool = {}
        for entry in vocabulary.entries:
            synset = wn.resolve(entry.wnid) if entry.wnid else wn.resolve(entry.name)
            if synset is None:
                continue
            shared = up.keys() & wn.ancestors(synset.offset).keys()
            if shared and min(up[a] for a in shared) <= self.depth:
                pool.setdefault(synset.offset, entry.name)
        return pool

    def propose(self, queries, vocabulary=None, cache=None):
        wn = self.wordnet
        out = []
        for q in tqdm(queries, desc="neighbors (wordnet)", unit="class"):
            target = self.find(q)
            if target is None:
                out.append(Proposal.failed(f"{q.query!r} ({q.name}) not found in WordNet"))
                continue
            related = wn.ancestors(target.offset).keys() | wn.descendants(target.offset, 10**6).keys()
            ranked = []
            for off, name in self._pool(target.offset, vocabulary).items():
                if off in related:
                    continue
                sim, dist = wn.similarity(target.offset, off)
                if self.min_similarity is not None and sim < self.min_similarity:
                    continue
                if self.max_distance is not None and dist > self.max_distance:
                    continue
                ranked.append(Candidate(name, wn.synsets[off].wnid, round(sim, 4), dist))
            ranked.sort(key=lambda c: (-c.similarity, c.distance, c.wnid))
            out.append(Proposal(ranked[: self.max_candidates]))
        return out
