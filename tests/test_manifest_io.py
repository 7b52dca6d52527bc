"""``neighbors.json`` has one reader and one writer: :mod:`neighbor_lt.neighbors.manifest`."""

import ast
import json
from pathlib import Path

import pytest

from neighbor_lt.neighbors.manifest import (
    MANIFEST_NAME,
    ManifestError,
    find_manifest,
    load_manifest,
    save_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = {
    "version": 1,
    "backend": "static",
    "targets": [{"index": 0, "name": "tench"}],
    "auxiliary": [{"name": "goldfish", "neighbor_of": ["tench"]}],
}


def test_save_then_load_round_trips_and_keeps_an_unchanged_file(tmp_path):
    path = tmp_path / "neighbors" / MANIFEST_NAME
    assert save_manifest({**MANIFEST, "created": "a"}, path)
    assert load_manifest(path) == {**MANIFEST, "created": "a"} == load_manifest(path.parent)
    assert not save_manifest({**MANIFEST, "created": "b"}, path)  # only the stamp differs: the file is kept
    assert load_manifest(path)["created"] == "a"


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "not found: run the neighbors stage first"),
        ("{not json", "is not valid JSON"),
        (json.dumps({**MANIFEST, "version": 2}), "unsupported neighbor manifest version 2"),
        (json.dumps([1, 2]), "unsupported neighbor manifest version None"),
    ],
)
def test_an_unusable_manifest_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / MANIFEST_NAME
    if text is not None:
        path.write_text(text)
    with pytest.raises(ManifestError, match=message) as caught:
        load_manifest(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_validate_names_the_bad_entries(tmp_path):
    auxiliary = [{"name": "goldfish", "neighbor_of": ["trout"]}, {"neighbor_of": ["tench"]}, {"name": "koi"}]
    save_manifest({**MANIFEST, "auxiliary": auxiliary}, tmp_path / MANIFEST_NAME)
    assert load_manifest(tmp_path)["auxiliary"] == auxiliary  # read as it is without validate
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path, validate=True)
    message = str(caught.value)
    assert "'goldfish' is a neighbor of unknown target(s) ['trout']" in message
    assert "auxiliary[1] has no 'name'" in message and "'koi' has no 'neighbor_of' list" in message


def test_find_manifest_beside_an_aux_set_in_the_curate_layout(tmp_path):
    data = tmp_path / "out" / "aux_dataset" / "data"
    data.mkdir(parents=True)
    (data / "train-00000-of-00001.parquet").write_bytes(b"")
    assert find_manifest(data.parent) is None
    save_manifest(MANIFEST, tmp_path / "out" / "neighbors" / MANIFEST_NAME)
    expected = str(tmp_path / "out" / "neighbors" / MANIFEST_NAME)
    assert find_manifest(data.parent) == expected
    assert find_manifest(data / "train-00000-of-00001.parquet") == expected
    assert find_manifest(str(data / "*.parquet")) == expected
    save_manifest(MANIFEST, data.parent / MANIFEST_NAME)  # one inside the folder comes first
    assert find_manifest(data.parent) == str(data.parent / MANIFEST_NAME)
    assert find_manifest("someone/aux-set") is None  # a Hub id: nothing local to look beside


def test_no_other_module_builds_a_neighbors_json_path():
    """Only neighbors/manifest.py names the file in code (docstrings and help texts may mention it)."""
    found = []
    for folder in ("src", "recipes", "benchmarks", "space"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.endswith("neighbors/manifest.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value == MANIFEST_NAME:
                    found.append(f"{relative}:{node.lineno}")
    assert not found, f"build the path with neighbor_lt.neighbors.manifest instead: {found}"
