"""The output folder of a training run: one owner for the files ``recipes/train.py`` writes and others read.

A run folder holds the masked model (``config.json``, ``*.safetensors``, ``preprocessor_config.json``) and:

- ``neighbor_lt.json``: the label space of the run (:class:`RunInfo`): target classes and their training counts,
  the auxiliary classes with the targets each was queried from, the loss and the Many / Few thresholds.
- ``eval_results.json``: Overall / Many / Medium / Few accuracy of the masked model, group sizes, split, image count.
- ``per_class_accuracy.csv``: one row per target class (label, name, train_count, group, accuracy).
- ``args.yaml``: the resolved arguments, secrets redacted (:func:`neighbor_lt.configs.save_args`); a rerun is
  ``--config args.yaml``.
- ``train_results.json``: the Trainer's training metrics.
- ``RUN_INCOMPLETE``: present while a run is writing the folder (or after it was killed): the other files may be
  missing or belong to no single run. A finished run has no such file.
- ``eval_<split>.json`` and ``per_class_accuracy_<split>.csv``: a later evaluation of the saved model
  (``neighbor-lt evaluate``), in the same formats; the files above and the card stay those of the training run.

The recipe, the model card (:mod:`neighbor_lt.hub`), the plots (:mod:`neighbor_lt.plots`) and the Space read these
files through :class:`RunFolder` only.

Example:
    >>> run = RunFolder("outputs/demo")  # doctest: +SKIP
    >>> run.read_info().group_of("tabby"), run.read_eval_results()["few"]  # doctest: +SKIP
    ('many', 0.24)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from .files import write_json_atomic
from .metrics import FEW_THRESHOLD, GROUPS, MANY_THRESHOLD, group_of

INFO_FILE = "neighbor_lt.json"
EVAL_FILE = "eval_results.json"
TRAIN_FILE = "train_results.json"
PER_CLASS_FILE = "per_class_accuracy.csv"
ARGS_FILE = "args.yaml"
#: Written first and removed last by a training run: its presence says the folder is not one finished run.
INCOMPLETE_FILE = "RUN_INCOMPLETE"
#: What a finished run leaves at the top of its folder (besides ``*.safetensors`` and plots): removed when a new run
#: takes the folder over, so a kill never leaves the old card or results beside new weights.
FINAL_FILES = (INFO_FILE, EVAL_FILE, TRAIN_FILE, PER_CLASS_FILE, "README.md", "config.json",
               "preprocessor_config.json", "all_results.json", "eval_results_masked.json")  # fmt: skip


def _split_suffix(split: str | None) -> str:
    """``""`` for the training run's own files, else ``_<split>`` (characters outside ``A-Za-z0-9._-`` become ``_``)."""
    if split is None:
        return ""
    return "_" + "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in split)


def eval_file(split: str | None = None) -> str:
    """``eval_results.json`` of the training run, or ``eval_<split>.json`` of a later evaluation."""
    return EVAL_FILE if split is None else f"eval{_split_suffix(split)}.json"


def per_class_file(split: str | None = None) -> str:
    """``per_class_accuracy.csv`` of the training run, or ``per_class_accuracy_<split>.csv`` of a later evaluation."""
    stem, ext = os.path.splitext(PER_CLASS_FILE)
    return f"{stem}{_split_suffix(split)}{ext}"


@dataclass
class RunInfo:
    """The contents of ``neighbor_lt.json``: what a target-only model was trained beside.

    Args:
        target_classes: target class names, in label order (the model's ``id2label``).
        target_train_counts: training images per target class (they define Many / Medium / Few).
        auxiliary_classes: auxiliary (neighbor) class names, whose classifier rows were removed.
        neighbor_of: auxiliary class -> the target classes it was queried from.
        loss, lambda_s, max_aux_per_class: the training settings that shaped the label space.
        many_threshold, few_threshold: Many is more than ``many_threshold`` images, Few fewer than ``few_threshold``.
    """

    target_classes: list[str] = field(default_factory=list)
    target_train_counts: list[int] = field(default_factory=list)
    auxiliary_classes: list[str] = field(default_factory=list)
    neighbor_of: dict[str, list[str]] = field(default_factory=dict)
    loss: str | None = None
    lambda_s: float | None = None
    max_aux_per_class: int | None = None
    many_threshold: int = MANY_THRESHOLD
    few_threshold: int = FEW_THRESHOLD

    @classmethod
    def from_dict(cls, values: dict) -> RunInfo:
        """From the JSON mapping; keys this version does not know are ignored (a newer writer)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def count_of(self, name: str) -> int | None:
        """Training images of a target class; None when unknown."""
        if name not in self.target_classes:
            return None
        i = self.target_classes.index(name)
        return int(self.target_train_counts[i]) if i < len(self.target_train_counts) else None

    def group_of(self, name: str) -> str | None:
        """``many``, ``medium`` or ``few`` for a target class, by this run's thresholds; None when unknown."""
        count = self.count_of(name)
        return None if count is None else group_of(count, self.many_threshold, self.few_threshold)

    def neighbors_of(self, name: str) -> list[str]:
        """The auxiliary classes trained beside a target class."""
        return [aux for aux, targets in self.neighbor_of.items() if name in targets]


