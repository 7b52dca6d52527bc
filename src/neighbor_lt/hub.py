"""Hub artifacts: the model card (``hub_cards/model_card.md``), the push of the masked model and of auxiliary sets.

What a pushed model repository holds (see :func:`model_files`): the masked, target-only weights (``*.safetensors``),
``config.json`` with the target ``id2label``, ``preprocessor_config.json``, the card ``README.md``, the results
(``eval_results.json``, ``train_results.json``, ``all_results.json``, ``per_class_accuracy.csv``),
``neighbor_lt.json``, ``args.yaml`` with secrets redacted, and the plots of ``recipes/analyze.py`` when present.
Pickles (``training_args.bin``), checkpoints and the unmasked model never go to ``main``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .configs import RUN_KEY, ConfigError
from .losses import LOSSES
from .metrics import GROUPS, present_groups
from .run_folder import ARGS_FILE, EVAL_FILE, PER_CLASS_FILE, TRAIN_FILE, RunFolder
from .secrets import redact_mapping

logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "hub_cards" / "model_card.md"  # ships in the wheel

#: Files of the masked model folder that are pushed, as glob patterns relative to the folder (no subfolders).
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "neighbor_lt.json",
    EVAL_FILE,
    TRAIN_FILE,
    "all_results.json",
    PER_CLASS_FILE,
    ARGS_FILE,
    "*.png",
)
UNMASKED_FILE_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "config.json", "preprocessor_config.json")

#: The plots written by ``recipes/analyze.py``: file name, title, caption. The card shows those that exist.
PLOTS = (
    (
        "group_accuracy.png",
        "Accuracy by group",
        "Overall / Many / Medium / Few top-1 accuracy of this model and the runs it was compared with.",
    ),
    (
        "per_class_accuracy.png",
        "Per-class accuracy against training images",
        "One point per target class (log scale of its training-image count), colored by group.",
    ),
    (
        "feature_map.png",
        "Feature map before and after training",
        "2-D projection of the features of a head class, a confusable tail class and their neighbor classes.",
    ),
)


class HubAccessError(ConfigError):
    """Pushing to the Hub cannot work (no token, invalid token, read-only token, bad repository id)."""


# --------------------------------------------------------------------------------------------------------------------
# Access check (before training)
# --------------------------------------------------------------------------------------------------------------------


def check_hub_access(hub_model_id: str | None, hub_token: str | None = None) -> str:
    """Fail fast when the model could not be pushed at the end of training.

    Checks that ``hub_model_id`` is set and valid, that a token is available (``hub_token``, ``HF_TOKEN`` or
    ``hf auth login``), that the Hub accepts it (``whoami``), that it may write, and that the repository namespace is
    the user or one of their organizations.

    Example:
        >>> check_hub_access("me/demo-tiny-imagenet-lt", hub_token=None)  # doctest: +SKIP
        'me/demo-tiny-imagenet-lt'

    Args:
        hub_model_id: ``namespace/name`` or a bare ``name`` (the user's namespace).
        hub_token: a token; the locally configured one when None.

    Returns:
        The full repository id ``namespace/name``.

    Raises:
        HubAccessError: with a message saying what to fix.
    """
    if not hub_model_id:
        raise HubAccessError(
            "push_to_hub is true but hub_model_id is empty: set hub_model_id to '<user or org>/<name>'"
        )
    try:
        validate_repo_id(hub_model_id)
    except HFValidationError as err:
        raise HubAccessError(f"hub_model_id {hub_model_id!r} is not a valid repository id: {err}") from err
    token = hub_token or get_token()
    if not token:
        raise HubAccessError(
            "push_to_hub is true but no Hugging Face token was found: run `hf auth login`, set HF_TOKEN, or pass "
            "--hub_token (checked before training so a run does not end in a failed push)"
        )
    try:
        info = HfApi().whoami(token=token)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise HubAccessError("the Hugging Face token was rejected (401): it is invalid or expired") from err
        raise HubAccessError(f"could not check the Hugging Face token (HTTP {status}): {err}") from err
    except Exception as err:  # offline mode, no network: pushing at the end would fail the same way
        raise HubAccessError(f"could not reach the Hub to check the token ({type(err).__name__}: {err})") from err
    user = info.get("name")
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAccessError(f"the Hugging Face token of {user!r} is read-only; pushing needs a write token")
    namespace, _, name = hub_model_id.rpartition("/")
    namespaces = {user, *(org.get("name") for org in info.get("orgs") or [])}
    if namespace and namespace not in namespaces:
        raise HubAccessError(
            f"the token belongs to {user!r}, who cannot write to namespace {namespace!r} "
            f"(user and organizations: {', '.join(sorted(n for n in namespaces if n))})"
        )
    repo_id = f"{namespace or user}/{name}"
    logger.info("Hub access checked: %s can push to %s", user, repo_id)
    return repo_id


# --------------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------------


def _resolved_args(run: RunFolder, *arg_objects) -> dict:
    """``args.yaml`` of a run, overridden by the argument dataclasses when given."""
    values = run.read_args()
    for obj in arg_objects:
        if obj is None:
            continue
        for f in dataclasses.fields(obj):
            if f.init:
                value = getattr(obj, f.name)
                values[f.name] = getattr(value, "value", value)  # enums
    return values


def _is_hub_id(name: str | None) -> bool:
    """True for something that looks like ``namespace/name`` and is not a local path."""
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not os.path.exists(name)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"


def _target_dataset(args: dict) -> tuple[str, str, str, str | None]:
    """(model-index dataset type, model-index dataset name, readable text, Hub id or None) of the target set.

    Never a local path: a card is published, and ``/home/me/data`` says nothing to its readers. The name comes from
    ``dataset_id``, a Hub ``dataset_name``, or the data folder's own name.
    """
    given = args.get("dataset_id")
    if given and _is_hub_id(given):
        return given, given, f"[{given}](https://huggingface.co/datasets/{given})", given
    if given:
        return _slug(given), given, given, None
    name = args.get("dataset_name")
    if _is_hub_id(name):
        return name, name, f"[{name}](https://huggingface.co/datasets/{name})", name
    files = args.get("train_files") or ([args["lt_train_list"]] if args.get("lt_train_list") else [])
    if name and os.path.isdir(name):  # a local folder (imagefolder / saved dataset): its name only
        files = [os.path.join(name, "x")]
    if files:
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
        label = os.path.basename(folder) or "local data"
        return _slug(label), label, f"a local dataset (`{label}`; set `dataset_id` to name it)", None
    label = name or "local data"
    return _slug(label), label, f"`{label}`", None


def _manifest_for(args: dict) -> dict | None:
    """The neighbor manifest of the run: ``neighbor_manifest``, or one next to / inside the auxiliary set folder."""
    from .neighbors.manifest import ManifestError, find_manifest, load_manifest

    aux = args.get("aux_dataset")
    for path in (args.get("neighbor_manifest"), find_manifest(aux) if aux else None):
        if path and os.path.exists(path):
            try:
                return load_manifest(path)
            except ManifestError as e:
                logger.warning("unreadable neighbor manifest: %s", e)
    return None


def _neighbor_source(args: dict, manifest: dict | None) -> str:
    aux = args.get("aux_dataset")
    # a local folder's path means nothing on the Hub (and tells where the author keeps files): its name only
    local = f"a local auxiliary set `{os.path.basename(str(aux).rstrip('/'))}` (not on the Hub)"
    aux_text = f"[{aux}](https://huggingface.co/datasets/{aux})" if _is_hub_id(aux) else local
    if manifest:
        backend = manifest.get("backend") or "unknown"
        model = manifest.get("model")
        settings = manifest.get("settings") or {}
        text = f"Neighbor categories were proposed by the `{backend}` search backend"
        text += f" (model `{model}`)" if model else ""
        details = [f"{k} = {settings[k]}" for k in ("k", "ratios", "max_targets_per_aux") if settings.get(k)]
        text += f" with {', '.join(details)}" if details else ""
        text += f"; names already in the target label set were dropped. Images of each neighbor: {aux_text}."
        return text
    if aux:
        return (
            f"The auxiliary classes and their target classes come from the auxiliary set {aux_text} (its "
            "`neighbor_of` column); the neighbor search that produced it was not recorded with this run."
        )
    return "No auxiliary set was used: this is a target-only baseline."


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def _percent(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _training_settings(args: dict, train_results: dict | None) -> list[tuple[str, str]]:
    if args.get("model_name_or_path"):
        arch = f"`{args['model_name_or_path']}`"
    else:
        arch = f"{args.get('model_type', 'vit')} from scratch ({args.get('config_overrides') or 'default config'})"
    rows = [("backbone", arch)]
    if args.get("image_size"):
        rows.append(("image size", str(args["image_size"])))
    loss = args.get("loss")
    rows.append(
        ("loss", f"`{loss}`" + (f", lambda_s = {args.get('lambda_s')}" if loss == "neighbor_silencing" else ""))
    )
    if args.get("aux_dataset"):  # a baseline trains without auxiliary images: no cap to state
        rows.append(("auxiliary images per class per epoch (cap)", str(args.get("max_aux_per_class"))))
    epochs = f"{args.get('num_train_epochs')}"
    if (args.get("max_steps") or -1) > 0:
        epochs += f" (capped at {args['max_steps']} steps)"
    if train_results and "epoch" in train_results:
        epochs += f"; {train_results['epoch']:g} completed"
    rows.append(("epochs", epochs))
    rows.append(("learning rate", f"{args.get('learning_rate')}, `{args.get('lr_scheduler_type')}` schedule"))
    if args.get("lr_scheduler_kwargs"):
        rows.append(("schedule settings", json.dumps(args["lr_scheduler_kwargs"])))
    warmup = args.get("warmup_steps") or args.get("warmup_ratio")
    if warmup:
        rows.append(("warmup", str(warmup)))
    batch = args.get("per_device_train_batch_size")
    accumulation = args.get("gradient_accumulation_steps") or 1
    batch_text = f"{batch} per device x {accumulation} accumulation step(s)"
    run = args.get(RUN_KEY) or {}
    if run.get("num_processes"):
        batch_text += f" x {run['num_processes']} process(es) = {run.get('global_train_batch_size')} images a step"
    rows.append(("batch size", batch_text))
    rows.append(
        (
            "optimizer",
            f"AdamW, betas ({args.get('adam_beta1')}, {args.get('adam_beta2')}), weight decay {args.get('weight_decay')}"
            + (f", layer-wise lr decay {args['layer_decay']}" if args.get("layer_decay") else ""),
        )
    )
    rows.append(("RandAugment", f"`{args['rand_augment']}`" if args.get("rand_augment") else "off"))
    if args.get("mixup_alpha") or args.get("cutmix_alpha"):
        rows.append(("Mixup / CutMix alpha", f"{args.get('mixup_alpha')} / {args.get('cutmix_alpha')}"))
    if args.get("label_smoothing"):
        rows.append(("label smoothing", str(args["label_smoothing"])))
    rows.append(("seed", str(args.get("seed"))))
    return rows


def _model_index_results(results: dict | None, dataset_type, dataset_name, split) -> list[EvalResult]:
    """The model-index entries: Overall and each group's top-1 accuracy (an empty group is left out)."""
    eval_results = []
    for key in ("overall", *GROUPS) if results else ():
        value = results.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            logger.warning("no %s accuracy (empty group): left out of the model-index", key)
            continue
        eval_results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Long-tail image classification",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type="accuracy",
                metric_name=f"{'Overall' if key == 'overall' else key.capitalize()} top-1 accuracy",
                metric_config=key,
                metric_value=round(float(value), 4),
            )
        )
    return eval_results


