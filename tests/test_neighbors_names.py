"""One name normalizer (neighbors/names.py) for the leak guard, vocabularies, merge_label_space and the reply parser;
WordNet senses chosen with the target in view; one synset, one auxiliary class; no import cycle in neighbor_lt."""

import ast
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from neighbor_lt.configs import ConfigError
from neighbor_lt.data import merge_label_space
from neighbor_lt.neighbors.base import Candidate, Proposal, TargetQuery
from neighbor_lt.neighbors.guard import Entry, LeakGuard, Vocabulary, load_vocabulary
from neighbor_lt.neighbors.llm import read_reply
from neighbor_lt.neighbors.manifest import assemble
from neighbor_lt.neighbors.names import NameIndex, name_problem, normalize, same_name
from neighbor_lt.neighbors.wordnet import WordNet

SRC = Path(__file__).resolve().parents[1] / "src" / "neighbor_lt"

# (target class, a spelling an LLM returned for it that the old guard kept): issue 13, case 3
PLANTED_LEAKS = [
    ("goldfish", "gold fish"), ("bullfrog", "bull frog"), ("jellyfish", "jelly fish"), ("ladybug", "lady bug"),
    ("basketball", "basket ball"), ("bathtub", "bath tub"), ("orangutan", "orang-utan"), ("panda", "Pandas"),
    ("koala", "Koalas"), ("tarantula", "Tarantulas"), ("teddy bear", "Teddy-Bears"), ("sea lion", "sealions"),
    ("wolf", "Wolves"), ("mouse", "mice"), ("snowman", "snow-men"), ("potato", "POTATOES"),
    ("lesser_panda", "lesser pandas"), ("Crème brûlée", "creme brulee"),
]  # fmt: skip


@pytest.fixture(scope="module")
def wordnet():
    return WordNet.load()


@pytest.mark.parametrize("target, spelling", PLANTED_LEAKS)
def test_every_spelling_of_a_target_is_a_leak(target, spelling):
    assert same_name(target, spelling) and NameIndex({target: target}).get(spelling) == target
    assert LeakGuard([Entry(target, [target])]).check(spelling) == f"matches target {target}"  # no WordNet needed


def test_normalizer_keeps_different_names_apart():
    for a, b in [("tub", "tube"), ("pin", "pine"), ("cap", "cape"), ("bathtub", "bath towel"), ("goldfish", "gold"),
                 ("red fox", "kit fox"), ("lion", "sea lion"), ("bus", "bush")]:  # fmt: skip
        assert not same_name(a, b), (a, b)
    assert normalize("Teddy-Bears") == normalize("teddy bear") == "teddybear"


@pytest.mark.parametrize(
    "name, problem",
    [
        ("Egyptian cat", None), ("St. Bernard", None), ("jack-o'-lantern", None), ("forget-me-not", None),
        ("Bird of paradise", None), ("null", "a placeholder"), ("None", "a placeholder"), ("Error", "sentence"),
        ("Unfortunately", "sentence"), ("I cannot help with that request", "sentence"), ("Rate limit exceeded", "sentence"),
        ("I'm not sure what you mean by tabby", "words"), ("The tabby looks like other cats", "sentence"),
        ("see https://example.com", "markup"), ("x", "too short"), ("42", "no letters"), ("\u91d1\u9b5a", "Latin"),
    ],
)  # fmt: skip
def test_name_shape(name, problem):
    found = name_problem(name)
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize(
    "reply",
    [
        "Unfortunately, I cannot help with that request.",
        "Error: rate limit exceeded",
        "null",
        "I'm not sure what you mean by tabby.",
        "I\u2019m sorry, but I can\u2019t assist with that.",
        '{"error": {"message": "Invalid API key", "code": 401}}',
        "[]",
        "None",
    ],
)
def test_a_reply_that_is_not_a_list_gives_no_names(reply):
    parsed = read_reply(reply)
    assert parsed.names == [] and parsed.form is None


@pytest.mark.parametrize(
    "reply, names",
    [
        ("Here are three: koi, crucian carp, tench.", ["koi", "crucian carp", "tench"]),
        ("Sure!\nkoi\ncrucian carp\n\nHope this helps!", ["koi", "crucian carp"]),
        ("koi", ["koi"]),
        ("I found these [koi, tench, null] for you.", ["koi", "tench"]),
        ('["koi", 42, null, {"name": "tench"}]', ["koi", "tench"]),
        ("- koi\n- Error: none found\n- tench", ["koi", "tench"]),
    ],
)
def test_a_list_in_any_form_gives_its_names(reply, names):
    assert read_reply(reply).names == names


def test_merge_label_space_uses_the_same_normalizer():
    features = Features({"label": ClassLabel(names=["Gold Fish", "koi"]), "neighbor_of": Sequence(Value("string"))})
    aux = Dataset.from_dict({"label": [0, 1], "neighbor_of": [["tabby"], ["tabby"]]}, features=features)
    with pytest.raises(ConfigError, match="equal target class names"):
        merge_label_space(["goldfish", "tabby"], aux)


