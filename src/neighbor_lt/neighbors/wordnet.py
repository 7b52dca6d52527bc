"""Offline neighbor search in the WordNet 3.0 noun hierarchy, read straight from the database files.

The files are those of Debian's ``wordnet-base`` (``/usr/share/wordnet/data.noun``, ``index.noun``, ``noun.exc``).
They are parsed here rather than through NLTK, whose reader also needs a ``lexnames`` file that package lacks; the
noun part is ~82k synsets and loads in about a second.

A neighbor of a target synset is a sibling or cousin: a synset whose lowest common hypernym with the target lies at
most ``depth`` steps above the target. Candidates are ranked by Wu-Palmer similarity (ties by path distance, then by
wnid, so the order is deterministic).

A name proposed by an LLM or a mapping has no synset of its own: :meth:`WordNet.choose_sense` takes the noun sense
closest to the target class it was proposed for (``lynx`` next to ``cougar`` is the wildcat, not the text browser) and
says whether it differs from the most frequent sense and whether it is a thing a photo can show.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections import deque
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from neighbor_lt.neighbors.base import Candidate, Checks, NeighborBackend, Proposal, TargetQuery
from neighbor_lt.neighbors.names import WNID_RE, is_wnid, name_keys, normalize

logger = logging.getLogger(__name__)

WORDNET_DIR = os.environ.get("WORDNET_DIR", "/usr/share/wordnet")

# WordNet's lexicographer files for nouns (the second field of a data.noun line).
LEXNAMES = dict(enumerate(
    "noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition noun.communication "
    "noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person "
    "noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time".split(), start=3,
))  # fmt: skip
# Kinds of synset a photo can show; a sense of another kind (a person, a place, a text browser) is suspect as a
# neighbor unless the target is of that kind too.
VISUAL_LEXNAMES = frozenset(
    "noun.Tops noun.animal noun.artifact noun.body noun.food noun.object noun.phenomenon noun.plant "
    "noun.substance".split()
)


@dataclass(frozen=True)
class Synset:
    """One noun synset: its offset, lemma names (underscores kept), gloss and lexicographer file."""

    offset: int
    lemmas: tuple[str, ...]
    gloss: str
    lexname: str = ""

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


@dataclass(frozen=True)
class SenseChoice:
    """The noun sense chosen for a name, with the target in view.

    Args:
        synset: the chosen sense.
        rank: its place among the name's senses (0: WordNet's most frequent sense).
        similarity: Wu-Palmer similarity to the target (None without a target).
        distance: path distance to the target in edges (None without a target).
        suspect: the sense's lexicographer file when it is not a thing a photo shows (``noun.person``,
            ``noun.location`` ...) and the target is not of that kind either; None otherwise.
    """

    synset: Synset
    rank: int
    similarity: float | None = None
    distance: int | None = None
    suspect: str | None = None

    @property
    def corrected(self) -> bool:
        """Whether the choice differs from the name's most frequent sense."""
        return self.rank > 0


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
                offset, lex_filenum, w_cnt = int(fields[0]), int(fields[1]), int(fields[3], 16)
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
                self.synsets[offset] = Synset(offset, lemmas, gloss.strip(), LEXNAMES.get(lex_filenum, ""))
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
        self._by_key: dict[str, tuple[int, ...]] | None = None
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
        """Noun synsets of a name, most frequent sense first.

        Tries the name as written with WordNet's plural rules (``morphy``), then any spelling of it that
        ``neighbor_lt.neighbors.names`` counts as the same name (``gold fish``, ``orang-utan``).
        """
        key = re.sub(r"\s+", "_", name.strip().lower())
        for form in self._base_forms(key):
            if form in self.index:
                return [self.synsets[o] for o in self.index[form]]
        if self._by_key is None:  # built on the first miss only
            by_key: dict[str, list[int]] = {}
            for lemma, offsets in self.index.items():
                bucket = by_key.setdefault(normalize(lemma), [])
                bucket.extend(o for o in offsets if o not in bucket)
            self._by_key = {k: tuple(v) for k, v in by_key.items()}
        for key in name_keys(name):
            if key in self._by_key:
                return [self.synsets[o] for o in self._by_key[key]]
        return []

    def choose_sense(self, name: str, near: int | None = None) -> SenseChoice | None:
        """The noun sense of ``name`` meant next to the synset ``near`` (an offset), or None if WordNet lacks it.

        With ``near``: the sense with the highest Wu-Palmer similarity to it (ties: shorter path, a thing a photo
        shows, the more frequent sense). Without: the most frequent sense that a photo shows, persons last.

        Example:
            >>> wn = WordNet.load()
            >>> choice = wn.choose_sense("lynx", near=wn.synset("n02125311").offset)  # next to cougar
            >>> choice.synset.wnid, choice.corrected, choice.suspect
            ('n02127052', True, None)
        """
        senses = self.lookup(name)
        if not senses:
            return None
        near_kind = self.synsets[near].lexname if near is not None else None

        def suspect(synset: Synset) -> str | None:
            return None if synset.lexname in VISUAL_LEXNAMES or synset.lexname == near_kind else synset.lexname

        if near is None:
            rank = min(
                range(len(senses)),
                key=lambda i: (suspect(senses[i]) is not None and senses[i].lexname != "noun.person",
                               senses[i].lexname == "noun.person", i),
            )  # fmt: skip
            return SenseChoice(senses[rank], rank, suspect=suspect(senses[rank]))
        scored = []
        for i, synset in enumerate(senses):
            sim, dist = self.similarity(near, synset.offset)
            scored.append(((sim, -(dist if dist >= 0 else 10**6), suspect(synset) is None, -i), i, sim, dist))
        _, rank, sim, dist = max(scored)
        return SenseChoice(senses[rank], rank, round(sim, 4), dist, suspect(senses[rank]))

    def given_sense(self, wnid: str, near: int | None = None) -> SenseChoice | None:
        """A wnid's synset as a ``SenseChoice`` (with its similarity / distance to ``near``); None if unknown."""
        try:
            synset = self.synset(wnid)
        except KeyError:
            return None
        if near is None:
            return SenseChoice(synset, 0)
        sim, dist = self.similarity(near, synset.offset)
        return SenseChoice(synset, 0, round(sim, 4), dist)

    def target_sense(self, wnid: str | None, names: list[str]) -> SenseChoice | None:
        """The synset of a target class: its wnid's, else the first of ``names`` WordNet knows, in the sense a photo
        shows (``tiger`` the cat, not the fierce person)."""
        choice = self.given_sense(wnid) if wnid else None
        if choice is not None:
            return choice
        for name in names:
            if name and not is_wnid(name):
                choice = self.choose_sense(name)
                if choice is not None:
                    return choice
        return None

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


