"""The curated set's card says what the build did: how to load the set where it is, and which addresses the
download's guard refused."""

from neighbor_lt.retrieval.card import curation_card
from neighbor_lt.retrieval.stages import BuildArguments

COUNTS = [{"name": "koi", "neighbor_of": ["goldfish"], "count": 3}]


def _card(download: dict, repo_id: str = "me/aux", local_path=None) -> str:
    retrieve = {"backend": "urls", "download": download}
    card = curation_card(repo_id, BuildArguments(), retrieve, {}, {"backend": "static"}, {}, COUNTS, local_path)
    return card.text


def test_a_set_without_a_hub_id_is_loaded_from_its_folder():
    text = _card({}, repo_id="curate-aux", local_path="outputs/curate/aux_dataset")
    assert 'load_dataset("outputs/curate/aux_dataset", split="train")' in text
    assert 'load_dataset("curate-aux"' not in text  # no Hub id that does not exist
    assert 'load_dataset("me/aux", split="train")' in _card({})  # with a Hub id: the Hub snippet


def test_the_card_states_the_address_guard_as_the_download_ran():
    assert "private and internal addresses refused." in " ".join(_card({}).split())
    allowed = " ".join(_card({"allowed_networks": ["127.0.0.1/32"]}).split())
    assert (
        "private and internal addresses refused, except `retrieve.download.allowed_networks` (127.0.0.1/32)" in allowed
    )
    off = " ".join(_card({"block_private_addresses": False}).split())
    assert "private and internal addresses NOT refused" in off and "addresses refused" not in off
