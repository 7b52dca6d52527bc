"""The openai neighbor backend against loopback servers that answer as today's APIs do: OpenAI's reasoning models
(``max_tokens`` and a non-default ``temperature`` refused with OpenAI's own error JSON), Structured Outputs
(``response_format`` ``json_schema``), servers without structured output (llama.cpp's and a pydantic server's
errors), replies cut at the token limit, refusals; and the dry run's price.
"""

import http.server
import json
import logging
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features
from retrieval_fixtures.chat_server import send_json, start_server, stop_servers

from neighbor_lt.curate import CurateContext, load_config
from neighbor_lt.neighbors import get_neighbor_backend
from neighbor_lt.neighbors.base import TargetQuery
from neighbor_lt.neighbors.llm import NEIGHBOR_LIST_FORMAT, list_price
from neighbor_lt.neighbors.manifest import load_manifest
from neighbor_lt.neighbors.stage import NeighborsConfigError, run

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-api-canary-0451"
NEIGHBORS = {
    "goldfish": ["koi", "crucian carp", "Prussian carp"],
    "tabby cat": ["tiger cat", "Egyptian cat", "Persian cat"],
    "lion": ["cougar", "tiger", "leopard"],
    "red fox": ["kit fox", "grey fox", "Arctic fox"],
}

# OpenAI's answers to a reasoning model's request with max_tokens / a temperature other than 1 (HTTP 400)
MAX_TOKENS_ERROR = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
    "instead.",
    "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter",
}  # fmt: skip
TEMPERATURE_ERROR = {
    "message": "Unsupported value: 'temperature' does not support 0 with this model. Only the default (1) value is "
    "supported.",
    "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value",
}  # fmt: skip
# llama.cpp's server on a schema it cannot combine; a pydantic server (extra fields forbidden) on an unknown field
LLAMA_CPP_ERROR = (400, {"error": {"code": 400, "message": 'Either "json_schema" or "grammar" can be specified, '
                                   "but not both", "type": "invalid_request_error"}})  # fmt: skip
PYDANTIC_ERROR = (422, {"detail": [{"type": "extra_forbidden", "loc": ["body", "response_format"],
                                    "msg": "Extra inputs are not permitted"}]})  # fmt: skip


