"""Reading an LLM's reply as a list of category names, or finding that it is not one (a refusal, prose, ``null``).

One reader for every reply: a JSON object from a schema-constrained request (``{"categories": [...]}``), a JSON
array, a bracketed list, bullets, one name a line or a comma list.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from neighbor_lt.neighbors.names import NameIndex, clean_name, name_problem

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry\b|i can(?:no|')t|i am unable|i'?m unable|i'?m not able|as an ai|i won'?t|"
    r"unfortunately|i apologi[sz]e)",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])\s+")
_DESCRIPTION = re.compile(r"\s+[-\u2013\u2014]\s+|:\s")  # "koi - a carp", "koi: a carp"


@dataclass
class ParsedReply:
    """What :func:`read_reply` made of a reply.

    Args:
        names: the names, in order, duplicates removed (any spelling).
        rejected: ``(item, reason)`` for list items that are not names (a sentence, ``null``, another script).
        form: ``json``, ``brackets``, ``bullets``, ``lines`` or ``inline``; None when the reply is not a list.
    """

    names: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    form: str | None = None


def _json_items(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if lists else None
    if isinstance(value, list):
        return [v.get("name") if isinstance(v, dict) else v for v in value]
    return None


def _split(text: str) -> list[str]:
    return [p for p in (clean_name(p) for p in re.split(r"[,;]", text)) if p]


def _plain_items(lines: list[str]) -> tuple[list[str], str | None]:
    """Items of a reply with no JSON, brackets or bullets: a comma list (maybe after ``...:``) or one name a line.
    Prose is not a list: every item of a one-line list must look like a name."""
    content = [line for line in lines if not line.rstrip().endswith(":")]
    for line in content:  # "Here are three: koi, carp, tench."
        _, colon, tail = line.rpartition(": ")
        parts = _split(tail)
        if colon and len(parts) >= 2 and all(name_problem(p) is None for p in parts):
            return parts, "inline"
    if len(content) == 1:
        parts = _split(content[0])
        return (parts, "inline") if parts and all(name_problem(p) is None for p in parts) else ([], None)
    named = [line for line in content if name_problem(_DESCRIPTION.split(line, maxsplit=1)[0]) is None]
    return (named, "lines") if named else ([], None)


def read_reply(text: str | None) -> ParsedReply:
    """Read a reply as a list of names, or find that it is not one.

    A list is a JSON array (or an object holding one), a bracketed list (``[a, b, c]``, also inside prose),
    numbered or bulleted lines, one name a line, or a comma-separated line (alone or after ``...:``). Code fences,
    markdown emphasis and trailing descriptions (``koi: a colourful carp``, ``koi - ...``) are removed; an item that
    does not look like a name (``neighbor_lt.neighbors.names.name_problem``) is rejected. Free text, refusals,
    ``null`` and error strings give no names.

    Example:
        >>> read_reply("Sure! Here you go:\\n1. **Koi**\\n2. crucian carp - a fish\\n3. koi\\n4. null").names
        ['Koi', 'crucian carp']
        >>> read_reply("Unfortunately, I cannot help with that request.").names
        []
    """
    if not text or not text.strip():
        return ParsedReply()
    body = re.sub(r"```[a-zA-Z]*", "\n", text).strip()
    items, form = _json_items(body), "json"
    if items is None:
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        bulleted = [line for line in lines if _BULLET.match(line)]
        brackets = re.search(r"\[([^\[\]]+)\]", body, re.DOTALL)
        if brackets and (_json_items(brackets.group(0)) is not None or not bulleted):
            items, form = _json_items(brackets.group(0)) or re.split(r"[,;\n]", brackets.group(1)), "brackets"
        elif bulleted:
            items, form = [_BULLET.sub("", line) for line in bulleted], "bullets"
        else:
            items, form = _plain_items(lines)
    parsed, seen = ParsedReply(form=form), NameIndex()
    for item in items:
        if item is None or isinstance(item, (list, dict)):
            continue
        item = _DESCRIPTION.split(str(item), maxsplit=1)[0]
        name = clean_name(item.replace("**", ""))
        if not name:
            continue
        problem = name_problem(name)
        if problem:
            parsed.rejected.append((name[:80], problem))
        elif name not in seen:
            seen.add(name, name)
            parsed.names.append(name)
    if not parsed.names:
        parsed.form = None
    return parsed


def parse_reply(text: str | None) -> list[str]:
    """The names of a reply (:func:`read_reply`); empty when the reply is not a list of names.

    Example:
        >>> parse_reply("[Koi, crucian carp, koi, , Prussian carp]")
        ['Koi', 'crucian carp', 'Prussian carp']
    """
    return read_reply(text).names


def failure_reason(reply: str, parsed: ParsedReply) -> str:
    """Why a reply gave no names, in a few words."""
    if not reply.strip():
        return "empty reply"
    if parsed.rejected and all(reason == "not in Latin script" for _, reason in parsed.rejected):
        return "reply is not in Latin script (another language?)"
    if _REFUSAL.match(reply):
        return "the model refused"
    return "reply is not a list of names"