@pytest.mark.parametrize(
    "name, target, wnid, corrected",
    [
        ("lynx", "n02125311", "n02127052", True),  # next to cougar: the wildcat, not the text browser
        ("tiger", "n02129165", "n02129604", True),  # next to lion: Panthera tigris, not "a fierce person"
        ("gibbon", "n02480495", "n02483362", True),  # next to orangutan: the ape, not Edward Gibbon
        ("wasp", "n02206856", "n02212062", True),  # next to bee: the insect, not a person
        ("scorpion", "n01774750", "n01770393", True),  # next to tarantula: the arachnid, not Scorpio
        ("Chihuahua", "n02086079", "n02085620", True),  # next to Pekinese: the dog, not the city
        ("American lobster", "n01985128", "n01983481", True),  # next to crayfish: the animal, not the food
        ("banana", "n07747607", "n07753592", True),  # next to orange: the fruit (Tiny-ImageNet's id)
        ("goldfish", "n02206856", "n01443537", False),  # one sense only: nothing to correct
    ],
)
def test_wordnet_sense_closest_to_the_target(wordnet, name, target, wnid, corrected):
    choice = wordnet.choose_sense(name, near=wordnet.synset(target).offset)
    assert choice.synset.wnid == wnid and choice.corrected == corrected and choice.suspect is None
    assert choice.distance > 0 and 0 < choice.similarity < 1


def test_target_sense_without_a_wnid_is_one_a_photo_shows(wordnet):
    assert wordnet.target_sense(None, ["tiger"]).synset.wnid == "n02129604"
    assert wordnet.target_sense(None, ["Chihuahua"]).synset.wnid == "n02085620"
    assert wordnet.target_sense("n02085620", ["anything"]).synset.wnid == "n02085620"
    assert wordnet.lookup("gold fish")[0].wnid == "n01443537"  # split / joined / hyphenated spellings
    assert wordnet.lookup("orang-utan")[0].wnid == "n02480495"


def test_static_names_get_the_pools_ids_and_one_synset_is_one_class(wordnet):
    """Issue 13 cases 4 and 5: synonyms collapse; bare names are read in the sense next to their target."""
    queries = [
        TargetQuery(0, "tarantula", "tarantula", count=500, num_requested=3),
        TargetQuery(1, "Pekinese", "Pekinese", count=50, num_requested=3),
        TargetQuery(2, "brown bear", "brown bear", count=5, num_requested=3),
        TargetQuery(3, "cougar", "cougar", count=5, num_requested=3),
    ]
    proposals = [
        Proposal([Candidate("scorpion"), Candidate("tick")]),
        Proposal([Candidate("Chihuahua"), Candidate("Chihuahuas")]),
        Proposal([Candidate("polar bear"), Candidate("ice bear"), Candidate("grizzly"), Candidate("Bruins")]),
        Proposal([Candidate("lynx"), Candidate("catamount"), Candidate("tiger")]),
    ]
    guard = LeakGuard([Entry(q.name, [q.query]) for q in queries], wordnet=wordnet)
    manifest = assemble(queries, proposals, guard)
    aux = {a["name"]: a for a in manifest["auxiliary"]}
    assert aux["scorpion"]["wnid"] == "n01770393" and aux["Chihuahua"]["wnid"] == "n02085620"
    assert aux["lynx"]["wnid"] == "n02127052" and aux["tiger"]["wnid"] == "n02129604"
    assert aux["lynx"]["sense_corrected"] and aux["lynx"]["distance"] == [2] and aux["lynx"]["suspect"] is None
    assert aux["polar bear"]["neighbor_of"] == ["brown bear"] and "ice bear" not in aux  # one synset, one class
    bear, cat = manifest["targets"][2], manifest["targets"][3]
    reasons = {d["name"]: d["reason"] for d in bear["dropped"]}
    assert reasons["ice bear"] == "duplicate: same synset as polar bear"
    assert reasons["grizzly"] == "hyponym of target brown bear"
    assert reasons["Bruins"] == "same synset as target brown bear"  # a lemma of the target's synset, plural
    # "catamount" names the lynx and the cougar: read next to cougar it is the cougar itself
    assert {d["name"]: d["reason"] for d in cat["dropped"]}["catamount"] == "same synset as target cougar"
    assert manifest["summary"]["senses_corrected"] >= 4 and manifest["summary"]["mean_distance"] > 0


def test_vocabulary_with_two_classes_of_one_name_takes_the_one_near_the_target(wordnet):
    vocab = Vocabulary([Entry("crane", ["crane"], "n03126707"), Entry("crane", ["crane"], "n02012849")])
    heron = TargetQuery(0, "n02009912", "American egret", wnid="n02009912", num_requested=1)
    forklift = TargetQuery(1, "n03384352", "forklift", wnid="n03384352", num_requested=1)
    guard = LeakGuard([Entry(q.name, [q.query], q.wnid) for q in (heron, forklift)], wordnet=wordnet)
    manifest = assemble([heron, forklift], [Proposal([Candidate("Cranes")])] * 2, guard, vocab)
    assert [t["scores"][0]["wnid"] for t in manifest["targets"]] == ["n02012849", "n03126707"]
    assert load_vocabulary(["crane"]).match("cranes").name == "crane"


def import_graph() -> dict[str, set[str]]:
    """Module of neighbor_lt -> the modules of neighbor_lt it imports, at the top or inside a function (relative
    imports resolved; ``from neighbor_lt.x import y`` counts as importing ``neighbor_lt.x.y`` when that is a module)."""

    def name_of(path):
        parts = ["neighbor_lt", *path.relative_to(SRC).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if base.startswith("neighbor_lt"):
                    imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("neighbor_lt")}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 30 and graph["neighbor_lt.neighbors.names"] == set()  # names is a leaf
    assert "neighbor_lt.curate" in graph["neighbor_lt.neighbors.stage"]  # the edges are read (StageError)
    assert "neighbor_lt.configs" in graph["neighbor_lt.retrieval.stages"]  # relative imports resolved

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = {m: sorted(n for n in graph[m] if m in reach(n)) for m in graph if m in reach(m)}
    assert cycles == {}, cycles
