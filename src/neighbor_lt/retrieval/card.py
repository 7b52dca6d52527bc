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
            ``leak_check`` (False: the card leaves out the rows of checks that did not run).
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
    # no `configs:` block on purpose: with one, datasets 5.x caches a local folder under the config's hash alone, so
    # two folders (or two builds) with the same name load each other's stale rows; data/train-*.parquet resolves anyway
    return DatasetCard.from_template(card_data, template_path=str(template_path), **values)
