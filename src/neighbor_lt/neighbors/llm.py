"""Neighbor search with a chat LLM behind any OpenAI-compatible endpoint (Chat Completions), with a request cache.

Every request and its reply are appended to a JSONL cache keyed by (backend, model, template hash, class query,
count), so a rerun sends no request and an interrupted run resumes. A reply counts only when it reads as a list of
names (:func:`neighbor_lt.neighbors.replies.read_reply`); anything else (a refusal, an error string, ``null``, prose,
a reply cut short) is a failed class, never cached, asked again on the next run.

Requests follow today's OpenAI API. The reply limit goes as ``max_completion_tokens`` (``max_tokens`` is deprecated
and refused by reasoning models). ``temperature`` is sent only to a model that takes one: not to the o-series nor to
the GPT-5 family, whose reasoning models accept only the default, unless ``reasoning_effort: none``. The reply is
asked for as JSON matching a strict schema of the neighbor list (``response_format`` ``json_schema``) where the
endpoint supports it; the same reader parses JSON and free text. When an endpoint answers HTTP 400 / 422 naming one
of these parameters (a model the name rule does not know, a server without structured output), the request is sent
once more without it (``max_tokens`` instead of ``max_completion_tokens`` for a server that knows only the old name),
the change is logged and the rest of the run follows it.

Errors are of two kinds. Retryable ones (timeouts, 429, 5xx, connection resets) are retried with exponential
backoff; ``max_consecutive_failures`` requests in a row that get no answer at all (endpoint down) stop the run.
The others stop the run at once with a ``ConfigError`` naming the setting to fix: a missing or malformed API key,
HTTP 400 / 401 / 403 / 404 / 422. The key is read from the environment at call time, registered with
``neighbor_lt.secrets`` and never logged, cached or written; every error text is redacted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from neighbor_lt.configs import ConfigError
from neighbor_lt.neighbors.base import Candidate, Checks, NeighborBackend, NeighborSearchError, Proposal, TargetQuery
from neighbor_lt.neighbors.cache import RequestCache
from neighbor_lt.neighbors.chat_api import (
    NEIGHBOR_LIST_FORMAT,
    OPENAI_PRICES,
    describe_error,
    is_reasoning_model,
    list_price,
    rejected_parameter,
    retry_after,
    takes_temperature,
    unfinished_reply,
)
from neighbor_lt.neighbors.names import clean_name
from neighbor_lt.neighbors.replies import ParsedReply, failure_reason, parse_reply, read_reply
from neighbor_lt.secrets import redact, register_secret

logger = logging.getLogger(__name__)

__all__ = [
    "NEIGHBOR_LIST_FORMAT", "OPENAI_PRICES", "OpenAIBackend", "OpenAIOptions", "PAPER_TEMPLATE", "ParsedReply",
    "RequestCache", "is_reasoning_model", "list_price", "parse_reply", "read_reply", "rejected_parameter",
    "takes_temperature",
]  # fmt: skip

# The structured in-context prompt of the paper (appendix B.2); {k} and {name} are filled in per class.
PAPER_TEMPLATE = (
    "Now I will give you one category name. Please create a list which contains {k} visually similar categories "
    "of the provided category. For example: If I give you a category name: Acacia cochliacantha. You should return: "
    "[Acacia cambagei, Acacia farnesiana, Acacia karroo, Acacia nilotica, Acacia tortilis]. "
    "Now, I give you this category name: {name}. You should return:"
)
# Appended to the prompt of a top-up request (the guard or the parser left a class short).
AVOID_SUFFIX = "\nDo not include {name} itself or any of these categories: {avoid}."
_MAX_AVOID = 40

# Endpoint answers that mean "this request is wrong", not "try later": the run stops with the setting to fix.
_FATAL_STATUS = (400, 401, 403, 404, 422)
# Answers from a gateway whose upstream is down: they count towards the consecutive-failure stop, like no answer.
_GATEWAY_DOWN = (502, 503, 504)


def template_hash(template: str, system_prompt: str | None = None) -> str:
    """A short, stable hash of the prompt template (and system prompt), recorded with every reply."""
    return hashlib.sha256(json.dumps([template, system_prompt]).encode()).hexdigest()[:16]


def render(template: str, name: str, k: int) -> str:
    """Fill a template; plain replacement, so braces inside a class name cannot break it."""
    return template.replace("{k}", str(k)).replace("{name}", name)


@dataclass
class OpenAIOptions:
    """Options of the ``openai`` backend: any endpoint that speaks OpenAI's Chat Completions."""

    model: str | None = field(
        default=None, metadata={"help": "openai: model name (required), e.g. gpt-5.5 or what a local server serves."}
    )
    base_url: str | None = field(default=None, metadata={"help": "openai: endpoint root, e.g. http://host:8000/v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: environment variable of the key."})
    template: str | None = field(
        default=None, metadata={"help": "openai: prompt with {name} and {k}; paper's default."}
    )
    template_file: str | None = field(
        default=None, metadata={"help": "openai: read the prompt template from a file.", "path": True}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "openai: optional system message."})
    temperature: float = field(
        default=0.0,
        metadata={"help": "openai: sampling temperature, sent only to a model that takes one (not the o-series or "
                  "GPT-5 reasoning models, which take only their default)."},
    )  # fmt: skip
    max_completion_tokens: int | None = field(
        default=None,
        metadata={"help": "openai: reply token limit, reasoning tokens included (null: 256, or 4096 for a "
                  "reasoning model that reasons)."},
    )  # fmt: skip
    max_tokens: int | None = field(
        default=None, metadata={"help": "openai: old name of max_completion_tokens (read as it)."}
    )
    reasoning_effort: str | None = field(
        default=None,
        metadata={"help": "openai: a reasoning model's effort (none, minimal, low, medium, high, xhigh, as the "
                  "model takes); null: not sent (the model's default)."},
    )  # fmt: skip
    structured_output: Any = field(
        default="auto",
        metadata={"help": "openai: ask for the reply as JSON of a strict neighbor-list schema (response_format "
                  "json_schema): auto (plain text when the endpoint refuses it), true (required), false (never)."},
    )  # fmt: skip
    price_per_million: list[float] | None = field(
        default=None,
        metadata={"help": "openai: USD per 1M [input, output] tokens, to price a run (dry_run); null: OpenAI's list "
                  "price of the model when known."},
    )  # fmt: skip
    timeout: float = field(default=60.0, metadata={"help": "openai: seconds per request."})
    max_retries: int = field(default=4, metadata={"help": "openai: retries on 429 / 5xx / timeouts."})
    retry_backoff: float = field(default=1.0, metadata={"help": "openai: first retry delay (s), doubled per retry."})
    concurrency: int = field(default=4, metadata={"help": "openai: requests in flight at once."})
    max_requests: int | None = field(default=None, metadata={"help": "openai: request budget of one run."})
    max_consecutive_failures: int = field(
        default=4,
        metadata={"help": "openai: requests in a row with no answer (endpoint down) that stop the stage."},
    )

    def problems(self) -> list[str]:
        checks = Checks(self)
        checks.need(isinstance(self.model, str) and self.model.strip() != "", "model",
                    "the model name the endpoint serves (required for backend openai)")  # fmt: skip
        checks.need(isinstance(self.api_key_env, str) and self.api_key_env.strip() != "", "api_key_env",
                    "the name of an environment variable")  # fmt: skip
        checks.positive_int("concurrency", "max_consecutive_failures")
        checks.positive_int("max_completion_tokens", "max_tokens", "max_requests", optional=True)
        checks.positive_int("max_retries", minimum=0)
        checks.number("temperature", "a number >= 0", low=0)
        checks.number("timeout", "a positive number of seconds", low=0, strict=True)
        checks.number("retry_backoff", "a number of seconds >= 0", low=0)
        checks.need(self.reasoning_effort is None or (isinstance(self.reasoning_effort, str)
                    and self.reasoning_effort.strip() != ""), "reasoning_effort", "a level such as low, or null")  # fmt: skip
        checks.need(self.structured_output in ("auto", True, False), "structured_output", "auto, true or false")
        price = self.price_per_million
        checks.need(price is None or (isinstance(price, (list, tuple)) and len(price) == 2
                    and all(isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in price)),
                    "price_per_million", "[input, output] USD per 1M tokens, or null")  # fmt: skip
        return checks.problems


