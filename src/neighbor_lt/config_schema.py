"""The one configuration front-end of train, curate and ablate: a YAML file, ``--key value`` / ``--dotted.key value``
overrides, every key checked before any work (one line naming the key, the close matches and the valid keys), typed
dataclasses, and the resolved configuration written next to the outputs.

A :class:`ConfigSchema` says what a configuration file holds, key by key:

- a dataclass: a *section* (``neighbors:``), every key checked and typed (``1e-4`` is a float where the field is),
  built into that dataclass by :func:`build`;
- :class:`Keys`: a section whose keys are checked against dataclasses but which stays a mapping, for a front-end
  that builds it later (the ablation's ``train:`` keys are the train recipe's, built by :mod:`neighbor_lt.train`);
- a mapping of names to those: a section of sections (the ablation's ``curate:`` overrides, ``{neighbors: {k: 3}}``);
- :data:`VALUE`: one value (a path, a list, a free mapping of backend options).

The train recipe's flat keys go through ``transformers.HfArgumentParser`` (:func:`neighbor_lt.configs.parse_args`),
which types the ~100 ``TrainingArguments``; it uses the reader, the key check and the writer of this module too.

Example:
    >>> schema = ConfigSchema("curation", lambda: {"output_dir": VALUE, "target": DataArguments}, "--SECTION.KEY V")
    >>> values = schema.load("recipes/demo/curate.yaml", ["--target.num_classes", "5"])  # doctest: +SKIP
    >>> build(DataArguments, values["target"], "target").num_classes  # doctest: +SKIP
    5
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from .secrets import REDACTED, redact, redact_mapping

logger = logging.getLogger(__name__)

#: A key that holds one value (a path, a list, a free mapping); parsed as YAML on the command line.
VALUE = None


class ConfigError(ValueError):
    """A configuration problem found before training starts."""


#: Valid keys named in an unknown key's message; more (the train recipe's ~140) are left to ``--help``.
MAX_LISTED = 60


# ---- messages ----------------------------------------------------------------------------------------------------
def close_matches(key: str, valid: Iterable[str]) -> str:
    """``"; did you mean k?"`` for a key that looks like valid ones (a typo), else ``""``."""
    matches = difflib.get_close_matches(str(key), [str(v) for v in valid], n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def unknown_key_error(where: str, keys, valid, dotted: bool = False, hint: str = "") -> ConfigError:
    """The one-line error of an unknown key: the key, the close matches, the valid keys.

    Example:
        >>> str(unknown_key_error("neighbors", ["kk"], ["k", "ratios"], dotted=True))
        'unknown key neighbors.kk (valid keys of neighbors: k, ratios); did you mean k?'

    Args:
        where: the section (``dotted``: the key is written ``where.key``) or the file the keys are in.
        keys: the unknown keys.
        valid: the keys it takes (more than :data:`MAX_LISTED`, e.g. the train recipe's: ``--help`` lists them).
        hint: added at the end (where else such keys go).
    """
    keys, valid = [str(k) for k in keys], sorted(str(v) for v in valid)
    listed = ", ".join(valid) if len(valid) <= MAX_LISTED else f"{len(valid)} keys, see --help"
    if dotted and len(keys) == 1:
        text = f"unknown key {where}.{keys[0]} (valid keys of {where}: {listed})"
    else:
        text = f"unknown key(s) in {where}: {', '.join(keys)}" + (f" (known: {listed})" if valid else "")
    hints = "".join(close_matches(k, valid) for k in keys)
    return ConfigError(text + (f"; {hint}" if hint else "") + hints)


# ---- files -------------------------------------------------------------------------------------------------------
def pop_config_path(args: list[str], required: str | None = None) -> str | None:
    """Remove ``--config PATH`` from ``args`` (in place) and return PATH; None when absent and not ``required``
    (then ``required`` is the error message)."""
    if "--config" not in args:
        if required:
            raise ConfigError(required)
        return None
    i = args.index("--config")
    if i + 1 >= len(args):
        raise ConfigError("--config needs a path to a YAML file")
    path = args[i + 1]
    del args[i : i + 2]
    return path


def read_yaml_mapping(path: str, expected: str = "a mapping of argument names to values") -> dict:
    """The mapping of a YAML config file; a missing file, invalid YAML or a non-mapping is a one-line
    :class:`ConfigError` (``expected`` says what the file should hold)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold {expected}")
    return values


def write_yaml(path: str, values: dict, header: str | None = None, sort_keys: bool = False) -> str:
    """Write a resolved configuration atomically (a reader never sees half a file); ``header`` is a comment line.

    Every front-end saves what it resolved next to its outputs this way: ``args.yaml``, ``curate_config.yaml`` and
    the ablation's ``ablate.yaml`` / ``train.yaml`` (through :func:`save_resolved` where secrets may be in it).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        if header:
            f.write(f"# {header}\n")
        yaml.safe_dump(values, f, sort_keys=sort_keys)
    os.replace(tmp, path)
    return path


def plain(value):
    """A value YAML can write and the front-end can read back: enums by value, dataclasses (``accelerator_config``,
    a section) as mappings, containers element by element."""
    if isinstance(value, enum.Enum):  # IntervalStrategy ... (also a str: test first)
        return plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return str(value)


def save_resolved(path: str, values, header: str | None = None) -> str:
    """Write a resolved configuration (a mapping of values and sections, or a dataclass) with every secret redacted;
    ``--config`` on the file reruns it (a redacted key is left unset, see :func:`drop_redacted`)."""
    return write_yaml(path, redact_mapping(plain(values)), header=header)


def drop_redacted(values: dict, prefix: str = "") -> dict:
    """A saved config's ``<redacted>`` values left unset: the secret comes from the command line or the environment
    again (``prefix``: the section the mapping is, for the message)."""
    out = {}
    for key, value in values.items():
        if value == REDACTED:
            logger.warning("%s%s was redacted: left unset (pass it on the command line or set its environment "
                           "variable)", prefix, key)  # fmt: skip
            continue
        out[key] = drop_redacted(value, f"{prefix}{key}.") if isinstance(value, dict) else value
    return out


# ---- command line ------------------------------------------------------------------------------------------------
def split_overrides(argv: list[str], usage: str, greedy: bool = False) -> list[tuple[str, list[str]]]:
    """The ``--key value`` overrides of a command line (``--key=value`` too) as ``(key, [values])`` pairs.

    Example:
        >>> split_overrides(["--neighbors.k", "3", "--retrieve.backend=pool"], "--SECTION.KEY VALUE")
        [('neighbors.k', ['3']), ('retrieve.backend', ['pool'])]
        >>> split_overrides(["--seeds", "0", "1", "--train.lt_seed", "2"], "--key value", greedy=True)
        [('seeds', ['0', '1']), ('train.lt_seed', ['2'])]

    Args:
        argv: the arguments after ``--config PATH`` was taken out.
        usage: how an override is written, for the error message.
        greedy: a key takes every value up to the next ``--key`` (lists such as ``--seeds 0 1 2``); otherwise
            exactly the next argument.

    Raises:
        ConfigError: an argument that is not an override, or a key without a value.
    """
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unknown argument {arg!r}: overrides are {usage}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            out.append((key, [value]))
            i += 1
            continue
        values = []
        i += 1
        while i < len(argv) and (greedy and not argv[i].startswith("--") or not greedy and not values):
            values.append(argv[i])
            i += 1
        if not values:
            raise ConfigError(f"{arg} needs a value")
        out.append((arg[2:], values))
    return out


def annotation_kinds(annotation) -> set[str]:
    """The plain types a field's annotation names (``"int | None"`` -> ``{"int"}``)."""
    text = annotation if isinstance(annotation, str) else str(annotation)
    return set(re.findall(r"\b(str|int|float|bool|list|dict|Any)\b", text))


def parse_value(raw: str, annotation=None):
    """A command-line string as the value its field takes: YAML (``3``, ``[1, 1, 3]``, ``null``, ``true``), but a
    string field keeps the text (``--build.target_name 2024``) and a float field takes ``1e-4``."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    kinds = annotation_kinds(annotation) if annotation is not None else set()
    if kinds == {"str"} and value is not None and not isinstance(value, str):
        return raw
    return yaml_value(value, annotation)


def yaml_value(value, annotation):
    """YAML 1.1 reads ``1e-4`` as a string: a float field converts it."""
    if isinstance(value, str) and "float" in annotation_kinds(annotation):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# ---- schemas -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, init=False)
class Keys:
    """A section whose keys are the fields of ``classes`` (checked), kept as a mapping for the front-end that builds
    it later.

    Example:
        >>> Keys(ModelArguments, DataArguments, NeighborLTTrainingArguments)  # the ablation's train: section
    """

    classes: tuple

    def __init__(self, *classes: type):
        object.__setattr__(self, "classes", classes)

    def fields(self) -> dict[str, Any]:
        return {f.name: f.type for cls in self.classes for f in dataclasses.fields(cls) if f.init}


def _is_section(spec) -> bool:
    return isinstance(spec, (dict, Keys)) or dataclasses.is_dataclass(spec)


def section_keys(spec) -> dict[str, Any]:
    """Key -> what it holds, for a section: a field's annotation, or a nested section's spec."""
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, Keys):
        return spec.fields()
    return {f.name: f.type for f in dataclasses.fields(spec) if f.init}


def build(cls, values: dict | None, where: str, dotted: bool = False):
    """``cls`` from a section's mapping: unknown keys are an error naming the valid ones (``dotted``: written
    ``where.key``), YAML's ``1e-4`` strings become floats, and a value the dataclass refuses is one line (secrets
    redacted).

    Example:
        >>> build(DataArguments, {"max_aux_per_class": 20}, "target").max_aux_per_class
        20
    """
    values = dict(values or {})
    fields = section_keys(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise unknown_key_error(where, unknown[:1] if dotted else unknown, fields, dotted=dotted)
    try:
        return cls(**{k: yaml_value(v, fields[k]) for k, v in values.items()})
    except ConfigError as e:
        raise ConfigError(redact(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(redact(f"invalid {where} settings: {e}")) from None


@dataclass(frozen=True)
class ConfigSchema:
    """What one kind of configuration file holds, and how its command line overrides it.

    Args:
        name: what the file configures, for messages (``"curation"``).
        keys: top-level key -> what it holds (see the module's docstring), or a function returning that mapping
            (called on use: a curation's sections import the stage modules).
        usage: how an override is written, for messages.
        several: keys that take every value up to the next ``--key`` (``--seeds 0 1 2``).
        hint: added to an unknown top-level key's message (where such keys go instead).
    """

    name: str
    keys: dict | Callable[[], dict]
    usage: str
    several: tuple[str, ...] = ()
    hint: str = ""

    def specs(self) -> dict[str, Any]:
        return self.keys() if callable(self.keys) else self.keys

    def load(self, path: str | None, overrides=(), values: dict | None = None, expected: str | None = None) -> dict:
        """The file's mapping (or ``values``) with the overrides applied, every key checked; sections stay mappings
        (:func:`build` types them).

        Args:
            path: the YAML file (None with ``values``).
            overrides: command-line arguments (``["--neighbors.k", "3"]``) or parsed ``(key, [values])`` pairs.
            values: the mapping itself instead of a file.
            expected: what the file should hold, for the message when it holds something else.

        Raises:
            ConfigError: a missing file, an unknown key or section, a section that is not a mapping.
        """
        specs = self.specs()
        expected = expected or f"a mapping ({', '.join(specs)})"
        if values is None:
            if not path:
                raise ConfigError(f"config file not found: {path}")
            values = read_yaml_mapping(path, expected)
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold {expected}")
        values = drop_redacted(values)
        unknown = [k for k in values if k not in specs]
        if unknown:
            raise unknown_key_error(path or f"the {self.name} config", unknown, specs, hint=self.hint)
        for key, spec in specs.items():
            self._check(values.get(key), spec, key)
        if overrides and isinstance(next(iter(overrides)), str):
            overrides = split_overrides(list(overrides), self.usage, greedy=bool(self.several))
        for dotted, raw in overrides:
            self.override(values, dotted, raw)
        return values

    def override(self, values: dict, dotted: str, raw: list[str] | str) -> None:
        """Apply one command-line override (``neighbors.backend_kwargs.depth``, ``["4"]``) to ``values``, each part
        of the dotted key checked against the schema; below a free mapping any key goes."""
        raw = [raw] if isinstance(raw, str) else list(raw)
        parts = dotted.split(".")
        spec, node, where = self.specs(), values, None
        for i, part in enumerate(parts):
            if i == 0 or _is_section(spec):
                keys = section_keys(spec)
                if part not in keys:
                    raise self._unknown(dotted, where, part, keys)
                spec = keys[part]
            else:
                spec = VALUE  # below a free mapping (backend options): any key
            if i == len(parts) - 1:
                break
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--{dotted}: {part} is not a mapping")
            node, where = child, part if where is None else f"{where}.{part}"
        annotation = None if _is_section(spec) else spec
        parsed = [parse_value(v, annotation) for v in raw]
        node[parts[-1]] = parsed[0] if len(parsed) == 1 and parts[0] not in self.several else parsed

    def _unknown(self, dotted: str, where: str | None, part: str, keys) -> ConfigError:
        if where is not None:
            return unknown_key_error(where, [part], keys, dotted=True)
        first = "key" if "." not in dotted else "first part"
        return ConfigError(
            f"unknown key {dotted} (the {first} must be one of {', '.join(keys)}"
            + (f"; {self.hint})" if self.hint else ")")
            + close_matches(part, keys)
        )

    def _check(self, value, spec, where: str) -> None:
        """Unknown keys and non-mappings of a section, recursively (a dataclass section is checked by :func:`build`,
        with its values)."""
        if not _is_section(spec) or value is None:
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys to values (got {value!r})")
        if isinstance(spec, (dict, Keys)):
            keys = section_keys(spec)
            unknown = [k for k in value if k not in keys]
            if unknown:
                raise unknown_key_error(where, unknown[:1], keys, dotted=True)
            for key, sub in keys.items() if isinstance(spec, dict) else ():
                self._check(value.get(key), sub, f"{where}.{key}")


__all__ = [
    "VALUE",
    "ConfigError",
    "ConfigSchema",
    "Keys",
    "build",
    "close_matches",
    "drop_redacted",
    "parse_value",
    "plain",
    "pop_config_path",
    "read_yaml_mapping",
    "save_resolved",
    "split_overrides",
    "unknown_key_error",
    "write_yaml",
]
