"""One owner per artifact and per fact: the run folder's result files, the results-file writer, the group names."""

import ast
from pathlib import Path

from neighbor_lt.run_folder import EVAL_FILE, PER_CLASS_FILE

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("src", "recipes", "benchmarks", "space")


def _python_files():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _constants(tree):
    """String constants of the code, docstrings left out (they may name a file)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def _places_outside(owner: str, nodes, matches) -> list[str]:
    """``file:line`` of every node (``nodes(tree)``) that ``matches``, in any module but ``owner``."""
    return [
        f"{relative}:{node.lineno}"
        for relative, tree in _python_files()
        if relative != owner
        for node in nodes(tree)
        if matches(node)
    ]


def test_run_folder_result_files_are_named_in_run_folder_only():
    """eval_results.json and per_class_accuracy.csv are opened through RunFolder: no other module names them."""
    found = _places_outside(
        "src/neighbor_lt/run_folder.py", _constants, lambda node: node.value in (EVAL_FILE, PER_CLASS_FILE)
    )
    assert not found, f"read and write them through neighbor_lt.run_folder.RunFolder instead: {found}"


def test_results_files_have_one_writer():
    """The results-file writer (and the section format) is defined once, in neighbor_lt.results_md."""
    found = _places_outside(
        "src/neighbor_lt/results_md.py",
        ast.walk,
        lambda node: isinstance(node, ast.FunctionDef) and node.name in ("append_results", "results_section"),
    )
    assert not found, f"append through neighbor_lt.results_md.append_results instead: {found}"


def test_group_names_are_defined_once():
    """Overall / Many / Medium / Few are named in neighbor_lt.metrics; others import them."""
    found = _places_outside(
        "src/neighbor_lt/metrics.py",
        ast.walk,
        lambda node: (
            isinstance(node, ast.Tuple)
            and [getattr(e, "value", None) for e in node.elts][-3:] == ["many", "medium", "few"]
        ),
    )
    assert not found, f"use neighbor_lt.metrics.GROUPS / ACCURACY_KEYS instead: {found}"


def test_no_ticket_numbers_in_code_or_cards():
    """What users read (code, recipes, cards, reports) names no issue or ticket numbers."""
    import re

    pattern = re.compile(r"\b(issue|ticket)s? #?\d+", re.IGNORECASE)
    found = []
    for folder in (*FOLDERS, "hub_cards"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md", ".yaml", ".txt") and path.is_file():
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if pattern.search(line):
                        found.append(f"{path.relative_to(ROOT).as_posix()}:{number}")
    assert not found, f"ticket numbers in what users read: {found}"


def test_entry_points_are_thin_and_the_library_is_in_rooms_a_reader_can_follow():
    """Recipes only parse and call the library (under 60 lines); nothing loads our Python files by path or runs a
    recipe as a subprocess; no module in src/ is over 700 lines, no function over 100."""
    long_recipes = [p.name for p in (ROOT / "recipes").glob("*.py") if len(p.read_text().splitlines()) >= 60]
    assert not long_recipes, f"move the logic of {long_recipes} into src/neighbor_lt"
    by_path = []
    for relative, tree in _python_files():
        for node in ast.walk(tree):
            name = getattr(node, "attr", None) or getattr(node, "id", None)
            if name in ("spec_from_file_location", "runpy") or (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("recipes/")
                and node.value.endswith(".py")
            ):
                by_path.append(f"{relative}:{node.lineno}")
    assert not by_path, f"call the library in this process instead: {by_path}"
    big = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 700:
            big.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                big.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}")
    assert not big, f"split these: {big}"


def test_usable_cores_are_counted_in_one_place():
    """The cores a process may use (affinity mask, else cpu_count) are counted by neighbor_lt.cores only."""
    found = _places_outside(
        "src/neighbor_lt/cores.py",
        ast.walk,
        lambda node: isinstance(node, ast.Attribute) and node.attr == "sched_getaffinity",
    )
    assert not found, f"call neighbor_lt.cores.usable_cores instead: {found}"
