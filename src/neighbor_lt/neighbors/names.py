"""Class names: one normalizer, one shape check. A leaf module (standard library only), shared by the leak guard,
the neighbor backends, the vocabulary and ``neighbor_lt.data.merge_label_space``.

Two names are the same class name when their comparison keys meet. A key folds accents, case, whitespace,
hyphens, underscores and punctuation, joins the words (``gold fish`` = ``goldfish``, ``orang-utan`` =
``orangutan``) and folds plurals; because English plurals are irregular, a name has a few keys (``wolves`` ->
``wolf``, ``tarantulas`` -> ``tarantula``, ``boxes`` -> ``box``, ``mice`` -> ``mouse``) and two names match when any
of their keys is shared. :class:`NameIndex` does that lookup.

Example:
    >>> same_name("Gold fish", "goldfish"), same_name("Pandas", "panda"), same_name("orang-utan", "Orangutan")
    (True, True, True)
    >>> name_problem("I cannot help with that request")
    'reads as a sentence or an error message'
"""

from __future__ import annotations

import re
import unicodedata

WNID_RE = re.compile(r"^n(\d{8})$")

# Irregular plurals that end up in class names (animals, plants, objects).
_IRREGULAR = {
    "mice": "mouse", "lice": "louse", "geese": "goose", "teeth": "tooth", "feet": "foot", "children": "child",
    "oxen": "ox", "people": "person", "men": "man", "women": "woman", "cacti": "cactus", "fungi": "fungus",
    "octopi": "octopus", "larvae": "larva", "antennae": "antenna", "wolves": "wolf", "knives": "knife",
    "leaves": "leaf", "halves": "half", "calves": "calf", "shelves": "shelf", "loaves": "loaf", "thieves": "thief",
    "wives": "wife", "elves": "elf", "scarves": "scarf", "hooves": "hoof", "dice": "die",
}  # fmt: skip
# Singular words that end in s (the -s rule would cut them); -as and -os endings are usually plurals in class names
# (pandas, koalas, tarantulas, rhinos, flamingos), so they are cut.
_KEEP_S = ("ss", "us", "is")

# Words no class name contains but replies, refusals and error messages do (whole words, lower case).
_PROSE_WORDS = frozenset(
    "i i'm im i've i'd i'll me my we you your you're sorry unfortunately cannot can't cant unable apologize "
    "apologies please sure certainly here hope help helps request however thank thanks assist assistant "
    "is are was were be been am it it's they this these those what which would could should will not don't "
    "doesn't isn't mean looks seems error errors exception exceeded failed failure invalid denied forbidden "
    "unauthorized unavailable timeout traceback".split()
)
# Whole replies / items that are a placeholder, not a name.
_NULL_NAMES = frozenset("null none nil undefined n/a na nan unknown empty true false ok yes no".split())
# A token ending in a period that is an abbreviation, not the end of a sentence (St. Bernard, Acacia sp.).
_ABBREVIATION = re.compile(r"^[A-Za-z]{1,5}\.$")
_MAX_WORDS = 6
_MAX_CHARS = 80


def is_wnid(name: str) -> bool:
    """Whether ``name`` looks like a WordNet noun id (``n01443537``)."""
    return bool(WNID_RE.match(str(name).strip()))


def clean_name(name: str) -> str:
    """A display name: control characters dropped, whitespace collapsed, outer quotes / markup stripped."""
    text = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in str(name))
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" \"'`*_.;:,").strip()


def split_synonyms(words: str) -> list[str]:
    """``"teddy, teddy bear"`` -> ``["teddy", "teddy bear"]`` (the Tiny-ImageNet / ImageNet words format)."""
    return [w.strip() for w in str(words).split(",") if w.strip()]


def tokens(name: str) -> list[str]:
    """The words of a name: accents removed, case folded, split on whitespace, hyphens, underscores, punctuation."""
    text = unicodedata.normalize("NFKD", str(name))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return re.sub(r"[^\w]+|_", " ", text).split()


