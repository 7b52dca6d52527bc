"""The openai neighbor backend against a real chat-completions server on 127.0.0.1 (no network, no real key):
reply formats, retries and the cache; and issue 13's faults: a bad reply never becomes a class, fatal errors stop at
once without the key, endpoint down stops fast, bad settings send nothing, top-ups, all-failed exit status, Ctrl-C.
"""

import http.server
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features
from retrieval_fixtures.chat_server import send_json, start_server, stop_servers

from neighbor_lt.configs import ConfigError
from neighbor_lt.curate import CurateContext
from neighbor_lt.neighbors import get_neighbor_backend
from neighbor_lt.neighbors.base import NeighborSearchError, TargetQuery
from neighbor_lt.neighbors.llm import PAPER_TEMPLATE, parse_reply
from neighbor_lt.neighbors.manifest import load_manifest, neighbor_map
from neighbor_lt.neighbors.stage import NeighborsConfigError, NeighborsStageError, group_ratios, run
from neighbor_lt.retrieval.stages import StageError

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-DO-NOT-LEAK-1234567890"
URL_SECRET = "pw-canary-9876"


class Handler(http.server.BaseHTTPRequestHandler):
    """POST /v1/chat/completions; ``server.behave(name, attempt, body)`` returns a reply string or
    ``(status, payload, headers)`` (payload: a JSON value, or raw bytes)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        name = re.search(r"this category name: (.*?)\. You should return:", prompt, re.DOTALL).group(1)
        server = self.server
        with server.lock:
            server.hits[name] += 1
            server.arrivals.append(time.monotonic())
            server.prompts.append(prompt)
            server.auth.add(self.headers.get("Authorization"))
            attempt = server.hits[name]
        if server.delay:
            time.sleep(server.delay)
        out = server.behave(name, attempt, body)
        if isinstance(out, tuple):
            status, payload, headers = out
        else:
            status, headers = 200, {}
            payload = {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": out}}],
            }  # fmt: skip
        send_json(self, status, payload, headers)

    def log_message(self, *args):
        pass


def _serve(behave, delay=0.0):
    return start_server(Handler, behave=behave, delay=delay, hits=Counter(), arrivals=[], prompts=[], auth=set())


@pytest.fixture
def serve():
    servers = []

    def start(behave, delay=0.0):
        servers.append(_serve(behave, delay))
        return servers[-1]

    yield start
    stop_servers(servers)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("NLT_TEST_KEY", API_KEY)


# class name in the prompt -> what the server does
REPLIES = {
    "goldfish": "[Koi, crucian carp, Goldfish, koi, , Prussian carp]",
    "tabby cat": "Sure! Here are some visually similar categories:\n1. **Tiger cat**\n2. Egyptian cat - a breed\n"
    "3. Persian cat\n\nHope this helps!",
    "lion": '```json\n{"categories": ["cougar", "tiger", "leopard"]}\n```',
    "refuse": "I'm sorry, but I can't help with that request.",
    "foreign": "[\u30b3\u30a4, \u30d5\u30ca, \u91d1\u9b5a]",
    "empty": "",
}


def chat_behave(name, attempt, body):
    """The server of the reply-format tests: what it does depends on the class name in the prompt."""
    if name == "ratelimited" and attempt <= 2:
        return 429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"}
    if name == "broken":
        return 500, {"error": {"message": "boom"}}, {}
    if name == "slow" and attempt == 1:
        time.sleep(1.0)  # past the client timeout once, then fast
    if name == "malformed":
        return 200, b"this is not json {", {}
    if name == "nochoices":
        return 200, {"id": "x", "object": "chat.completion", "choices": []}, {}
    return REPLIES.get(name, "[alpha, beta]" if name in ("ratelimited", "slow") else "1. neighbor one\n2. two")


@pytest.fixture
def chat_server(serve):
    server = serve(chat_behave)
    return SimpleNamespace(url=server.url, server=server)


def _error(status, message):
    return status, {"error": {"message": message, "type": "invalid_request_error"}}, {}


def _context(path, names, counts=None):
    counts = counts or [200] * len(names)
    labels = [i for i, c in enumerate(counts) for _ in range(c)]
    train = Dataset.from_dict({"label": labels}, features=Features({"label": ClassLabel(names=names)}))
    return CurateContext(str(path), target=DatasetDict(train=train))


def _section(url, **extra):
    return {
        "backend": "openai", "model": "test-model", "base_url": url, "api_key_env": "NLT_TEST_KEY", "k": 3,
        "timeout": 0.5, "max_retries": 2, "retry_backoff": 0.01, "concurrency": 3, **extra,
    }  # fmt: skip


def _fault_section(url, **extra):
    return _section(url, **{"k": 2, "ratios": [1, 1, 1], "timeout": 2, "max_retries": 4, **extra})


def _no_secret_anywhere(folder: Path, *texts: str):
    for text in texts:
        assert API_KEY not in text and URL_SECRET not in text
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_text(errors="replace")
            assert API_KEY not in content and URL_SECRET not in content, path


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("[Koi, crucian carp, koi, , Prussian carp]", ["Koi", "crucian carp", "Prussian carp"]),
        ('["red fox", "kit fox"]', ["red fox", "kit fox"]),
        ('{"neighbors": ["koi", "tench"]}', ["koi", "tench"]),
        ("Here you go:\n- tiger\n- cougar: a big cat\n* leopard\n", ["tiger", "cougar", "leopard"]),
        ("1) koi\n2) carp.\n3) koi", ["koi", "carp"]),
        ("koi, carp, tench", ["koi", "carp", "tench"]),
        ("", []),
        (None, []),
    ],
)
def test_parse_reply(reply, expected):
    assert parse_reply(reply) == expected


def test_template_is_the_papers_and_safe_with_braces():
    backend = get_neighbor_backend("openai", model="m")
    query = TargetQuery(0, "odd", "a {weird} name\x00", num_requested=10)
    prompt = backend.messages(query)[-1]["content"]
    assert "10 visually similar categories" in prompt and "this category name: a {weird} name." in prompt
    assert backend.template == PAPER_TEMPLATE


def test_openai_stage_replies_retries_cache_and_rerun(chat_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NLT_TEST_KEY", API_KEY)
    caplog.set_level(logging.DEBUG)
    names = ["goldfish", "tabby cat", "lion", "refuse", "foreign", "empty", "malformed", "nochoices", "ratelimited",
             "slow", "broken", "{odd} name\t"]  # fmt: skip
    context = _context(tmp_path, names)
    manifest = run(_section(chat_server.url, top_up=0), context)  # top-ups: tests/test_neighbors_llm_faults.py
    by_name = {t["name"]: t for t in manifest["targets"]}

    assert by_name["goldfish"]["status"] == "ok"
    assert by_name["goldfish"]["kept"] == ["Koi", "crucian carp", "Prussian carp"]
    assert {"name": "Goldfish", "reason": "matches target goldfish"} in by_name["goldfish"]["dropped"]
    assert by_name["goldfish"]["raw_reply"] == REPLIES["goldfish"]
    assert by_name["tabby cat"]["kept"] == ["Tiger cat", "Egyptian cat", "Persian cat"]
    assert by_name["lion"]["kept"] == ["cougar", "tiger", "leopard"]
    assert by_name["ratelimited"]["status"] == "ok" and chat_server.server.hits["ratelimited"] == 3
    assert by_name["slow"]["status"] == "ok" and chat_server.server.hits["slow"] == 2
    assert by_name["{odd} name\t"]["status"] == "ok"
    for name, message in [("refuse", "refused"), ("foreign", "Latin script"), ("empty", "empty reply"),
                          ("malformed", "malformed response"), ("nochoices", "malformed response"),
                          ("broken", "HTTP 500")]:  # fmt: skip
        assert by_name[name]["status"] == "failed" and message in by_name[name]["error"], by_name[name]
        assert by_name[name]["kept"] == []
    assert chat_server.server.hits["broken"] == 3  # 1 + max_retries
    assert manifest["run"]["cache_hits"] == 0
    assert all(
        t["model"] == "test-model" and t["template_hash"] == manifest["template_hash"] for t in by_name.values()
    )
    assert neighbor_map(str(tmp_path / "neighbors" / "neighbors.json"))["tiger"] == ["lion"]
    assert chat_server.server.auth == {f"Bearer {API_KEY}"}

    # rerun: only the failed classes are asked again, the manifest is byte-identical
    path = tmp_path / "neighbors" / "neighbors.json"
    before = path.read_bytes()
    hits = Counter(chat_server.server.hits)
    again = run(_section(chat_server.url, top_up=0), context)
    asked = {n for n in names if chat_server.server.hits[n] > hits[n]}
    assert asked == {"refuse", "foreign", "empty", "malformed", "nochoices", "broken"}
    assert again["run"]["cache_hits"] == 6
    assert path.read_bytes() == before

    # the key is never logged nor written
    assert API_KEY not in caplog.text
    for file in (tmp_path / "neighbors").iterdir():
        assert API_KEY not in file.read_text()


def test_openai_budget_dry_run_missing_key_and_unreachable(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("NLT_TEST_KEY", API_KEY)
    names = ["goldfish", "lion", "tabby cat"]
    estimate = run(_section(chat_server.url, dry_run=True), _context(tmp_path / "dry", names))
    assert estimate["requests"] == 3 and estimate["prompt_tokens"] > 0
    assert (
        sum(chat_server.server.hits.values()) == 0 and not (tmp_path / "dry" / "neighbors" / "neighbors.json").exists()
    )

    manifest = run(_section(chat_server.url, max_requests=2, concurrency=1), _context(tmp_path / "budget", names))
    statuses = [t["status"] for t in manifest["targets"]]
    assert statuses.count("ok") == 2 and "request budget exhausted" in manifest["targets"][-1]["error"]

    monkeypatch.delenv("NLT_TEST_KEY")
    with pytest.raises(ConfigError, match=r"\$NLT_TEST_KEY .* is not set"):  # stops before any request
        run(_section(chat_server.url), _context(tmp_path / "nokey", names))
    assert not (tmp_path / "nokey" / "neighbors" / "neighbors.json").exists()

    monkeypatch.setenv("NLT_TEST_KEY", API_KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NeighborSearchError, match="did not answer 4 requests in a row"):
        run(_section(f"http://127.0.0.1:{port}/v1", max_retries=1), _context(tmp_path / "down", names))
    assert not (tmp_path / "down" / "neighbors" / "neighbors.json").exists()


# ------------------------------------------------------------------ case 1: a bad reply never becomes a class

BAD_REPLIES = {
    "refusal": "Unfortunately, I cannot help with that request.",
    "error string": "Error: rate limit exceeded",
    "null": "null",
    "unsure": "I'm not sure what you mean by tabby.",
    "sorry": "I'm sorry, but I can't help with that.",
    "json error": '{"error": "model overloaded"}',
}


def test_a_bad_reply_is_a_failed_class_not_cached_and_asked_again(serve, tmp_path):
    server = serve(lambda name, attempt, body: BAD_REPLIES.get(name, "[Persian cat, Egyptian cat]"))
    names = [*BAD_REPLIES, "tabby"]
    manifest = run(_fault_section(server.url), _context(tmp_path, names))
    by_name = {t["name"]: t for t in manifest["targets"]}
    for name, reply in BAD_REPLIES.items():
        entry = by_name[name]
        assert entry["status"] == "failed" and entry["kept"] == [] and entry["raw_reply"] == reply[:200], entry
        assert entry["error"] in ("reply is not a list of names", "the model refused")
    assert set(neighbor_map(manifest)) == {"Persian cat", "Egyptian cat"}  # no "Unfortunately", "Error", "null" class
    cached = [json.loads(line) for line in (tmp_path / "neighbors" / "cache.jsonl").read_text().splitlines()]
    assert [r["query"] for r in cached] == ["tabby"]
    hits = Counter(server.hits)
    run(
        _fault_section(server.url), _context(tmp_path, names)
    )  # the failed classes are asked again, the good one is not
    assert {n: server.hits[n] - hits[n] for n in names} == {**{n: 1 for n in BAD_REPLIES}, "tabby": 0}


def test_a_long_bad_reply_keeps_its_first_200_characters(serve, tmp_path):
    prose = "I am unable to list categories for this request because " + "it is unclear " * 40
    server = serve(lambda name, attempt, body: prose)
    with pytest.raises(NeighborsStageError, match="no target class got a usable neighbor"):
        run(_fault_section(server.url), _context(tmp_path, ["tabby"]))
    entry = load_manifest(str(tmp_path / "neighbors"))["targets"][0]
    assert entry["raw_reply"] == prose[:200] and entry["error"] == "the model refused"


# ------------------------------------------------------------------ case 2 and 6: fatal errors, secrets


@pytest.mark.parametrize(
    "key, message",
    [
        (API_KEY + "\n", "whitespace, control"),
        (" ", "is empty or blank"),
        ("", "is empty or blank"),
        (None, "is not set"),
    ],
)
def test_a_bad_key_stops_before_any_request(serve, tmp_path, monkeypatch, caplog, key, message):
    server = serve(lambda name, attempt, body: "[red fox]")
    if key is None:
        monkeypatch.delenv("NLT_TEST_KEY")
    else:
        monkeypatch.setenv("NLT_TEST_KEY", key)
    with pytest.raises(NeighborsConfigError, match=message) as info:
        run(_fault_section(server.url), _context(tmp_path, ["tabby", "lion", "tiger"]))
    assert sum(server.hits.values()) == 0
    assert "$NLT_TEST_KEY" in str(info.value) and isinstance(info.value, (ConfigError, StageError))
    _no_secret_anywhere(tmp_path, str(info.value), caplog.text)


@pytest.mark.parametrize(
    "status, setting",
    [(401, "NLT_TEST_KEY"), (403, "neighbors.model"), (404, "neighbors.base_url"), (400, "neighbors.model")],
)
def test_a_fatal_answer_stops_the_stage_at_once(serve, tmp_path, caplog, status, setting):
    server = serve(lambda name, attempt, body: _error(status, f"nope, key={API_KEY}"))
    names = [f"class {i}" for i in range(12)]
    with pytest.raises(NeighborsConfigError, match=f"HTTP {status}") as info:
        run(_fault_section(server.url, max_retries=4), _context(tmp_path, names))
    assert sum(server.hits.values()) <= 3  # the requests in flight (concurrency 3), none retried or queued after
    assert setting in str(info.value)
    _no_secret_anywhere(tmp_path, str(info.value), caplog.text)


def test_credentials_in_the_url_and_the_key_never_reach_manifest_cache_or_logs(serve, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = serve(
        lambda name, attempt, body: "[Persian cat, Egyptian cat]" if name != "boom" else _error(500, f"key={API_KEY}")
    )
    url = server.url.replace("http://", f"http://user:{URL_SECRET}@")
    manifest = run(_fault_section(url, max_retries=1), _context(tmp_path, ["tabby", "boom"]))
    assert manifest["settings"]["base_url"].startswith("http://<redacted>@127.0.0.1")
    assert manifest["targets"][1]["status"] == "failed" and "HTTP 500" in manifest["targets"][1]["error"]
    _no_secret_anywhere(tmp_path, caplog.text, json.dumps(manifest))


def test_endpoint_down_stops_after_4_unanswered_requests_and_keeps_the_cache(serve, tmp_path, caplog):
    server = serve(lambda name, attempt, body: "[red fox, kit fox, fennec fox]")
    names = [f"class {i}" for i in range(20)]
    run(_fault_section(server.url), _context(tmp_path, names[:5]))  # five classes answered and cached
    cache = (tmp_path / "neighbors" / "cache.jsonl").read_text()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    section = {k: v for k, v in _fault_section(f"http://127.0.0.1:{port}/v1").items() if k not in ("timeout", "max_retries",
               "retry_backoff", "concurrency")}  # fmt: skip
    with pytest.raises(NeighborsStageError, match="did not answer 4 requests in a row") as info:
        run(section, _context(tmp_path, names))  # default retries (4) and backoff (1 s, doubling)
    # counted, not timed: 4 unanswered requests stop the run, so at most 3 of them were followed by a retry (without
    # the stop, each of the 15 classes would be retried 4 times, a minute of backoff)
    assert caplog.text.count("; retry ") <= 3
    assert isinstance(info.value, NeighborSearchError) and "cached" in str(info.value)
    assert (tmp_path / "neighbors" / "cache.jsonl").read_text() == cache


# ------------------------------------------------------------------ case 7: settings checked before any request


@pytest.mark.parametrize(
    "change, message",
    [
        ({"k": 0}, "k must be a positive integer"),
        ({"k": -2}, "k must be a positive integer"),
        ({"k": "3"}, "k must be a positive integer (got '3')"),
        ({"k": 2.5}, "k must be a positive integer"),
        ({"k": True}, "k must be a positive integer"),
        ({"ratios": [0, 0, 0]}, "ratios must be"),
        ({"ratios": [1, 1]}, "ratios must be"),
        ({"ratios": [1, -1, 3]}, "ratios must be"),
        ({"ratios": "paper"}, "ratios must be"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"concurrency": 0}, "concurrency must be a positive integer"),
        ({"timeout": 0}, "timeout must be"),
        ({"backend": None}, "backend is required"),
        ({"backend": "gpt"}, "backend must be one of"),
        ({"model": None}, "model must be the model name"),
        ({"model": ""}, "model must be the model name"),
    ],
)
def test_a_bad_setting_sends_no_request(serve, tmp_path, change, message):
    server = serve(lambda name, attempt, body: "[red fox]")
    section = {k: v for k, v in {**_fault_section(server.url), **change}.items() if v is not None}
    with pytest.raises(NeighborsConfigError, match=re.escape(message)):
        run(section, _context(tmp_path, ["tabby", "lion"]))
    assert sum(server.hits.values()) == 0 and not (tmp_path / "neighbors" / "neighbors.json").exists()


def test_ratios_auto_is_capped_and_zero_skips_a_group(serve, tmp_path):
    counts = [500, 400, 50, 10]  # many, many, medium, few: 1 : 18 : 90 uncapped
    assert group_ratios("auto", counts) == {"many": 1, "medium": 18, "few": 90}
    server = serve(
        lambda name, attempt, body: "[a fox, b fox, c fox, d fox, e fox, f fox, g fox, h fox, i fox, j fox]"
    )
    manifest = run(_fault_section(server.url, ratios="auto", top_up=0), _context(tmp_path, list("wxyz"), counts))
    assert manifest["settings"]["group_ratios"] == {"many": 1, "medium": 5, "few": 5}
    assert [t["num_requested"] for t in manifest["targets"]] == [2, 2, 10, 10]
    manifest = run(
        _fault_section(server.url, ratios=[0, 0, 1.5], top_up=0), _context(tmp_path / "z", list("wxyz"), counts)
    )
    assert [t["status"] for t in manifest["targets"]] == ["skipped", "skipped", "skipped", "ok"]
    assert manifest["targets"][3]["num_requested"] == 3 and manifest["summary"]["skipped"] == 3


# ------------------------------------------------------------------ cases 3, 4, 5, 9: guard spellings, synonyms, senses, top-up


def test_leak_spellings_synonyms_and_senses_through_the_llm(serve, tmp_path):
    replies = {
        "goldfish": "1. gold fish\n2. Goldfishes\n3. koi\n4. Carassius auratus",
        "orangutan": "[orang-utan, Orangs, gibbon, chimpanzee]",
        "brown bear": "- polar bear\n- ice bear\n- grizzly\n- American black bear",
        "cougar": '{"neighbors": ["lynx", "tiger", "Pumas", "jaguar"]}',
    }
    server = serve(lambda name, attempt, body: replies[name])
    manifest = run(_fault_section(server.url, k=3, top_up=0), _context(tmp_path, list(replies)))
    by_name = {t["name"]: t for t in manifest["targets"]}
    assert by_name["goldfish"]["kept"] == ["koi"]
    assert by_name["orangutan"]["kept"] == ["gibbon", "chimpanzee"]
    assert by_name["brown bear"]["kept"] == ["polar bear", "American black bear"]
    assert by_name["cougar"]["kept"] == ["lynx", "tiger", "jaguar"]
    aux = {a["name"]: a for a in manifest["auxiliary"]}
    assert aux["lynx"]["wnid"] == "n02127052" and aux["lynx"]["sense_corrected"]  # the wildcat, not the browser
    assert aux["tiger"]["wnid"] == "n02129604" and aux["gibbon"]["wnid"] == "n02483362"
    assert all(a["distance"][0] > 0 for a in aux.values() if a["wnid"])  # the chosen synset and its distance
    reasons = {d["name"]: d["reason"] for t in manifest["targets"] for d in t["dropped"]}
    assert reasons["gold fish"] == "matches target goldfish"
    assert by_name["goldfish"]["proposed"][:2] == ["gold fish", "koi"]  # "Goldfishes" is "gold fish" again
    assert reasons["orang-utan"] == "matches target orangutan" and "orangutan" in reasons["Orangs"]
    assert reasons["ice bear"] == "duplicate: same synset as polar bear"
    assert reasons["grizzly"] == "hyponym of target brown bear" and "cougar" in reasons["Pumas"]
    assert manifest["summary"]["senses_corrected"] >= 3


def test_a_short_class_is_topped_up_once_naming_what_to_avoid(serve, tmp_path):
    def behave(name, attempt, body):
        prompt = body["messages"][-1]["content"]
        if "Do not include" in prompt:
            return "[grizzly, sloth bear, spectacled bear, sun bear]"
        return "[polar bear, grizzly]" if name == "brown bear" else "[Persian cat, Egyptian cat, null]"

    server = serve(behave)
    manifest = run(_fault_section(server.url, k=3), _context(tmp_path, ["brown bear", "tabby"]))
    bear, tabby = manifest["targets"]
    assert bear["top_up"] == {"asked": 2, "proposed": ["grizzly", "sloth bear", "spectacled bear", "sun bear"],
                              "error": None}  # fmt: skip
    assert (
        bear["kept"] == ["polar bear", "sloth bear", "spectacled bear"] and bear["got"] == bear["num_requested"] == 3
    )
    assert tabby["top_up"]["asked"] == 1 and tabby["got"] == 3  # "null" was not a name
    follow_ups = [p for p in server.prompts if "Do not include" in p]
    assert len(follow_ups) == 2 and any("contains 2 visually similar" in p for p in follow_ups)
    bear_prompt = next(p for p in follow_ups if "brown bear itself" in p)
    assert "any of these categories: polar bear, grizzly." in bear_prompt
    assert manifest["summary"]["topped_up"] == 2 and manifest["summary"]["short"] == 0

    # a rerun is answered by the cache, top-ups included, and rewrites nothing
    path = tmp_path / "neighbors" / "neighbors.json"
    before, hits = path.read_bytes(), sum(server.hits.values())
    again = run(_fault_section(server.url, k=3), _context(tmp_path, ["brown bear", "tabby"]))
    assert sum(server.hits.values()) == hits and again["run"]["cache_hits"] == 4 and path.read_bytes() == before


# ------------------------------------------------------------------ case 8: exit status when nothing is usable


def _curate(tmp_path, neighbors: dict, env: dict | None = None, **popen):
    config = yaml.safe_load((REPO / "recipes" / "demo" / "curate.yaml").read_text())
    for key in ("train_files", "eval_files"):
        config["target"][key] = [str(REPO / p) for p in config["target"][key]]
    config["neighbors"] = neighbors
    path = tmp_path / "curate.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, str(REPO / "recipes" / "curate.py"), "--config", str(path), "--stages", "neighbors",
           "--output_dir", str(tmp_path / "out")]  # fmt: skip
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)  # fmt: skip


def test_curate_exits_non_zero_when_no_class_has_a_neighbor_or_the_key_is_rejected(serve, tmp_path):
    server = serve(lambda name, attempt, body: "I'm sorry, I can't help with that.")
    out = _curate(tmp_path / "refused", _fault_section(server.url)).communicate(timeout=120)[0]
    assert "no target class got a usable neighbor: 20 of 20 classes failed" in out and "Traceback" not in out
    assert load_manifest(str(tmp_path / "refused" / "out" / "neighbors"))["summary"]["with_neighbors"] == 0

    server = serve(lambda name, attempt, body: _error(401, "Incorrect API key provided"))
    proc = _curate(tmp_path / "rejected", _fault_section(server.url))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "HTTP 401" in out and "$NLT_TEST_KEY" in out and "Traceback" not in out
    assert API_KEY not in out and sum(server.hits.values()) <= 3


# ------------------------------------------------------------------ case 10: Ctrl-C

DRIVER = """
import sys
from datasets import ClassLabel, Dataset, DatasetDict, Features
from neighbor_lt.curate import CurateContext
from neighbor_lt.neighbors.stage import run

