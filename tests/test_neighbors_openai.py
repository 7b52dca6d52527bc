"""The openai neighbor backend against a real chat-completions server on 127.0.0.1 (no network, no real key)."""

import http.server
import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features

from neighbor_lt.neighbors import get_backend
from neighbor_lt.neighbors.base import TargetQuery
from neighbor_lt.neighbors.llm import PAPER_TEMPLATE, parse_reply
from neighbor_lt.neighbors.manifest import load_manifest, neighbor_map
from neighbor_lt.neighbors.stage import run

API_KEY = "sk-test-DO-NOT-LEAK-1234567890"

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


class ChatHandler(http.server.BaseHTTPRequestHandler):
    """Speaks POST /v1/chat/completions; behaviour depends on the class name in the prompt."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        name = re.search(r"this category name: (.*)\. You should return:", prompt, re.DOTALL).group(1)
        server = self.server
        with server.lock:
            server.hits[name] += 1
            server.auth.add(self.headers.get("Authorization"))
            attempt = server.hits[name]
        if name == "ratelimited" and attempt <= 2:
            return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"})
        if name == "broken":
            return self._send(500, {"error": {"message": "boom"}})
        if name == "slow" and attempt == 1:
            time.sleep(1.0)  # past the client timeout once, then fast
        if name == "malformed":
            return self._send_raw(200, b"this is not json {")
        if name == "nochoices":
            return self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
        reply = REPLIES.get(name, "[alpha, beta]" if name in ("ratelimited", "slow") else "1. neighbor one\n2. two")
        self._send(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })  # fmt: skip

    def _send(self, status, payload, headers=None):
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status, data, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow reply
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    """A chat-completions server in a thread; yields its base_url and records hits per class."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    server.daemon_threads = True
    server.hits, server.auth, server.lock = Counter(), set(), threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/v1", server=server)
    server.shutdown()
    server.server_close()


def _context(tmp_path, names, counts=None):
    counts = counts or [200] * len(names)
    labels = [i for i, c in enumerate(counts) for _ in range(c)]
    train = Dataset.from_dict({"label": labels}, features=Features({"label": ClassLabel(names=names)}))
    return SimpleNamespace(output_dir=str(tmp_path), target=DatasetDict(train=train), config_path=None)


def _section(url, **extra):
    return {
        "backend": "openai", "model": "test-model", "base_url": url, "api_key_env": "NLT_TEST_KEY", "k": 3,
        "timeout": 0.5, "max_retries": 2, "retry_backoff": 0.01, "concurrency": 3, **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("[Koi, crucian carp, koi, , Prussian carp]", ["Koi", "crucian carp", "Prussian carp"]),
        ('["a b", "c"]', ["a b", "c"]),
        ('{"neighbors": ["x", "y"]}', ["x", "y"]),
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
    backend = get_backend("openai", model="m")
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
    manifest = run(_section(chat_server.url), context)
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
    again = run(_section(chat_server.url), context)
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
    manifest = run(_section(chat_server.url), _context(tmp_path / "nokey", names))
    assert all(t["status"] == "failed" and "NLT_TEST_KEY" in t["error"] for t in manifest["targets"])

    monkeypatch.setenv("NLT_TEST_KEY", API_KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = run(_section(f"http://127.0.0.1:{port}/v1", max_retries=1), _context(tmp_path / "down", names))
    assert all(t["status"] == "failed" and "cannot reach" in t["error"] for t in manifest["targets"])
    assert load_manifest(str(tmp_path / "down" / "neighbors"))["summary"]["failed"] == 3