def singular(word: str) -> str:
    """The usual singular of one folded word (a rule, not a dictionary: ``pandas`` -> ``panda``)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith(_KEEP_S):
        return word
    if word.endswith("s"):
        return word[:-1]
    return word


def _word_forms(word: str) -> list[str]:
    """The word and every singular it may stand for (for the last word of a name, where English puts the plural)."""
    forms = [word, singular(word)]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])  # kiwis, irises -> irise (harmless)
    if len(word) > 4 and word.endswith("es"):
        forms.append(word[:-2])  # potatoes, atlases, buses
    if len(word) > 4 and word.endswith("ves"):
        forms += [word[:-3] + "f", word[:-3] + "fe"]  # wolves, knives
    if len(word) > 4 and word.endswith("men"):
        forms.append(word[:-3] + "man")  # fishermen, snowmen
    return list(dict.fromkeys(forms))


def normalize(name: str) -> str:
    """The canonical comparison key of a name: folded words, each made singular, joined without separators.

    Example:
        >>> normalize("  Teddy-Bears ") == normalize("teddy bear") == normalize("TEDDY_BEAR") == "teddybear"
        True
    """
    return "".join(singular(w) for w in tokens(name))


def name_keys(name: str) -> list[str]:
    """Every comparison key of a name, the canonical one (:func:`normalize`) first; two names match when their keys
    meet. Empty for a name with no letters or digits.

    Example:
        >>> name_keys("Lady Bugs")[:2]
        ['ladybug', 'ladybugs']
    """
    words = tokens(name)
    if not words:
        return []
    keys = ["".join(singular(w) for w in words), "".join(words)]
    heads = {"".join(words[:-1]), "".join(singular(w) for w in words[:-1])}
    for head in sorted(heads):
        keys += [head + form for form in _word_forms(words[-1])]
    return list(dict.fromkeys(keys))


def same_name(a: str, b: str) -> bool:
    """Whether two names are spellings of one class name (case, spaces, hyphens, plurals).

    Example:
        >>> same_name("bath tub", "Bathtubs"), same_name("bathtub", "bath towel")
        (True, False)
    """
    return bool(set(name_keys(a)) & set(name_keys(b)))


class NameIndex:
    """Names -> values, looked up by any spelling of the name (:func:`name_keys`); the first value added wins a key.

    Example:
        >>> index = NameIndex({"goldfish": "n01443537", "koala": "n01882714"})
        >>> index.get("Gold-fish"), index.get("Koalas"), index.get("koi")
        ('n01443537', 'n01882714', None)

    Args:
        items: optional ``{name: value}`` to start with.
    """

    def __init__(self, items: dict | None = None):
        self._by_key: dict[str, list] = {}
        for name, value in (items or {}).items():
            self.add(name, value)

    def add(self, name: str, value) -> None:
        """Index ``value`` under every key of ``name``."""
        for key in name_keys(name):
            bucket = self._by_key.setdefault(key, [])
            if value not in bucket:
                bucket.append(value)

    def get_all(self, name: str) -> list:
        """Every value whose name matches ``name``, in the order they were added."""
        found = []
        for key in name_keys(name):
            for value in self._by_key.get(key, ()):
                if value not in found:
                    found.append(value)
        return found

    def get(self, name: str, default=None):
        """The first value whose name matches ``name``, or ``default``."""
        for key in name_keys(name):
            if self._by_key.get(key):
                return self._by_key[key][0]
        return default

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


def is_latin(text: str) -> bool:
    """Whether most letters of ``text`` are ASCII (a reply in another script is a failed class, not new names)."""
    letters = [c for c in str(text) if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) >= 0.6 * len(letters)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name (a sentence, an error message, a placeholder, markup), or None.

    Example:
        >>> [name_problem(n) for n in ["Egyptian cat", "St. Bernard", "null", "Error: rate limit exceeded"]]
        [None, None, 'a placeholder, not a name', 'reads as a sentence or an error message']
    """
    text = clean_name(name)
    words = text.split()
    if len(text) < 2 or not any(c.isalpha() for c in text):
        return "too short or no letters"
    if " ".join(tokens(text)) in _NULL_NAMES:
        return "a placeholder, not a name"
    if len(text) > _MAX_CHARS or len(words) > _MAX_WORDS:
        return f"longer than {_MAX_WORDS} words / {_MAX_CHARS} characters"
    if not is_latin(text):
        return "not in Latin script"
    if re.search(r"[!?;{}<>=|\\@#$%^~]|https?:|www\.", text):
        return "punctuation or markup a name does not have"
    if any(w.endswith(".") and not _ABBREVIATION.match(w) for w in words[:-1]):
        return "reads as a sentence or an error message"
    if {w.replace("\u2019", "'").strip(".,:'\"()").lower() for w in words} & _PROSE_WORDS:
        return "reads as a sentence or an error message"
    return None
