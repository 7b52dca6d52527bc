"""The curation pipeline as one module (issue 12): dotted overrides, unknown keys (exit 2, one line), the saved resolved
config, exit status when a stage produced nothing, retry of failed classes only, and a canary secret in the
environment, the config and a URL absent from every file and stream of a full run against loopback servers."""

import dataclasses
import http.server
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from retrieval_fixtures.chat_server import send_json, start_server, stop_servers
from retrieval_fixtures.server import ImageServer, load_jpegs

from neighbor_lt.configs import ConfigError
from neighbor_lt.curate import CONFIG_NAME, STAGES, load_config, main
from neighbor_lt.retrieval.stages import StageError as StageErrorAlias

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo" / "curate.yaml"
LOOPBACK = {"allowed_networks": ["127.0.0.1/32"], "requests_per_second_per_host": 0, "num_workers": 4}


def demo_config(tmp_path, **sections) -> dict:
    """The demo curation config with absolute target paths, sections replaced by ``sections``."""
    config = yaml.safe_load(DEMO.read_text())
    for key in ("train_files", "eval_files"):
        config["target"][key] = [str(REPO / p) for p in config["target"][key]]
    config["output_dir"] = str(tmp_path / "out")
    config.update(sections)
    return config


def write(tmp_path, config: dict, name="curate.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def curate(config_path, *args, env=None, timeout=300):
    """``recipes/curate.py`` in a subprocess as a user runs it; returns (exit status, stdout + stderr)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "curate.py"), "--config", str(config_path), *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------------- overrides
def test_dotted_overrides_reach_every_section_and_nested_keys(tmp_path):
    config = load_config(
        str(DEMO),
        [
            "--neighbors.k", "3", "--neighbors.ratios", "[1, 2, 4]", "--neighbors.backend_kwargs.depth=4",
            "--retrieve.backend", "serpapi", "--retrieve.backend_kwargs", "{}",
            "--retrieve.backend_kwargs.endpoint", "http://127.0.0.1:9/search.json",
            "--retrieve.backend_kwargs.max_pages", "20", "--retrieve.download.num_workers", "2",
            "--filter.gamma_low", "1e-1", "--build.target_name", "2024", "--target.num_classes", "5",
        ],
        output_dir=str(tmp_path),
        stages=["retrieve", "neighbors"],
    )  # fmt: skip
    neighbors, retrieve = config.arguments("neighbors"), config.arguments("retrieve")
    assert neighbors.k == 3 and neighbors.ratios == [1, 2, 4] and neighbors.backend_kwargs == {"depth": 4}
    assert neighbors.vocabulary == "../shared/data/tiny-imagenet-200/classes.tsv"  # the YAML's other keys stay
    assert retrieve.backend == "serpapi" and retrieve.download == {"num_workers": 2}
    assert retrieve.backend_kwargs == {"endpoint": "http://127.0.0.1:9/search.json", "max_pages": 20}
    assert config.arguments("filter").gamma_low == 0.1 and config.arguments("build").target_name == "2024"
    assert config.target.num_classes == 5 and config.output_dir == str(tmp_path)
    assert config.stages == ["neighbors", "retrieve"]  # pipeline order, whatever the command line's
    assert list(STAGES) == ["neighbors", "rank", "retrieve", "filter", "build"]


@pytest.mark.parametrize(
    "override, message",
    [
        (["--neighbors.kk", "3"], r"unknown key neighbors\.kk \(valid keys of neighbors: .*\bk\b, .*max_targets_per_aux"),
        (["--retreive.backend", "bing"], r"unknown key retreive\.backend \(the first part must be one of target, "),
        (["--retrieve.backend_kwargs.captoin", "x"],
         r"unknown option\(s\) captoin in retrieve.backend_kwargs \(pool\) for PoolSearch \(valid: .*caption_column"),
        (["--retrieve.backend", "brave", "--retrieve.backend_kwargs", "{pagesize: 10}"],
         r"unknown option\(s\) pagesize .* for BraveImageSearch \(valid: api_key, endpoint, api_key_env, timeout"),
        (["--neighbors.backend_kwargs.dept", "2"], r"unknown option\(s\) dept in neighbors.backend_kwargs \(wordnet\)"),
        (["--retrieve.download.workers", "2"], r"unknown key\(s\) in retrieve.download: workers \(known: .*num_workers"),
        (["--neighbors.k", "0"], r"k must be a positive integer \(got 0\)"),
        (["--retrieve.backend", "altavista"], r"retrieve.backend: unknown search backend 'altavista'; choose from .*google, pool"),
        (["stray"], r"unknown argument 'stray': overrides are --SECTION.KEY VALUE"),
    ],
)  # fmt: skip
def test_unknown_keys_and_bad_values_name_the_valid_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(DEMO), override)


def test_an_unknown_key_exits_2_with_one_line_and_runs_nothing(tmp_path):
    config = demo_config(tmp_path)
    config["retrieve"]["max_results"] = 10
    status, output = curate(write(tmp_path, config))
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, output
    assert "configuration error: unknown key retrieve.max_results (valid keys of retrieve: backend, " in lines[0]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written

    status, output = curate(write(tmp_path, demo_config(tmp_path)), "--neighbors.kk", "3", "--stages", "neighbors")
    assert status == 2 and len(output.strip().splitlines()) == 1 and "unknown key neighbors.kk" in output


# ---------------------------------------------------------------------------------------------------- saved config
def test_the_resolved_config_is_saved_redacted_and_reruns_the_same_curation(tmp_path, monkeypatch):
    secret = "sk-saved-config-canary-31337"
    monkeypatch.delenv("BRAVE_API_KEY", raising=False)
    config = load_config(
        str(DEMO),
        ["--retrieve.backend", "brave", "--retrieve.backend_kwargs", "{}", "--retrieve.backend_kwargs.api_key", secret,
         "--retrieve.backend_kwargs.endpoint", f"http://user:{secret}x@127.0.0.1:9/search", "--neighbors.k", "4"],
        output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    path = Path(config.save())
    assert path == tmp_path / "out" / CONFIG_NAME
    text = path.read_text()
    assert secret not in text and "api_key: <redacted>" in text and "http://<redacted>@127.0.0.1:9/search" in text
    saved = yaml.safe_load(text)
    assert saved["neighbors"]["k"] == 4 and saved["neighbors"]["depth"] == 20  # every key, defaults filled in
    assert saved["filter"]["gamma_high"] == 0.98 and saved["target"]["lt_seed"] == 0
    again = load_config(str(path))  # the redacted key is left unset: the environment variable is used
    expected = config.resolved()
    del expected["retrieve"]["backend_kwargs"]["api_key"]
    assert again.resolved() == expected and again.arguments("neighbors") == config.arguments("neighbors")


# ---------------------------------------------------------------------------------------------------- exit status
def test_a_stage_that_produced_nothing_exits_1_and_the_next_stage_does_not_run(tmp_path):
    # every class maps to its own name: the leak guard drops all of them, no class has a neighbor
    names = ["goldfish", "brown bear", "king penguin", "teapot", "pizza", "mushroom", "bee", "black widow",
             "golden retriever", "tabby", "lion", "monarch", "chimpanzee", "spiny lobster", "bullfrog", "sports car",
             "school bus", "suspension bridge", "lemon", "bison"]  # fmt: skip
    neighbors = {"backend": "static", "mapping": {n: [n.upper()] for n in names}, "use_wordnet": False}
    path = write(tmp_path, demo_config(tmp_path, neighbors=neighbors))
    status, output = curate(path, "--stages", "neighbors", "retrieve")
    assert status == 1, output
    assert "stage neighbors failed: no target class got a usable neighbor" in output
    assert "Traceback" not in output and "stage retrieve" not in output
    assert not (tmp_path / "out" / "retrieve").exists()
    assert StageErrorAlias is __import__("neighbor_lt.curate", fromlist=["StageError"]).StageError


# ---------------------------------------------------------------------------------------------------- LLM server
class ChatHandler(http.server.BaseHTTPRequestHandler):
    """POST /v1/chat/completions: ``server.reply(name, attempt)`` -> reply text, or an int HTTP status."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = re.search(r"this category name: (.*?)\. You should return:", body["messages"][-1]["content"]).group(1)
        with self.server.lock:
            self.server.hits[name] += 1
            self.server.auth.add(self.headers.get("Authorization"))
            out = self.server.reply(name, self.server.hits[name])
        status = out if isinstance(out, int) else 200
        payload = (
            {"error": {"message": "overloaded", "type": "server_error"}}
            if isinstance(out, int)
            else {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": out}}]}
        )  # fmt: skip
        send_json(self, status, payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat():
    server = start_server(ChatHandler, hits=Counter(), auth=set(), reply=lambda name, attempt: "[axolotl, koi]")
    yield server
    stop_servers([server])


def openai_section(url, **extra) -> dict:
    return {
        "backend": "openai", "k": 2, "ratios": [1, 1, 1], "use_wordnet": False, "top_up": 0,
        "backend_kwargs": {"model": "test-model", "base_url": url, "api_key_env": "NLT_CANARY_API_KEY",
                           "max_retries": 0, "timeout": 5, "concurrency": 2},
        **extra,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- retry
def test_retry_failed_asks_again_only_the_classes_that_failed(chat, tmp_path, monkeypatch):
    monkeypatch.setenv("NLT_CANARY_API_KEY", "sk-retry-test-0123456789")
    refused = {"teapot", "pizza", "lemon"}
    chat.reply = lambda name, attempt: (
        "I'm sorry, I can't help with that." if name in refused and attempt == 1 else 503 if name == "bison" else
        "[axolotl, koi]"
    )  # fmt: skip
    path = write(tmp_path, demo_config(tmp_path, neighbors=openai_section(chat.url)))
    assert main(["--config", path, "--stages", "neighbors"]) == 0  # a partial failure exits 0
    manifest = json.loads((tmp_path / "out" / "neighbors" / "neighbors.json").read_text())
    failed = {t["name"] for t in manifest["targets"] if t["status"] == "failed"}
    assert failed == refused | {"bison"} and manifest["summary"]["ok"] == 16
    first = Counter(chat.hits)
    assert set(first) == set(t["name"] for t in manifest["targets"]) and max(first.values()) == 1

    assert main(["--config", path, "--stages", "neighbors", "--retry_failed"]) == 0
    asked = Counter(chat.hits) - first
    assert set(asked) == failed and max(asked.values()) == 1  # only the failed classes, once each
    manifest = json.loads((tmp_path / "out" / "neighbors" / "neighbors.json").read_text())
    assert {t["name"] for t in manifest["targets"] if t["status"] == "failed"} == {"bison"}


# ---------------------------------------------------------------------------------------------------- canary
CANARIES = {"env": "canary-env-4e8b1d7f2a", "config": "canary-config-93c0a6e1b5", "url": "canary-url-5f27d9c3e8"}


def leaks(folder: Path, text: str) -> set[str]:
    """Canaries found in ``text`` or in any file under ``folder`` (bytes, so Parquet and caches count)."""
    found = {c for c in CANARIES.values() if c in text}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found |= {f"{c} in {path.relative_to(folder)}" for c in CANARIES.values() if c.encode() in data}
    return found


def test_a_canary_secret_is_in_no_file_and_no_stream_of_a_full_curation(chat, tiny_imagenet_dir, tmp_path):
    results = {
        name: [(f"/img/{i}.jpg", f"/page/{i}", f"{caption} number {i}") for i in range(start, start + 10)]
        for name, caption, start in (("axolotl", "An axolotl", 0), ("koi", "A koi", 10))
    }
    images = ImageServer(load_jpegs(tiny_imagenet_dir, 40), search_results=results, api_key=CANARIES["config"])
    images.start()
    try:
        search_url = images.url("/customsearch/v1").replace("http://", f"http://user:{CANARIES['url']}@")
        config = demo_config(
            tmp_path,
            neighbors=openai_section(chat.url),  # (credentials in base_url replace the key: httpx)
            retrieve={
                "backend": "google", "max_results_per_query": 10, "download": LOOPBACK,
                "backend_kwargs": {"api_key": CANARIES["config"], "cx": "test-cx", "endpoint": search_url},
            },
            filter={"caption_filter": True, "leak_check": True},
            build={"max_images_per_class": 8, "target_name": "demo"},
        )  # fmt: skip
        status, output = curate(write(tmp_path, config), env={"NLT_CANARY_API_KEY": CANARIES["env"]})
    finally:
        images.stop()
    assert status == 0, output[-3000:]
    assert chat.auth == {f"Bearer {CANARIES['env']}"}  # the secrets were used ...
    assert images.requests["/customsearch/v1"] == 2  # ... the search key was accepted (a wrong one is an error)
    summary = json.loads((tmp_path / "out" / "build" / "summary.json").read_text())
    assert summary["classes"] == 2 and summary["images"] > 0
    assert (tmp_path / "out" / CONFIG_NAME).exists() and (tmp_path / "out" / "aux_dataset" / "README.md").exists()
    assert (
        leaks(tmp_path / "out", output) == set()
    )  # ... and are in no file (config, caches, manifests, card) and no stream


# ---------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("backend", ["openai", "static"])
def test_numeric_class_names_are_refused_by_name_based_backends_before_any_request(chat, tmp_path, backend):
    from datasets import ClassLabel, Dataset, DatasetDict, Features

    from neighbor_lt.curate import CurateContext
    from neighbor_lt.neighbors.stage import run

    names = [str(i) for i in range(5)]
    train = Dataset.from_dict({"label": [i for i in range(5) for _ in range(3)]},
                              features=Features({"label": ClassLabel(names=names)}))  # fmt: skip
    section = openai_section(chat.url) if backend == "openai" else {"backend": "static", "mapping": {"0": ["koi"]}}
    with pytest.raises(ConfigError, match=f"the {backend} neighbor backend asks about classes by name, but the 5 "
                       r"target class names are numbers \('0' \.\. '4'\): set lt_class_names"):  # fmt: skip
        run(section, CurateContext(str(tmp_path), target=DatasetDict(train=train)))
    assert sum(chat.hits.values()) == 0 and not (tmp_path / "neighbors" / "neighbors.json").exists()


def test_split_files_without_class_names_stop_the_llm_stage_with_the_data_message(
    chat, tiny_imagenet_dir, tmp_path, caplog
):
    """ImageNet-LT / Places-LT / iNat split files without lt_class_names: labels '0'..'C-1', never sent to an LLM."""
    root = tmp_path / "images"
    lines = []
    for i, jpeg in enumerate(load_jpegs(tiny_imagenet_dir, 6)):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 3}" / f"{i}.jpg").write_bytes(jpeg)
        lines.append(f"c{i % 3}/{i}.jpg {i % 3}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    target = {"lt_train_list": str(tmp_path / "train.txt"), "lt_image_root": str(root)}
    path = write(
        tmp_path, {"output_dir": str(tmp_path / "out"), "target": target, "neighbors": openai_section(chat.url)}
    )
    assert main(["--config", path, "--stages", "neighbors"]) == 1
    assert sum(chat.hits.values()) == 0
    assert (
        "stage neighbors failed: the openai neighbor backend asks about classes by name, but the 3 target class "
        "names are numbers ('0' .. '2'): set lt_class_names" in caplog.text
    )


# ---------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("recipe", ["imagenet_lt", "places_lt", "inat2018"])
def test_benchmark_curate_recipes_validate_offline_and_price_first(recipe):
    path = REPO / "recipes" / recipe / "curate.yaml"
    config = load_config(str(path))  # every key and backend option checked; nothing is loaded or sent
    neighbors, retrieve, filters = (config.arguments(s) for s in ("neighbors", "retrieve", "filter"))
    assert neighbors.backend == "openai" and neighbors.backend_kwargs["model"] == "gpt-5.5"  # a current LLM, k, ratios
    assert neighbors.k == 5 and neighbors.ratios == [1, 1, 3]
    assert config.stages == ["neighbors"] and neighbors.dry_run  # as is, the file only prices the LLM requests
    # then the searches: priced first, on a live API (not Bing, retired; not Google CSE, closing), at the paper's size
    assert retrieve.backend == "serpapi" and retrieve.dry_run and retrieve.search_only
    assert retrieve.images_per_class == 800 and config.arguments("build").max_images_per_class is None
    assert filters.model_name_or_path.startswith("facebook/dinov2-") and (filters.gamma_low, filters.gamma_high) == (
        0.7, 0.98)  # fmt: skip
    assert config.arguments("build").hub_dataset_id

    # the target is the training recipe's data, and the training recipe reads this output_dir's aux_dataset
    train = yaml.safe_load((REPO / "recipes" / recipe / "dinov2" / "train.yaml").read_text())
    target = dataclasses.asdict(config.target)
    assert {k: train[k] for k in yaml.safe_load(path.read_text())["target"]} == {
        k: target[k] for k in yaml.safe_load(path.read_text())["target"]
    }
    assert train["aux_dataset"] == f"{config.output_dir}/aux_dataset"

    # the commented pool alternative is valid too, and so are the next steps of the header
    pool = re.search(r"#   backend_kwargs: (\{.*?\})", path.read_text()).group(1)
    alt = load_config(str(path), ["--retrieve.backend", "pool", "--retrieve.backend_kwargs", pool])
    assert alt.arguments("retrieve").backend_kwargs["caption_column"] == "caption"
    steps = load_config(str(path), ["--neighbors.dry_run", "false", "--retrieve.search_only", "false"],
                        stages=["retrieve", "filter", "build"])  # fmt: skip
    assert not steps.arguments("neighbors").dry_run and steps.stages == ["retrieve", "filter", "build"]