@dataclass
class WordNetOptions:
    """Options of the ``wordnet`` backend."""

    depth: int = field(default=3, metadata={"help": "wordnet: hypernym steps above the target to search."})
    min_similarity: float | None = field(default=None, metadata={"help": "wordnet: minimum Wu-Palmer similarity."})
    max_distance: int | None = field(default=None, metadata={"help": "wordnet: maximum path distance (edges)."})
    max_candidates: int = field(default=50, metadata={"help": "wordnet: ranked candidates kept per target."})
    wordnet_dir: str | None = field(default=None, metadata={"help": "WordNet database folder (/usr/share/wordnet)."})

    def problems(self) -> list[str]:
        checks = Checks(self)
        checks.positive_int("depth", "max_candidates")
        checks.positive_int("max_distance", optional=True, minimum=0)
        checks.number("min_similarity", "a number in [0, 1] or null", 0, 1, optional=True)
        return checks.problems


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
    Options = WordNetOptions
    uses_wordnet = True
    asks_by_name = False  # also finds a target by its wnid (a wnid column beside numeric labels)

    def __init__(self, options: WordNetOptions | None = None, /, **values):
        super().__init__(options, **values)
        o = self.options
        self.depth, self.min_similarity, self.max_distance = o.depth, o.min_similarity, o.max_distance
        self.max_candidates = o.max_candidates
        self.wordnet = WordNet.load(o.wordnet_dir or WORDNET_DIR)

    def settings(self):
        return {
            "depth": self.depth,
            "min_similarity": self.min_similarity,
            "max_distance": self.max_distance,
            "max_candidates": self.max_candidates,
        }

    def find(self, query: TargetQuery) -> Synset | None:
        """The synset of a target: its wnid, else its query name or a synonym (in a sense a photo shows)."""
        wnid = query.wnid or (query.name if is_wnid(query.name) else None)
        choice = self.wordnet.target_sense(wnid, [query.name, query.query, *query.synonyms])
        return choice.synset if choice is not None else None

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
        for entry in vocabulary.entries:  # a pool's own wnid, else the entry's sense closest to this target
            found = wn.given_sense(entry.wnid) if entry.wnid else wn.choose_sense(entry.name, near=target)
            if found is None:
                continue
            synset = found.synset
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