def _class_rows(info) -> list[dict]:
    """One row of the card's class table per target class: name, training images, group, neighbors."""
    rows = []
    for name in info.target_classes:
        count, group = info.count_of(name), info.group_of(name)
        rows.append(
            {
                "name": name,
                "count": count if count is not None else "n/a",
                "group": group.capitalize() if group else "n/a",
                "neighbors": info.neighbors_of(name),
            }
        )
    return rows


def render_model_card(
    output_dir: str,
    model_args=None,
    data_args=None,
    training_args=None,
    results: dict | None = None,
    license: str = "other",
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the model card of a run folder (see :func:`write_model_card`) without saving it."""
    run = RunFolder(output_dir)
    args = _resolved_args(run, model_args, data_args, training_args)
    info = run.read_info()
    if info is None:
        raise FileNotFoundError(f"{output_dir} has no neighbor_lt.json: is it the output_dir of recipes/train.py?")
    saved = run.read_eval_results() or {}
    train_results = run.read_train_results()
    if results is None and saved:
        results = saved
    split = saved.get("split") or args.get("eval_split") or "validation"

    repo_id = args.get("hub_model_id") or os.path.normpath(output_dir)  # not pushed: the folder loads, a basename not
    dataset_type, dataset_name, dataset_text, dataset_hub_id = _target_dataset(args)
    base_model = args.get("model_name_or_path") if _is_hub_id(args.get("model_name_or_path")) else None
    hub_datasets = list(dict.fromkeys(d for d in (dataset_hub_id, args.get("aux_dataset")) if _is_hub_id(d)))
    license = args.get("model_license") or license
    license_name = license_link = None
    if license == "other":
        license_name = args.get("model_license_name") or "training-data-terms"
        license_link = args.get("model_license_link")
        if not license_link:
            logger.warning(
                "license 'other' without model_license_link: set model_license_link (and model_license_name) to "
                "the terms of the training data before pushing"
            )

    eval_results = _model_index_results(results, dataset_type, dataset_name, split)
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        datasets=hub_datasets or None,
        license=license,
        license_name=license_name,
        license_link=license_link,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "vision", "long-tail", "neighbor-lt", str(args.get("loss") or "")],
        metrics=["accuracy"],
        eval_results=eval_results or None,
    )

    rows = _class_rows(info)
    max_rows = 100
    loss = args.get("loss") or info.loss
    loss_name = LOSSES[loss].title if loss in LOSSES else f"`{loss}` loss"
    if loss == "neighbor_silencing":
        loss_name += f" (lambda_s = {_first_set(info.lambda_s, args.get('lambda_s'))})"
    group_sizes = (results or {}).get("group_sizes") or saved.get("group_sizes") or {}
    shown = present_groups({**(results or {}), "group_sizes": group_sizes}) if results else []
    variables = {
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "num_targets": len(info.target_classes),
        "num_aux": len(info.auxiliary_classes),
        "target_dataset": dataset_text,
        "loss_name": loss_name,
        "results": {k: _percent((results or {}).get(k)) for k in ("overall", *GROUPS)} if results else None,
        "result_groups": [
            {"title": g.capitalize(), "value": _percent(results.get(g)), "classes": group_sizes.get(g, "n/a")}
            for g in shown
        ],
        "empty_groups": ", ".join(g.capitalize() for g in GROUPS if g not in shown) if results else "",
        "many_threshold": info.many_threshold,
        "few_threshold": info.few_threshold,
        "group_sizes": group_sizes,
        "eval_split": split,
        "num_eval_images": saved.get("num_images", "n/a"),
        "plots": [
            {"file": file, "title": title, "caption": caption}
            for file, title, caption in PLOTS
            if os.path.isfile(os.path.join(output_dir, file))
        ],
        "training_settings": _training_settings(args, train_results),
        "neighbor_source": _neighbor_source(args, _manifest_for(args)),
        "max_aux_per_class": _first_set(info.max_aux_per_class, args.get("max_aux_per_class")),
        "neighbor_rows": rows[:max_rows],
        "neighbor_rows_omitted": max(0, len(rows) - max_rows),
    }
    return ModelCard.from_template(card_data, template_path=str(template_path or MODEL_CARD_TEMPLATE), **variables)


def write_model_card(output_dir: str, *args, **kwargs) -> ModelCard:
    """Render the model card of a training run (:func:`render_model_card`) and save it as ``output_dir/README.md``.

    Reads ``neighbor_lt.json``, ``eval_results.json``, ``train_results.json`` and ``args.yaml`` from the folder; the
    argument dataclasses, when given, override ``args.yaml``. Plots written by ``recipes/analyze.py`` into the folder
    are shown in the card.

    Example:
        >>> card = write_model_card("outputs/demo")  # after `python recipes/train.py`
        >>> [r.metric_config for r in card.data.eval_results]
        ['overall', 'many', 'medium', 'few']

    Args:
        output_dir: the ``output_dir`` of ``recipes/train.py``.
        args, kwargs: the rest of :func:`render_model_card`'s arguments: ``model_args``, ``data_args``,
            ``training_args`` (the run's arguments, optional), ``results`` (the output of
            :func:`neighbor_lt.metrics.long_tail_accuracy`; read from ``eval_results.json`` when None), ``license``
            (the training data's terms usually decide it) and ``template_path`` (``hub_cards/model_card.md`` by
            default).
    """
    card = render_model_card(output_dir, *args, **kwargs)
    card.save(os.path.join(output_dir, "README.md"))
    logger.info("model card written to %s", os.path.join(output_dir, "README.md"))
    return card


# --------------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------------


def _matching_files(folder: str, patterns) -> list[str]:
    return sorted(p.name for pattern in patterns for p in Path(folder).glob(pattern) if p.is_file())


def model_files(output_dir: str) -> list[str]:
    """The files of a masked model folder that :func:`push_model` uploads (names relative to the folder).

    Raises:
        FileNotFoundError: the folder lacks weights or ``config.json``.
    """
    files = sorted(set(_matching_files(output_dir, MODEL_FILE_PATTERNS)))
    if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        raise FileNotFoundError(f"{output_dir} holds no saved model (config.json and *.safetensors)")
    return files


def redacted_args_yaml(path: str) -> bytes:
    """``args.yaml`` with every secret value replaced by ``<redacted>`` (a ``hub_token`` must not leak), by the one
    rule of :mod:`neighbor_lt.secrets`; flags such as ``average_tokens_across_devices`` stay as they are."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    return yaml.safe_dump(redact_mapping(values), sort_keys=True).encode()


def _operations(folder: str, files: list[str]) -> list[CommitOperationAdd]:
    ops = []
    for name in files:
        path = os.path.join(folder, name)
        content = redacted_args_yaml(path) if name == "args.yaml" else path
        ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return ops


def _unmasked_card(repo_id: str) -> bytes:
    card = ModelCard.from_template(
        ModelCardData(library_name="transformers", tags=["neighbor-lt", "unmasked"]),
        template_str=(
            "---\n{{ card_data }}\n---\n\n# {{ repo_id }} (unmasked)\n\nThe checkpoint before masking: its classifier "
            "has the target rows followed by the auxiliary (neighbor) rows, for further training or analysis. For "
            "inference use the `main` revision, whose classifier keeps the target rows only.\n"
        ),
        repo_id=repo_id,
    )
    return str(card).encode()


def push_model(
    output_dir: str,
    hub_model_id: str,
    hub_token: str | None = None,
    private: bool | None = None,
    unmasked_revision: str | None = None,
    commit_message: str = "Upload masked neighbor-lt model",
) -> str:
    """Push the masked, target-only model folder to the Hub in one commit; optionally the unmasked one to a branch.

    Call it from the main process only. The card ``README.md`` is rendered first if the folder has none.

    Example:
        >>> push_model("outputs/demo", "me/demo-tiny-imagenet-lt", unmasked_revision="unmasked")  # doctest: +SKIP

    Args:
        output_dir: the ``output_dir`` of ``recipes/train.py`` (files listed by :func:`model_files`).
        hub_model_id: ``namespace/name`` (or ``name`` in the token owner's namespace).
        hub_token: a token; the locally configured one when None.
        private: create the repository private (when it does not exist yet).
        unmasked_revision: also push ``output_dir/unmasked`` (all rows) to this branch.
        commit_message: message of the main commit.

    Returns:
        The URL of the commit on ``main``.
    """
    if unmasked_revision and not os.path.isfile(os.path.join(output_dir, "unmasked", "config.json")):
        raise FileNotFoundError(f"push_unmasked_revision is set but {output_dir}/unmasked holds no saved model")
    if not os.path.isfile(os.path.join(output_dir, "README.md")):
        write_model_card(output_dir)
    files = model_files(output_dir)
    api = HfApi(token=hub_token)
    repo_id = api.create_repo(hub_model_id, private=private, exist_ok=True).repo_id
    commit = api.create_commit(repo_id, operations=_operations(output_dir, files), commit_message=commit_message)
    logger.info("pushed %d files to %s: %s", len(files), repo_id, commit.commit_url)
    if unmasked_revision:
        folder = os.path.join(output_dir, "unmasked")
        unmasked = _matching_files(folder, UNMASKED_FILE_PATTERNS)
        ops = _operations(folder, unmasked)
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=_unmasked_card(repo_id)))
        api.create_branch(repo_id, branch=unmasked_revision, exist_ok=True)
        extra = api.create_commit(
            repo_id, operations=ops, commit_message="Upload unmasked checkpoint", revision=unmasked_revision
        )
        logger.info("pushed the unmasked checkpoint to %s@%s: %s", repo_id, unmasked_revision, extra.commit_url)
    return commit.commit_url