class RunFolder:
    """Reads and writes the files of a run folder (see the module docstring for what each holds).

    Example:
        >>> run = RunFolder(training_args.output_dir)  # doctest: +SKIP
        >>> run.write_info(RunInfo(target_classes=names, target_train_counts=counts))  # doctest: +SKIP

    Args:
        path: the ``output_dir`` of ``recipes/train.py`` (or a downloaded Hub snapshot of a pushed model).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def file(self, name: str) -> str:
        """The path of a file of the folder."""
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self.file(name))

    # -- run state ----------------------------------------------------------------------------------------------------

    def is_finished(self) -> bool:
        """A finished training run: its label space is written and no run is writing the folder."""
        return self.has(INFO_FILE) and not self.has(INCOMPLETE_FILE)

    def is_incomplete(self) -> bool:
        """A run is writing the folder, or was killed before it finished."""
        return self.has(INCOMPLETE_FILE)

    def start_run(self, note: str) -> None:
        """Mark the folder incomplete, then remove a previous run's model, card and results (its checkpoints stay,
        for a resume): a kill from here on leaves the marker, never an old card beside new weights."""
        os.makedirs(self.path, exist_ok=True)
        held_a_run = self.has(INFO_FILE) or self.has(INCOMPLETE_FILE) or self.has(ARGS_FILE)
        with open(self.file(INCOMPLETE_FILE), "w", encoding="utf-8") as f:
            f.write(note + "\n")
        for name in os.listdir(self.path) if held_a_run else ():  # never another folder's README.md
            if name in FINAL_FILES or name.endswith((".safetensors", ".safetensors.index.json", ".png")):
                os.remove(self.file(name))

    def finish_run(self) -> None:
        """The run wrote everything: the folder is one finished run."""
        if self.has(INCOMPLETE_FILE):
            os.remove(self.file(INCOMPLETE_FILE))

    # -- neighbor_lt.json ---------------------------------------------------------------------------------------------

    def write_info(self, info: RunInfo) -> str:
        return self._write_json(INFO_FILE, info.to_dict())

    def read_info(self) -> RunInfo | None:
        """``neighbor_lt.json`` as a :class:`RunInfo`; None when the folder has none (a model from elsewhere)."""
        values = self._read_json(INFO_FILE)
        return None if values is None else RunInfo.from_dict(values)

    # -- eval_results.json / per_class_accuracy.csv -------------------------------------------------------------------

    def write_eval_results(
        self, results: dict, split: str, num_images: int, evaluation: str | None = None, **extra
    ) -> str:
        """The Overall / Many / Medium / Few accuracy (NaN for an empty group is written as null), group sizes and
        where they were measured; into ``eval_results.json``, or ``eval_<evaluation>.json`` when ``evaluation``
        names a later evaluation (see :func:`eval_file`)."""
        out = {k: _finite_or_none(results.get(k)) for k in ("overall", *GROUPS)}
        out.update(group_sizes=results.get("group_sizes"), split=split, num_images=int(num_images), **extra)
        return self._write_json(eval_file(evaluation), out)

    def read_eval_results(self, evaluation: str | None = None) -> dict | None:
        """``eval_results.json`` (or ``eval_<evaluation>.json``); an empty group's accuracy (null) is NaN, as
        :func:`long_tail_accuracy` gives it."""
        values = self._read_json(eval_file(evaluation))
        if values is not None:
            for k in ("overall", *GROUPS):
                if k in values and values[k] is None:
                    values[k] = float("nan")
        return values

    def read_train_results(self) -> dict | None:
        return self._read_json(TRAIN_FILE)

    def write_per_class(self, results: dict, info: RunInfo, evaluation: str | None = None) -> str:
        """``per_class_accuracy.csv`` (or ``per_class_accuracy_<evaluation>.csv``) from :func:`long_tail_accuracy`'s
        ``per_class`` and the run's label space."""
        path = self.file(per_class_file(evaluation))
        os.makedirs(self.path, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "name", "train_count", "group", "accuracy"])
            for i, (name, count, acc) in enumerate(
                zip(info.target_classes, info.target_train_counts, results["per_class"])
            ):
                group = group_of(int(count), info.many_threshold, info.few_threshold)
                writer.writerow([i, name, int(count), group, "" if math.isnan(acc) else f"{acc:.6f}"])
        return path

    def read_per_class(self, evaluation: str | None = None) -> list[dict] | None:
        """Rows of ``per_class_accuracy.csv`` or ``per_class_accuracy_<evaluation>.csv`` (``accuracy`` NaN for a
        class without evaluation images)."""
        name = per_class_file(evaluation)
        if not self.has(name):
            return None
        with open(self.file(name), newline="", encoding="utf-8") as f:
            return [
                {
                    "name": row["name"],
                    "train_count": int(row["train_count"]),
                    "group": row["group"],
                    "accuracy": float(row["accuracy"]) if row["accuracy"] else float("nan"),
                }
                for row in csv.DictReader(f)
            ]

    # -- args.yaml ----------------------------------------------------------------------------------------------------

    def write_args(self, *arg_objects, extra: dict | None = None) -> str:
        """The resolved arguments (secrets redacted) and the run facts in ``extra``; see :func:`save_args`."""
        from .configs import save_args

        save_args(self.file(ARGS_FILE), *arg_objects, extra=extra)
        return self.file(ARGS_FILE)

    def read_args(self) -> dict:
        """``args.yaml`` as a mapping (empty when absent); the run facts are under ``run``."""
        import yaml

        if not self.has(ARGS_FILE):
            return {}
        with open(self.file(ARGS_FILE), encoding="utf-8") as f:
            return yaml.safe_load(f) or {}

    # -- helpers ------------------------------------------------------------------------------------------------------

    def _write_json(self, name: str, values: dict) -> str:
        return write_json_atomic(self.file(name), values, indent=2)  # a reader never sees half a file

    def _read_json(self, name: str):
        if not self.has(name):
            return None
        with open(self.file(name), encoding="utf-8") as f:
            return json.load(f)


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