class _Stopped(Exception):
    """Raised inside a worker when the run stops (Ctrl-C, a fatal error, the endpoint down)."""


class _Run:
    """What the worker threads of one ``propose`` share: the stop flag, the error that stopped the run, the request
    budget and the count of requests in a row that got no answer from the endpoint."""

    def __init__(self, max_requests: int | None, max_unanswered: int):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.limit, self.used = max_requests, 0
        self.unanswered, self.max_unanswered = 0, max_unanswered
        self.lock = threading.Lock()

    def take(self) -> bool:
        """Take one request from the budget; False when it is spent."""
        with self.lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def fail(self, error: BaseException) -> None:
        """Stop the run with ``error`` (the first one wins)."""
        with self.lock:
            if self.error is None:
                self.error = error
        self.stop.set()

    def answered(self, yes: bool) -> bool:
        """Record whether the endpoint answered a request; True when too many in a row went unanswered."""
        with self.lock:
            self.unanswered = 0 if yes else self.unanswered + 1
            return self.unanswered >= self.max_unanswered


class OpenAIBackend(NeighborBackend):
    """Ask a chat model behind an OpenAI-compatible endpoint, one request per target class.

    Example:
        >>> backend = OpenAIBackend(model="gpt-5.5", reasoning_effort="none")
        >>> sorted(backend.request_body(TargetQuery(0, "n01443537", "goldfish")))
        ['max_completion_tokens', 'messages', 'model', 'reasoning_effort', 'response_format', 'temperature']
        >>> "temperature" in OpenAIBackend(model="o3").request_body(TargetQuery(0, "n01443537", "goldfish"))
        False

    Args:
        options: an :class:`OpenAIOptions`, or its fields as keyword arguments (``model`` is required).
    """

    name = "openai"
    Options = OpenAIOptions
    can_top_up = True
    cacheable = True

    def __init__(self, options: OpenAIOptions | None = None, /, **values):
        super().__init__(options, **values)
        o = self.options
        self.model, self.base_url, self.api_key_env = o.model, o.base_url, o.api_key_env
        self.where = redact(o.base_url or "api.openai.com")
        template = o.template
        if o.template_file:
            if not os.path.isfile(o.template_file):
                raise ConfigError(f"neighbors.template_file not found: {o.template_file}")
            with open(o.template_file, encoding="utf-8") as f:
                template = f.read().strip()
        self.template = template or PAPER_TEMPLATE
        self.system_prompt = o.system_prompt
        self.template_hash = template_hash(self.template, o.system_prompt)
        self.temperature = o.temperature
        self.reasoning = is_reasoning_model(o.model) and o.reasoning_effort != "none"
        if o.max_tokens and not o.max_completion_tokens:
            logger.info("neighbors.max_tokens is the old name of max_completion_tokens: sent as max_completion_tokens")
        self.max_completion_tokens = o.max_completion_tokens or o.max_tokens or (4096 if self.reasoning else 256)
        self.timeout, self.max_retries, self.retry_backoff = o.timeout, o.max_retries, o.retry_backoff
        self.concurrency, self.max_requests = max(1, o.concurrency), o.max_requests
        self.max_consecutive_failures = max(1, o.max_consecutive_failures)
        # what requests carry; an endpoint's HTTP 400 naming one of them changes it for the rest of the run
        self._send = {
            "temperature": takes_temperature(o.model, o.reasoning_effort),
            "response_format": o.structured_output is not False,
            "limit": "max_completion_tokens",
        }
        self._refused: set[str] = set()
        self._send_lock = threading.Lock()
        self._client = None

    def settings(self):
        o = self.options
        return {
            "base_url": redact(self.base_url) if self.base_url else None,
            "api_key_env": self.api_key_env,
            "template": self.template,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_completion_tokens": self.max_completion_tokens,
            "reasoning_effort": o.reasoning_effort,
            "structured_output": o.structured_output,
        }

    def messages(self, query: TargetQuery) -> list[dict]:
        """The chat messages of one request (a top-up request names what to avoid)."""
        name = clean_name(query.query)
        prompt = render(self.template, name, query.num_requested)
        if query.avoid:
            avoid = ", ".join(clean_name(a) for a in query.avoid[:_MAX_AVOID])
            prompt += AVOID_SUFFIX.replace("{name}", name).replace("{avoid}", avoid)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": prompt}]

    def request_body(self, query: TargetQuery) -> dict:
        """The Chat Completions request of one query, with the parameters the endpoint is known to take."""
        with self._send_lock:
            send = dict(self._send)
        body = {"model": self.model, "messages": self.messages(query), send["limit"]: self.max_completion_tokens}
        if send["temperature"]:
            body["temperature"] = self.temperature
        if self.options.reasoning_effort is not None:
            body["reasoning_effort"] = self.options.reasoning_effort
        if send["response_format"]:
            body["response_format"] = NEIGHBOR_LIST_FORMAT
        return body

    def cache_key(self, query: TargetQuery) -> str:
        """Cache key: backend, model, template hash, class query, requested count (and the names to avoid)."""
        extra = {"avoid": list(query.avoid[:_MAX_AVOID])} if query.avoid else {}
        return RequestCache.key(
            backend=self.name, model=self.model, template_hash=self.template_hash, query=query.query,
            k=query.num_requested, temperature=self.temperature, **extra,
        )  # fmt: skip

    def cached_reply(self, query: TargetQuery, cache: RequestCache | None) -> str | None:
        """The cached reply of a query when it reads as a list of names (an old cached refusal does not count)."""
        record = cache.get(self.cache_key(query)) if cache else None
        return record["reply"] if record and read_reply(record.get("reply")).names else None

    def price(self) -> tuple[float, float] | None:
        """USD per 1M (input, output) tokens: ``price_per_million``, else OpenAI's list price (its own endpoint)."""
        if self.options.price_per_million is not None:
            return tuple(self.options.price_per_million)
        return list_price(self.model) if self.base_url is None else None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The price of so many tokens in USD, None when the price is not known."""
        price = self.price()
        return None if price is None else (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6

    def estimate(self, queries: list[TargetQuery], cache: RequestCache | None = None) -> dict:
        """What a run would cost: requests not answered by the cache, a rough token count (4 characters a token) and
        its price. A reasoning model also spends hidden reasoning tokens, billed as output: the visible reply is the
        low end, ``max_completion_tokens`` for every request the high end."""
        todo = [q for q in queries if self.cached_reply(q, cache) is None]
        schema = len(json.dumps(NEIGHBOR_LIST_FORMAT)) // 4 if self._send["response_format"] else 0
        prompt_tokens = sum(len(json.dumps(self.messages(q))) // 4 + schema for q in todo)
        completion_tokens = sum(min(self.max_completion_tokens, 8 * q.num_requested + 8) for q in todo)
        most = self.max_completion_tokens * len(todo)
        out = {"requests": len(todo), "cached": len(queries) - len(todo), "prompt_tokens": prompt_tokens,
               "completion_tokens": completion_tokens, "max_completion_tokens": most, "model": self.model,
               "reasoning": self.reasoning}  # fmt: skip
        if self.price() is not None:
            out.update(price_per_million=list(self.price()), cost_usd=round(self.cost(prompt_tokens, completion_tokens), 4),
                       max_cost_usd=round(self.cost(prompt_tokens, most), 4))  # fmt: skip
        return out

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        register_secret(key)
        setting = f"${self.api_key_env} (the variable neighbors.api_key_env names)"
        if key is None or not key.strip():
            state = "is not set" if key is None else "is empty or blank"
            raise ConfigError(f"no API key found, {setting} {state}; export the key there")
        if any(c.isspace() for c in key) or not (key.isascii() and key.isprintable()):
            raise ConfigError(
                f"the API key in {setting} has whitespace, control or non-ASCII characters (a trailing newline?), "
                "which an HTTP header cannot carry; store the bare key there"
            )
        return key

    def _get_client(self):
        if self._client is None:
            import openai

            # retries are ours (counted against the budget and logged), so the client makes a single attempt
            self._client = openai.OpenAI(
                api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
        return self._client

    def _fatal(self, error) -> ConfigError:
        """The setting to fix behind an answer that retrying cannot change."""
        status = getattr(error, "status_code", None)
        message = str(getattr(error, "message", error))[:200]
        key = f"${self.api_key_env}"
        if status == 401:
            text = f"the endpoint {self.where} rejected the API key (HTTP 401): put a valid key in {key} " \
                   "(neighbors.api_key_env names the variable)"  # fmt: skip
        elif status == 403:
            text = f"the endpoint {self.where} refused access (HTTP 403) with the key in {key}: check that the key " \
                   f"may use neighbors.model {self.model!r}; the endpoint said: {message}"  # fmt: skip
        elif status == 404:
            text = f"HTTP 404 from {self.where}: check neighbors.base_url (an OpenAI-compatible root, usually ending " \
                   f"in /v1) and neighbors.model {self.model!r}; the endpoint said: {message}"  # fmt: skip
        elif status is not None and rejected_parameter(error) in ("response_format", "json_schema"):
            text = f"the endpoint {self.where} refused structured output (HTTP {status}) although " \
                   f"neighbors.structured_output is true: set it to auto or false; the endpoint said: {message}"  # fmt: skip
        elif status is not None:
            text = f"the endpoint {self.where} rejected the request (HTTP {status}): check neighbors.model, " \
                   f"reasoning_effort, max_completion_tokens and system_prompt; the endpoint said: {message}"  # fmt: skip
        else:
            text = f"the API key in {key} is not a valid HTTP header value; store the bare key there"
        return ConfigError(redact(text))

    def _adapt(self, error, body: dict) -> bool:
        """After an HTTP 400 / 422 naming an optional parameter ``body`` carried: stop sending it (or send the other
        name of the reply limit) for the rest of the run, logged once; True when the request should be sent again."""
        param = rejected_parameter(error)
        sent = "response_format" if param == "json_schema" else param
        if sent not in body or (sent == "response_format" and self.options.structured_output is True):
            return False
        key, value = {"temperature": ("temperature", False), "response_format": ("response_format", False),
                      "max_completion_tokens": ("limit", "max_tokens"),
                      "max_tokens": ("limit", "max_completion_tokens")}[sent]  # fmt: skip
        with self._send_lock:
            if sent in self._refused:  # a request in flight when another one found out: send it again as it is now
                return self._send[key] != sent
            if value in self._refused:  # both names of the limit refused: nothing left to try
                return False
            self._refused.add(sent)
            self._send[key] = value
        said = redact(str(getattr(error, "message", error)))[:200]
        change = {"temperature": "sending none from now on (the model's default)",
                  "response_format": "asking for plain text from now on, read by the text parser",
                  "limit": f"sending the limit as {value} from now on"}[key]  # fmt: skip
        logger.warning("the endpoint %s refused %s for model %s (HTTP %s: %s): %s", self.where, sent, self.model,
                       getattr(error, "status_code", "?"), said, change)  # fmt: skip
        self.count(f"refused_{sent}")
        return True

    def _reply(self, response) -> tuple[str | None, str | None]:
        """(content, None), or (what came, why it is no reply): a refusal, a reply cut at the token limit."""
        try:
            choice = response.choices[0]
            content = choice.message.content or ""
        except (AttributeError, IndexError, TypeError):
            return None, redact(f"malformed response from the endpoint (no choices[0].message.content): "
                                f"{str(response)[:200]}")  # fmt: skip
        usage = getattr(response, "usage", None)
        for stat in ("prompt_tokens", "completion_tokens"):
            if isinstance(getattr(usage, stat, None), int):
                self.count(stat, getattr(usage, stat))
        refusal = getattr(choice.message, "refusal", None)
        if refusal and not content.strip():
            return str(refusal), "the model refused"
        if getattr(choice, "finish_reason", None) == "length" and unfinished_reply(content):
            return content, (
                f"the reply was cut at max_completion_tokens={self.max_completion_tokens} before it ended (a "
                "reasoning model spends tokens thinking first): raise neighbors.max_completion_tokens or lower "
                "neighbors.reasoning_effort"
            )
        return content, None

    def _request(self, query: TargetQuery, run: _Run) -> tuple[str | None, str | None]:
        """(reply text, None), or (what came back if anything, error message); transient failures are retried with
        exponential backoff, a refused optional parameter is dropped and the request sent again."""
        import openai

        error, attempt = None, 0
        while True:
            if run.stop.is_set():
                raise _Stopped
            if not run.take():
                return None, f"request budget exhausted (max_requests={self.max_requests})" + (
                    f"; last error: {error}" if error else ""
                )
            self.count("requests")
            body = self.request_body(query)
            try:
                response = self._get_client().chat.completions.create(**body)
            except openai.APIConnectionError as e:  # timeouts included
                last = e
                cause = e.__cause__
                if type(cause).__name__ == "LocalProtocolError" or "header value" in str(cause).lower():
                    raise self._fatal(e) from None
                error, answered = describe_error(e, self.where), False
            except openai.APIStatusError as e:
                last = e
                if e.status_code in (400, 422) and self._adapt(e, body):
                    run.answered(True)
                    continue  # the same request without the refused parameter; not a retry
                code = str(getattr(e, "code", "") or "") + str(getattr(e, "body", "") or "")
                if e.status_code in _FATAL_STATUS and "content_filter" not in code:
                    raise self._fatal(e) from None
                if e.status_code != 429 and e.status_code < 500:
                    return None, describe_error(e, self.where)
                error, answered = describe_error(e, self.where), e.status_code not in _GATEWAY_DOWN
            except Exception as e:  # a body that is not a chat completion at all
                run.answered(True)
                return None, redact(f"malformed response from the endpoint: {type(e).__name__}: {e}")[:300]
            else:
                run.answered(True)
                return self._reply(response)
            if run.answered(answered):
                raise NeighborSearchError(
                    f"the endpoint {self.where} did not answer {run.max_unanswered} requests in a row "
                    f"(last: {error}); check neighbors.base_url and that the server is up, then rerun: finished "
                    "classes are cached and not asked again"
                )
            if attempt == self.max_retries:
                return None, f"gave up after {self.max_retries + 1} attempts: {error}"
            delay = self.retry_backoff * 2**attempt * (1 + 0.1 * random.random())
            wait = retry_after(last)
            if wait is not None:
                delay = min(max(delay, wait), 60.0)
            attempt += 1
            self.count("retries")
            logger.warning("%s: %s; retry %d/%d in %.2fs", query.name, error, attempt, self.max_retries, delay)
            if run.stop.wait(delay):
                raise _Stopped

    def _one(self, query: TargetQuery, cache: RequestCache | None, run: _Run) -> Proposal:
        reply, cached = self.cached_reply(query, cache), True
        if reply is not None:
            self.count("cache_hits")
        else:
            if not clean_name(query.query):
                return Proposal.failed(f"class name {query.name!r} is empty after removing odd characters")
            reply, error = self._request(query, run)
            if error is not None:
                return Proposal.failed(error, redact(reply)[:200] if reply else None)
            reply, cached = redact(reply), False
        parsed = read_reply(reply)
        if not parsed.names:
            return Proposal(status="failed", error=failure_reason(reply, parsed), raw_reply=reply[:200],
                            rejected=parsed.rejected)  # fmt: skip
        if not cached and cache is not None:
            cache.put(self.cache_key(query), {
                "backend": self.name, "model": self.model, "template_hash": self.template_hash, "query": query.query,
                "k": query.num_requested, "messages": self.messages(query), "reply": reply,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })  # fmt: skip
        return Proposal([Candidate(n) for n in parsed.names], raw_reply=reply, cached=cached, rejected=parsed.rejected)

    def propose(self, queries, vocabulary=None, cache=None):
        """One proposal per query; raises ``ConfigError`` (a setting to fix), ``NeighborSearchError`` (endpoint
        down) or ``KeyboardInterrupt`` for the whole run, after which no further request is sent."""
        if any(self.cached_reply(q, cache) is None for q in queries):
            self._get_client()  # the key is checked before the first request, not once per class
        run = _Run(self.max_requests, self.max_consecutive_failures)
        results: list[Proposal | None] = [None] * len(queries)
        todo = list(range(len(queries)))[::-1]
        progress = threading.Event()

        def work():
            while not run.stop.is_set():
                with run.lock:
                    if not todo:
                        return
                    i = todo.pop()
                try:
                    results[i] = self._one(queries[i], cache, run)
                except _Stopped:
                    return
                except (ConfigError, NeighborSearchError) as e:
                    run.fail(e)
                    return
                except Exception as e:  # a bug must not hang the run
                    run.fail(NeighborSearchError(redact(f"{type(e).__name__}: {e}")))
                    return
                progress.set()

        # daemon threads: after Ctrl-C the process exits at once instead of waiting for requests in flight
        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(self.concurrency, len(queries)))]
        for t in threads:
            t.start()
        bar = tqdm(total=len(queries), desc="neighbors (openai)", unit="class")
        try:
            while True:
                alive = any(t.is_alive() for t in threads)
                if progress.wait(0.1) or not alive:
                    progress.clear()
                    bar.update(sum(r is not None for r in results) - bar.n)
                if not alive or run.stop.is_set():
                    break
        except KeyboardInterrupt:
            run.stop.set()
            done = sum(r is not None for r in results)
            logger.warning(
                "interrupted: %d of %d classes done (usable replies are cached); rerun to resume", done, len(queries)
            )
            raise
        finally:
            bar.close()
        if run.error is not None:
            deadline = time.monotonic() + 1.0  # let replies in flight reach the cache
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            raise run.error
        return [r if r is not None else Proposal.failed("not asked: the run stopped") for r in results]