names = [f"class {i}" for i in range(40)]
labels = [i for i in range(40) for _ in range(200)]
train = Dataset.from_dict({"label": labels}, features=Features({"label": ClassLabel(names=names)}))
section = {"backend": "openai", "model": "test-model", "base_url": sys.argv[1], "api_key_env": "NLT_TEST_KEY",
           "k": 2, "ratios": [1, 1, 1], "concurrency": 2, "use_wordnet": False}
run(section, CurateContext(sys.argv[2], target=DatasetDict(train=train)))
"""


def test_ctrl_c_stops_sends_nothing_more_and_a_rerun_resumes(serve, tmp_path):
    server = serve(lambda name, attempt, body: "[red fox, kit fox]", delay=0.3)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), server.url, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(server.arrivals) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    output = proc.communicate(timeout=60)[0]  # a generous bound, not a timing: a loaded machine may be slow to exit
    assert proc.returncode != 0 and "interrupted" in output
    # counted, not timed: after Ctrl-C at most the request each of the 2 workers was sending arrives, none queued
    assert len([t for t in server.arrivals if t > interrupted]) <= 2
    cache = tmp_path / "neighbors" / "cache.jsonl"
    done = {json.loads(line)["query"] for line in cache.read_text().splitlines()}
    assert 3 <= len(done) < 40
    hits = Counter(server.hits)

    server.delay = 0.0
    proc = subprocess.run([sys.executable, str(driver), server.url, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(server.hits[name] == hits[name] for name in done)  # finished classes are not asked again
    manifest = load_manifest(str(tmp_path / "neighbors"))
    assert manifest["summary"]["ok"] == 40 and len(cache.read_text().splitlines()) == 40
