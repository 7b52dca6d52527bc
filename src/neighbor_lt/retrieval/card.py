"""The auxiliary dataset card, rendered from ``hub_cards/dataset_card.md`` with ``DatasetCardData``."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_cards" / "dataset_card.md"  # ships in the wheel

LICENSE_NOTE = (
    "Per-image licenses are those of the source websites (see `source_url` / `page_url`); the collection is "
    "released under license `other`."
)
POOL_LICENSE_NOTE = (
    "Every image comes from the local pool `{source}`: its own license and terms apply to each image (see "
    "`source_url`, `pool://<pool>#<row>`); the collection is released under license `other`."
)


def render_dataset_card(
    repo_id: str = "neighbor-lt/aux-dataset",
    template_path: str | os.PathLike | None = None,
    license: str = "other",
    tags: list[str] | None = None,
    **variables,
) -> DatasetCard:
    """Render the auxiliary dataset card.

    Example:
        >>> card = render_dataset_card("me/tiny-imagenet-lt-aux", num_images=10, num_classes=2, class_counts=[])
        >>> card.save("aux_dataset/README.md")  # doctest: +SKIP

    Args:
        repo_id: Hub id shown in the usage snippet.
        template_path: a Jinja Markdown template; ``hub_cards/dataset_card.md`` by default.
        license: the card's license field.
        tags: extra tags.
        **variables: template variables (counts, thresholds, provenance; missing ones render as "n/a").
            ``pool_source`` (a local pool: its terms instead of websites' robots rules), ``prototype_filter`` and
            ``leak_check`` (False: the card leaves out the rows of checks that did not run), ``local_path`` (a set
            not on the Hub: the snippet loads this folder), ``block_private_addresses`` / ``allowed_networks`` (the
            address guard's settings, as the download ran), ``format`` (``webdataset``: the card declares the tar
            shards' features, with the ``class_names`` given, and the snippet renames them to the usual columns).
    """
    template_path = Path(template_path or DEFAULT_TEMPLATE)
    defaults = {
        "pretty_name": f"{repo_id.split('/')[-1]} (neighbor-lt auxiliary images)",
        "target_name": "the target set",
        "repo_id": repo_id,
        "license_note": LICENSE_NOTE,
        "stage_counts": {},
        "class_counts": [],
        "opt_out_directives": "noai, noimageai, noindex, none",
        "respect_robots_txt": True,
        "respect_x_robots_tag": True,
        "prototype_filter": True,
        "leak_check": True,
        "pool_source": None,
        "local_path": None,
        "block_private_addresses": True,
        "allowed_networks": None,
        "format": "parquet",
    }
    values = {**defaults, **{k: v for k, v in variables.items() if v is not None}}
    if values["pool_source"] and "license_note" not in variables:
        values["license_note"] = POOL_LICENSE_NOTE.format(source=values["pool_source"])
    for key in (
        "num_images num_classes max_images_per_class neighbor_backend search_backend user_agent caption_filter "
        "embedding_model pooling gamma_low gamma_high leak_similarity leak_phash_distance phash_distance"
    ).split():
        values.setdefault(key, "n/a")
    values.setdefault("search_source", "")
    card_data = DatasetCardData(
        pretty_name=values["pretty_name"],
        license=license,
        task_categories=["image-classification"],
        tags=["neighbor-lt", "long-tail", "auxiliary-data", *(tags or [])],
    )
    if values["format"] == "webdataset":  # the tar shards' types and class names: `datasets` cannot infer them
        from datasets.info import DatasetInfo, DatasetInfosDict

        from .builder import webdataset_features

        info = DatasetInfo(features=webdataset_features(values.get("class_names") or []))
        DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    # no `configs:` block on purpose: with one, datasets 5.x caches a local folder under the config's hash alone, so
    # two folders (or two builds) with the same name load each other's stale rows; data/train-*.parquet resolves anyway
    return DatasetCard.from_template(card_data, template_path=str(template_path), **values)


def class_counts(names, rows) -> list[dict]:
    """The card's per-class table: each class's image count and the target classes its images are neighbors of.

    Example:
        >>> class_counts(["koi", "carp"], [("koi", ["goldfish"]), ("koi", ["tench"]), ("carp", ["tench"])])
        [{'name': 'koi', 'neighbor_of': ['goldfish', 'tench'], 'count': 2}, {'name': 'carp', 'neighbor_of': ['tench'], 'count': 1}]

    Args:
        names: the classes, in the order of the table (every one gets a row, also with no image).
        rows: ``(class name, neighbor_of list)`` per image.
    """
    counts = {name: 0 for name in names}
    parents: dict[str, set] = {name: set() for name in counts}
    for name, neighbor_of in rows:
        counts[name] += 1
        parents[name].update(neighbor_of or [])
    return [{"name": name, "neighbor_of": sorted(parents[name]), "count": count} for name, count in counts.items()]


def count_stages(download_summary, decided, reasons, num_kept, num_published, manifest, filter_cfg, cap) -> dict:
    """How many images each stage let through, for the card and the build summary (only the checks that ran).

    Args:
        download_summary: the retrieve stage's ``download_summary.json``; decided, reasons: the filter's decisions
            (:func:`~neighbor_lt.retrieval.builder.decision_counts`); num_kept: images that passed the filters;
            num_published: images in the set; manifest: the neighbor manifest; filter_cfg: the filter's
            ``config.json``; cap: the per-class cap.
    """
    counts = {
        "auxiliary classes in the neighbor manifest": len(manifest.get("auxiliary", [])),
        "candidates found": download_summary.get("total", decided),
        "retrieved and valid (ok)": decided,
        "dropped: caption mismatch": reasons.get("caption", 0),
        "dropped: leak (target evaluation near duplicate)": reasons.get("leak_phash", 0)
        + reasons.get("leak_embedding", 0),
        "dropped: outside [gamma_low, gamma_high]": reasons.get("similarity_low", 0)
        + reasons.get("similarity_high", 0),
        "passed the filters": num_kept,
        f"published (cap {cap} per class)": num_published,
    }
    if not filter_cfg.get("model_name_or_path"):  # the card lists only the checks that ran
        del counts["dropped: outside [gamma_low, gamma_high]"]
    if filter_cfg and not filter_cfg.get("leak_check"):
        del counts["dropped: leak (target evaluation near duplicate)"]
    return counts


def _search_source(retrieve_cfg: dict) -> tuple[str | None, bool]:
    """Where the images were searched (endpoint, dataset, files) and whether that is a local pool."""
    from .search import SEARCH_BACKENDS

    backend_kwargs = retrieve_cfg.get("backend_kwargs") or {}
    source = backend_kwargs.get("endpoint") or backend_kwargs.get("dataset") or backend_kwargs.get("path")
    source = source or backend_kwargs.get("data_files")  # a pool's or caption metadata's files
    local = getattr(SEARCH_BACKENDS.get(retrieve_cfg.get("backend")), "local", False)
    if local:
        source = backend_kwargs.get("dataset") or backend_kwargs.get("data_files")
    source = ", ".join(source) if isinstance(source, list) else source
    return source, local and not retrieve_cfg.get("img2dataset_dir")


def curation_card(
    repo_id: str,
    build,
    retrieve_cfg: dict,
    filter_cfg: dict,
    manifest: dict,
    stage_counts: dict,
    counts: list[dict],
    local_path: str | None = None,
) -> DatasetCard:
    """The card of a curated auxiliary set: provenance and settings of every curate stage, counts per stage and class.

    Example:
        >>> card = curation_card("me/aux", BuildArguments(), retrieve_cfg, filter_cfg, manifest, stages, counts)  # doctest: +SKIP

    Args:
        repo_id: Hub id shown in the usage snippet.
        build: the ``build:`` settings (:class:`~neighbor_lt.retrieval.stages.BuildArguments`).
        retrieve_cfg: the retrieve stage's saved ``config.json``; filter_cfg: the filter stage's.
        manifest: the neighbor manifest (its backend and, after the rank stage, its ranking).
        stage_counts: images through each stage; counts: :func:`class_counts`.
        local_path: the set's folder, for a set with no Hub id yet: the usage snippet loads it.
    """
    from ..neighbors.confusability import card_summary

    download = retrieve_cfg.get("download", {})
    source, pool = _search_source(retrieve_cfg)
    leak_check = bool(filter_cfg.get("leak_check"))
    return render_dataset_card(
        repo_id,
        template_path=build.card_template,
        license=build.license,
        target_name=build.target_name,
        num_images=sum(row["count"] for row in counts),
        num_classes=len(counts),
        max_images_per_class=build.max_images_per_class,
        neighbor_backend=manifest.get("backend"),
        search_backend=retrieve_cfg.get("backend"),
        search_source=source,
        pool_source=source if pool else None,
        prototype_filter=bool(filter_cfg.get("model_name_or_path")),
        leak_check=leak_check,
        user_agent=download.get("user_agent"),
        local_path=local_path,
        format=build.format,
        class_names=[row["name"] for row in counts],
        block_private_addresses=download.get("block_private_addresses", True),
        allowed_networks=", ".join(download.get("allowed_networks") or []) or None,
        respect_robots_txt=download.get("respect_robots_txt", True),
        respect_x_robots_tag=download.get("respect_x_robots_tag", True),
        opt_out_directives=", ".join(download.get("opt_out_directives") or []) or None,
        phash_distance=download.get("phash_distance"),
        caption_filter=filter_cfg.get("caption_filter"),
        embedding_model=filter_cfg.get("model_name_or_path") or "none (prototype filter off)",
        pooling=filter_cfg.get("pooling"),
        gamma_low=filter_cfg.get("gamma_low"),
        gamma_high=filter_cfg.get("gamma_high"),
        leak_similarity=filter_cfg.get("leak_similarity") if leak_check else "off",
        leak_phash_distance=filter_cfg.get("leak_phash_distance") if leak_check else "off",
        stage_counts=stage_counts,
        class_counts=counts,
        visual_ranking=card_summary(manifest) if manifest.get("ranking") else None,
    )