class API(http.server.BaseHTTPRequestHandler):
    """POST /v1/chat/completions as the server's settings say: ``reasoning`` (refuse max_tokens and a temperature
    other than 1 as OpenAI does), ``no_schema`` (the error a json_schema request gets; None: answer it with JSON),
    ``refuse(body)`` (another error, or None), ``reply(name, body)`` (the content instead of the neighbors),
    ``finish`` / ``refusal`` (class name -> finish reason / refusal field)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        name = re.search(r"this category name: (.*?)\. You should return:", body["messages"][-1]["content"]).group(1)
        with server.lock:
            server.bodies.append(body)
        status, payload = self.answer(server, name, body)
        with server.lock:
            server.statuses[status] += 1
        send_json(self, status, payload)

    @staticmethod
    def answer(server, name, body):
        if server.refuse is not None and server.refuse(body) is not None:
            return server.refuse(body)
        if server.reasoning and "max_tokens" in body:
            return 400, {"error": MAX_TOKENS_ERROR}
        if server.reasoning and body.get("temperature", 1) != 1:
            return 400, {"error": TEMPERATURE_ERROR}
        schema = body.get("response_format")
        if schema is not None and server.no_schema is not None:
            return server.no_schema
        names = NEIGHBORS.get(name, ["alpha fox", "beta fox"])
        content = (
            json.dumps({"categories": names}) if schema else "Here you go:\n" + "\n".join(f"- {n}" for n in names)
        )
        if server.reply is not None:
            content = server.reply(name, body)
        message = {"role": "assistant", "content": content, "refusal": server.refusal.get(name)}
        usage = {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
                 "completion_tokens_details": {"reasoning_tokens": 24 if server.reasoning else 0}}  # fmt: skip
        choice = {"index": 0, "message": message, "finish_reason": server.finish.get(name, "stop")}
        return 200, {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [choice], "usage": usage}  # fmt: skip

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    servers = []

    def start(reasoning=False, no_schema=None, refuse=None, reply=None, finish=None, refusal=None):
        server = start_server(
            API, reasoning=reasoning, no_schema=no_schema, refuse=refuse, reply=reply, finish=finish or {},
            refusal=refusal or {}, bodies=[], statuses=Counter(),
        )  # fmt: skip
        servers.append(server)
        return server

    yield start
    stop_servers(servers)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("NLT_API_KEY", API_KEY)


def _context(path, names):
    labels = [i for i in range(len(names)) for _ in range(150)]
    train = Dataset.from_dict({"label": labels}, features=Features({"label": ClassLabel(names=names)}))
    return CurateContext(str(path), target=DatasetDict(train=train))


def _section(url, model, **extra):
    return {"backend": "openai", "model": model, "base_url": url, "api_key_env": "NLT_API_KEY", "k": 3,
            "ratios": [1, 1, 1], "timeout": 5, "max_retries": 1, "retry_backoff": 0.01, "concurrency": 2,
            "top_up": 0, "use_wordnet": False, **extra}  # fmt: skip


def _kept(manifest):
    return {t["name"]: t["kept"] for t in manifest["targets"]}


# ---------------------------------------------------------------------------------------------- reasoning models


@pytest.mark.parametrize("model", ["gpt-5.5", "o4-mini", "house-reasoner-v2"])
def test_a_reasoning_model_that_refuses_max_tokens_and_temperature_gets_a_full_run(api, tmp_path, caplog, model):
    """OpenAI's name rule sends neither to gpt-5.5 / o4-mini; a model it does not know gets the 400, and the run
    drops temperature (logged), sends the request again and finishes every class."""
    caplog.set_level(logging.INFO)
    server = api(reasoning=True)
    manifest = run(_section(server.url, model), _context(tmp_path, list(NEIGHBORS)))
    assert _kept(manifest) == NEIGHBORS and manifest["summary"]["ok"] == 4
    assert all("max_completion_tokens" in b and "max_tokens" not in b for b in server.bodies)
    refused = server.statuses[400]
    if model == "house-reasoner-v2":  # the requests in flight when the first 400 came (concurrency 2), no more
        assert 1 <= refused <= 2 and "refused temperature for model house-reasoner-v2" in caplog.text
        assert sum("temperature" in b for b in server.bodies) == refused  # each one that had it got the 400
    else:
        assert refused == 0 and all("temperature" not in b for b in server.bodies)
    assert server.statuses[200] == 4 and len(server.bodies) == 4 + refused
    # room for the hidden reasoning tokens where the name says a reasoning model
    assert manifest["settings"]["max_completion_tokens"] == (256 if model == "house-reasoner-v2" else 4096)
    stats = json.loads((tmp_path / "neighbors" / "runs.jsonl").read_text().splitlines()[-1])
    assert stats["prompt_tokens"] == 480 and stats["completion_tokens"] == 160 and stats["requests"] == 4 + refused


def test_a_chat_model_gets_temperature_and_the_paper_limit(api, tmp_path):
    server = api()
    run(_section(server.url, "gpt-4.1"), _context(tmp_path, ["goldfish"]))
    assert server.bodies[0]["temperature"] == 0 and server.bodies[0]["max_completion_tokens"] == 256
    assert "reasoning_effort" not in server.bodies[0]
    server = api(reasoning=True)
    run(_section(server.url, "gpt-5.5", reasoning_effort="none"), _context(tmp_path / "none", ["goldfish"]))
    assert server.bodies[0]["reasoning_effort"] == "none" and "temperature" in server.bodies[0]  # GPT-5 told not to
    assert server.statuses[400] == 1 and "temperature" not in server.bodies[1]  # think takes one; this server not


def test_a_server_that_knows_only_max_tokens_gets_it(api, tmp_path, caplog):
    unknown = {"error": {"message": "Unrecognized request argument supplied: max_completion_tokens",
                         "type": "invalid_request_error", "param": None, "code": None}}  # fmt: skip
    server = api(refuse=lambda body: (400, unknown) if "max_completion_tokens" in body else None)
    manifest = run(_section(server.url, "local-model", concurrency=1), _context(tmp_path, ["goldfish", "lion"]))
    assert _kept(manifest) == {"goldfish": NEIGHBORS["goldfish"], "lion": NEIGHBORS["lion"]}
    assert server.statuses[400] == 1 and [b.get("max_tokens") for b in server.bodies[1:]] == [256, 256]
    assert "sending the limit as max_tokens" in caplog.text

    server = api(refuse=lambda body: (400, unknown) if "max_completion_tokens" in body or "max_tokens" in body
                 else None)  # fmt: skip
    with pytest.raises(NeighborsConfigError, match="HTTP 400"):  # both names refused: a setting to fix, no loop
        run(_section(server.url, "local-model", concurrency=1), _context(tmp_path / "both", ["goldfish"]))
    assert len(server.bodies) == 2


# -------------------------------------------------------------------------------------------- structured output


def test_structured_output_requests_carry_the_strict_schema_and_json_replies_are_parsed(api, tmp_path):
    server = api(reasoning=True)
    manifest = run(_section(server.url, "gpt-5.5"), _context(tmp_path, list(NEIGHBORS)))
    for body in server.bodies:
        form = body["response_format"]
        assert form["type"] == "json_schema" and form["json_schema"]["strict"] is True
        schema = form["json_schema"]["schema"]
        assert schema["additionalProperties"] is False and schema["required"] == list(schema["properties"])
        assert schema["properties"]["categories"] == {**schema["properties"]["categories"], "type": "array",
                                                     "items": {"type": "string"}}  # fmt: skip
    assert body["response_format"] == NEIGHBOR_LIST_FORMAT
    assert _kept(manifest) == NEIGHBORS
    assert manifest["targets"][0]["raw_reply"] == json.dumps({"categories": NEIGHBORS["goldfish"]})

    before = len(server.bodies)  # a rerun is answered by the cache
    again = run(_section(server.url, "gpt-5.5"), _context(tmp_path, list(NEIGHBORS)))
    assert len(server.bodies) == before and again["run"]["cache_hits"] == 4 and _kept(again) == NEIGHBORS


@pytest.mark.parametrize("refusal", [LLAMA_CPP_ERROR, PYDANTIC_ERROR], ids=["llama.cpp-400", "pydantic-422"])
def test_a_server_without_structured_output_falls_back_to_text(api, tmp_path, caplog, refusal):
    server = api(no_schema=refusal)
    manifest = run(_section(server.url, "Qwen/Qwen3-8B"), _context(tmp_path, list(NEIGHBORS)))
    assert _kept(manifest) == NEIGHBORS
    refused = server.statuses[refusal[0]]
    assert 1 <= refused <= 2 and server.statuses[200] == 4
    assert sum("response_format" in b for b in server.bodies) == refused  # each one that had it was refused
    assert "asking for plain text from now on" in caplog.text
    assert manifest["targets"][0]["raw_reply"].startswith("Here you go:\n- koi")


def test_required_structured_output_refused_is_one_config_error(api, tmp_path):
    server = api(no_schema=LLAMA_CPP_ERROR)
    with pytest.raises(NeighborsConfigError, match=r"refused structured output .* neighbors.structured_output"):
        run(_section(server.url, "Qwen/Qwen3-8B", structured_output=True), _context(tmp_path, ["goldfish", "lion"]))
    assert server.statuses[200] == 0 and len(server.bodies) <= 2  # nothing retried
    assert not (tmp_path / "neighbors" / "neighbors.json").exists()
    server = api(no_schema=LLAMA_CPP_ERROR)
    manifest = run(_section(server.url, "m", structured_output=False), _context(tmp_path / "off", ["goldfish"]))
    assert "response_format" not in server.bodies[0] and _kept(manifest) == {"goldfish": NEIGHBORS["goldfish"]}


# ------------------------------------------------------------------------------------------------ bad replies


def test_cut_refused_and_malformed_replies_are_failed_classes_that_lose_nothing(api, tmp_path):
    cut = '{"categories": ["tiger cat", "Egypt'
    replies = {"tabby cat": cut, "lion": "", "red fox": '{"categories": "kit fox"'}
    server = api(reply=lambda name, body: replies.get(name, json.dumps({"categories": NEIGHBORS[name]})),
                 finish={"tabby cat": "length", "lion": "length"})  # fmt: skip
    names = list(NEIGHBORS)
    manifest = run(_section(server.url, "gpt-5.5"), _context(tmp_path, names))
    by_name = {t["name"]: t for t in manifest["targets"]}
    assert by_name["goldfish"]["kept"] == NEIGHBORS["goldfish"]
    for name in ("tabby cat", "lion"):
        entry = by_name[name]
        assert entry["status"] == "failed" and "cut at max_completion_tokens=4096" in entry["error"], entry
        assert "raise neighbors.max_completion_tokens or lower neighbors.reasoning_effort" in entry["error"]
    assert by_name["tabby cat"]["raw_reply"] == cut  # what came back is kept in the manifest
    assert by_name["red fox"]["status"] == "failed" and by_name["red fox"]["raw_reply"] == replies["red fox"]
    cached = [json.loads(line)["query"] for line in (tmp_path / "neighbors" / "cache.jsonl").read_text().splitlines()]
    assert cached == ["goldfish"]

    refusing = api(reply=lambda name, body: "", refusal={"goldfish": "I can't help with that."})
    with pytest.raises(Exception, match="no target class got a usable neighbor.*the model refused"):
        run(_section(refusing.url, "gpt-5.5"), _context(tmp_path / "refused", ["goldfish"]))
    entry = load_manifest(str(tmp_path / "refused" / "neighbors"))["targets"][0]
    assert entry["raw_reply"] == "I can't help with that."

    replies.clear()  # fixed server: the rerun asks exactly the failed classes
    server.finish.clear()
    before = Counter(
        re.search(r"this category name: (.*?)\. You", b["messages"][-1]["content"]).group(1) for b in server.bodies
    )
    manifest = run(_section(server.url, "gpt-5.5"), _context(tmp_path, names))
    after = Counter(
        re.search(r"this category name: (.*?)\. You", b["messages"][-1]["content"]).group(1) for b in server.bodies
    )
    assert {n: after[n] - before[n] for n in names} == {"goldfish": 0, "tabby cat": 1, "lion": 1, "red fox": 1}
    assert by_name.keys() == _kept(manifest).keys() and _kept(manifest)["red fox"] == NEIGHBORS["red fox"]


# ------------------------------------------------------------------------------------------------------- price


def test_dry_run_prices_the_run_with_the_models_price(api, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    section = {k: v for k, v in _section(None, "gpt-5.5", dry_run=True).items() if k != "base_url"}
    estimate = run(section, _context(tmp_path, list(NEIGHBORS)))
    assert estimate["requests"] == 4 and estimate["price_per_million"] == [5.0, 30.0]
    expected = (estimate["prompt_tokens"] * 5.0 + estimate["completion_tokens"] * 30.0) / 1e6
    assert estimate["cost_usd"] == round(expected, 4) and estimate["max_cost_usd"] > estimate["cost_usd"]
    assert "for gpt-5.5 at $5.00 / $30.00 per 1M input / output tokens plus its hidden reasoning tokens" in caplog.text

    server = api()  # another endpoint: OpenAI's list price does not apply; the configured one does
    estimate = run(_section(server.url, "gpt-5.5", dry_run=True), _context(tmp_path / "local", ["goldfish"]))
    assert "cost_usd" not in estimate and "set neighbors.price_per_million" in caplog.text
    estimate = run(_section(server.url, "m", dry_run=True, price_per_million=[1, 2]), _context(tmp_path, ["lion"]))
    assert estimate["cost_usd"] == round((estimate["prompt_tokens"] + 2 * estimate["completion_tokens"]) / 1e6, 4)
    assert server.bodies == []  # a dry run sends nothing


@pytest.mark.parametrize("recipe", ["imagenet_lt", "inat2018", "places_lt"])
def test_the_paper_curate_configs_name_a_current_model_and_price_it(recipe):
    config = load_config(str(REPO / "recipes" / recipe / "curate.yaml"))
    args = config.arguments("neighbors")
    assert args.backend == "openai" and args.dry_run is True and not args.options.model.startswith("gpt-4")
    backend = get_neighbor_backend("openai", **{**vars(args.options), "template_file": None})
    assert backend.price() == list_price(args.options.model) is not None
    queries = [TargetQuery(i, f"n{i:08d}", f"class {i}", num_requested=5) for i in range(1000)]
    estimate = backend.estimate(queries)
    assert estimate["requests"] == 1000 and 0 < estimate["cost_usd"] < estimate["max_cost_usd"] < 100
    text = (REPO / "recipes" / recipe / "curate.yaml").read_text()
    assert "dry_run" in text and "price" in text and yaml.safe_load(text)["neighbors"]["dry_run"] is True

    # the README's local-server variant of the same file
    local = ["--neighbors.dry_run", "false", "--neighbors.backend_kwargs.base_url", "http://127.0.0.1:8000/v1",
             "--neighbors.backend_kwargs.model", "Qwen/Qwen3-8B", "--neighbors.backend_kwargs.reasoning_effort", "null",
             "--neighbors.backend_kwargs.price_per_million", "null"]  # fmt: skip
    options = load_config(str(REPO / "recipes" / recipe / "curate.yaml"), local).arguments("neighbors").options
    backend = get_neighbor_backend("openai", **{**vars(options), "template_file": None})
    body = backend.request_body(queries[0])
    assert backend.price() is None and "reasoning_effort" not in body and body["temperature"] == 0
    assert (body["model"], body["max_completion_tokens"]) == ("Qwen/Qwen3-8B", 256)


def test_a_template_file_is_read_next_to_the_yaml_and_a_missing_one_is_one_line(api, tmp_path):
    server = api()
    (tmp_path / "prompt.txt").write_text("List {k} look-alikes of: this category name: {name}. You should return:\n")
    context = _context(tmp_path / "out", ["goldfish"])
    context.config_path = str(tmp_path / "curate.yaml")  # relative paths of the YAML are looked up next to it
    manifest = run(_section(server.url, "m", template_file="prompt.txt"), context)
    assert server.bodies[0]["messages"][-1]["content"].startswith(
        "List 3 look-alikes of: this category name: goldfish"
    )
    assert manifest["settings"]["template"].startswith("List {k} look-alikes")
    with pytest.raises(NeighborsConfigError, match="neighbors.template_file not found: .*missing.txt"):
        run(_section(server.url, "m", template_file="missing.txt"), context)