def push_aux_dataset(folder: str, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Push an auxiliary set folder with its dataset card as a Hub dataset repository: the whole folder as it is,
    Parquet shards (``data/train-*.parquet``) or, with ``build.format: webdataset``, tar shards
    (``data/train-*.tar``), so ``load_dataset(repo_id)`` reads it like the local folder.

    The card is the folder's ``README.md`` written by the curation recipe; when it is missing it is rendered from
    ``hub_cards/dataset_card.md`` (:func:`neighbor_lt.retrieval.card.render_dataset_card`) with the counts read from
    the data (Parquet shards only: WebDataset shards hold class indices, whose names only the card declares).

    Example:
        >>> push_aux_dataset("outputs/tiny_imagenet_lt/aux_dataset", "me/tiny-imagenet-lt-aux")  # doctest: +SKIP

    Args:
        folder: the auxiliary set folder.
        repo_id: the dataset repository.
        token: a token; the locally configured one when None.
        private: create the repository private.

    Returns:
        What the upload returned (the commit URL).

    Raises:
        ConfigError: a WebDataset folder without its card, before anything is uploaded.
    """
    from huggingface_hub import DatasetCard

    from .retrieval.card import class_counts, render_dataset_card

    card_path = os.path.join(folder, "README.md")
    if not os.path.isfile(card_path):
        data = os.path.join(folder, "data")
        if os.path.isdir(data) and any(name.endswith(".tar") for name in os.listdir(data)):
            raise ConfigError(
                f"{card_path} not found: a WebDataset set's class names are declared only in its card; rebuild "
                "the set (recipes/curate.py --stages build) to write it, then push"
            )
        from .data import load_aux_dataset

        aux = load_aux_dataset(folder)
        names = aux.features["label"].names
        counts = class_counts(
            names, ((names[label], targets) for label, targets in zip(aux["label"], aux["neighbor_of"]))
        )
        manifest = _manifest_for({"aux_dataset": folder})
        render_dataset_card(
            repo_id,
            num_images=len(aux),
            num_classes=len(names),
            max_images_per_class=max((row["count"] for row in counts), default=0),
            neighbor_backend=(manifest or {}).get("backend"),
            class_counts=counts,
        ).save(card_path)
        logger.info("rendered the dataset card %s", card_path)
    card = DatasetCard.load(card_path)  # fails on malformed front matter before anything is uploaded
    if "image-classification" not in (card.data.task_categories or []):
        logger.warning("%s does not declare task_categories: image-classification", card_path)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message="Upload aux set")
    return str(info)
