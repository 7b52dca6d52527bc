"""Neighbor search with a chat LLM behind any OpenAI-compatible endpoint, with a request cache.

Every request and its reply are appended to a JSONL cache keyed by (backend, model, template hash, class query,
count), so a rerun sends no request and an interrupted run resumes. A reply counts only when it reads as a list of
names (:func:`read_reply`); anything else (a refusal, an error string, ``null``, prose) is a failed class, never
cached, asked again on the next run.

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
import re
import threading
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from neighbor_lt.configs import ConfigError
from neighbor_lt.neighbors.base import Candidate, NeighborBackend, NeighborSearchError, Proposal, TargetQuery
from neighbor_lt.neighbors.names import NameIndex, clean_name, name_problem
from neighbor_lt.secrets import redact, register_secret

logger = logging.getLogger(__name__)

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

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry\b|i can(?:no|')t|i am unable|i'?m unable|i'?m not able|as an ai|i won'?t|"
    r"unfortunately|i apologi[sz]e)",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])\s+")
_DESCRIPTION = re.compile(r"\s+[-\u2013\u2014]\s+|:\s")  # "koi - a carp", "koi: a carp"
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
class ParsedReply:
    """What :func:`read_reply` made of a reply.

    Args:
        names: the names, in order, duplicates removed (any spelling).
        rejected: ``(item, reason)`` for list items that are not names (a sentence, ``null``, another script).
        form: ``json``, ``brackets``, ``bullets``, ``lines`` or ``inline``; None when the reply is not a list.
    """

    names: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    form: str | None = None


def _json_items(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if lists else None
    if isinstance(value, list):
        return [v.get("name") if isinstance(v, dict) else v for v in value]
    return None


def _split(text: str) -> list[str]:
    return [p for p in (clean_name(p) for p in re.split(r"[,;]", text)) if p]


def _plain_items(lines: list[str]) -> tuple[list[str], str | None]:
    """Items of a reply with no JSON, brackets or bullets: a comma list (maybe after ``...:``) or one name a line.
    Prose is not a list: every item of a one-line list must look like a name."""
    content = [line for line in lines if not line.rstrip().endswith(":")]
    for line in content:  # "Here are three: koi, carp, tench."
        _, colon, tail = line.rpartition(": ")
        parts = _split(tail)
        if colon and len(parts) >= 2 and all(name_problem(p) is None for p in parts):
            return parts, "inline"
    if len(content) == 1:
        parts = _split(content[0])
        return (parts, "inline") if parts and all(name_problem(p) is None for p in parts) else ([], None)
    named = [line for line in content if name_problem(_DESCRIPTION.split(line, maxsplit=1)[0]) is None]
    return (named, "lines") if named else ([], None)


def read_reply(text: str | None) -> ParsedReply:
    """Read a reply as a list of names, or find that it is not one.

    A list is a JSON array (or an object holding one), a bracketed list (``[a, b, c]``, also inside prose),
    numbered or bulleted lines, one name a line, or a comma-separated line (alone or after ``...:``). Code fences,
    markdown emphasis and trailing descriptions (``koi: a colourful carp``, ``koi - ...``) are removed; an item that
    does not look like a name (``neighbor_lt.neighbors.names.name_problem``) is rejected. Free text, refusals,
    ``null`` and error strings give no names.

    Example:
        >>> read_reply("Sure! Here you go:\\n1. **Koi**\\n2. crucian carp - a fish\\n3. koi\\n4. null").names
        ['Koi', 'crucian carp']
        >>> read_reply("Unfortunately, I cannot help with that request.").names
        []
    """
    if not text or not text.strip():
        return ParsedReply()
    body = re.sub(r"```[a-zA-Z]*", "\n", text).strip()
    items, form = _json_items(body), "json"
    if items is None:
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        bulleted = [line for line in lines if _BULLET.match(line)]
        brackets = re.search(r"\[([^\[\]]+)\]", body, re.DOTALL)
        if brackets and (_json_items(brackets.group(0)) is not None or not bulleted):
            items, form = _json_items(brackets.group(0)) or re.split(r"[,;\n]", brackets.group(1)), "brackets"
        elif bulleted:
            items, form = [_BULLET.sub("", line) for line in bulleted], "bullets"
        else:
            items, form = _plain_items(lines)
    parsed, seen = ParsedReply(form=form), NameIndex()
    for item in items:
        if item is None or isinstance(item, (list, dict)):
            continue
        item = _DESCRIPTION.split(str(item), maxsplit=1)[0]
        name = clean_name(item.replace("**", ""))
        if not name:
            continue
        problem = name_problem(name)
        if problem:
            parsed.rejected.append((name[:80], problem))
        elif name not in seen:
            seen.add(name, name)
            parsed.names.append(name)
    if not parsed.names:
        parsed.form = None
    return parsed


def parse_reply(text: str | None) -> list[str]:
    """The names of a reply (:func:`read_reply`); empty when the reply is not a list of names.

    Example:
        >>> parse_reply("[Koi, crucian carp, koi, , Prussian carp]")
        ['Koi', 'crucian carp', 'Prussian carp']
    """
    return read_reply(text).names


def _failure(reply: str, parsed: ParsedReply) -> str:
    """Why a reply gave no names, in a few words."""
    if not reply.strip():
        return "empty reply"
    if parsed.rejected and all(reason == "not in Latin script" for _, reason in parsed.rejected):
        return "reply is not in Latin script (another language?)"
    if _REFUSAL.match(reply):
        return "the model refused"
    return "reply is not a list of names"


class RequestCache:
    """Append-only JSONL store of LLM requests and replies, safe to share between threads.

    Example:
        >>> cache = RequestCache(None)  # in memory
        >>> cache.put("k", {"reply": "[a, b]"}); cache.get("k")["reply"]
        '[a, b]'
    """

    def __init__(self, path: str | None):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._torn = False
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            self._torn = bool(text) and not text.endswith("\n")  # a run killed mid-write: start on a new line
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by an interrupted run
                    continue
                self.records[record["key"]] = record

    @staticmethod
    def key(**parts) -> str:
        """A stable key from the request's identifying parts."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """The stored record for ``key``, or None."""
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        """Store a record and append it to the file at once (an interrupted run keeps what it got)."""
        record = {"key": key, **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.records[key] = record
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(("\n" if self._torn else "") + line)
                self._torn = False


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
        >>> backend = OpenAIBackend(model="gpt-4o", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
        >>> backend.propose([TargetQuery(0, "n01443537", "goldfish")])[0].candidates  # doctest: +SKIP

    Args:
        model: model name sent to the endpoint (required).
        base_url: endpoint root (``.../v1``); None for api.openai.com. Credentials in it are never logged.
        api_key_env: environment variable holding the API key.
        template: prompt with ``{name}`` and ``{k}``; the paper's prompt by default.
        system_prompt: optional system message.
        temperature: sampling temperature (0 for replies that repeat).
        max_tokens: reply length limit.
        timeout: seconds per request.
        max_retries: retries of one request on 429, 5xx, timeouts and connection errors.
        retry_backoff: first retry delay in seconds, doubled each retry (a Retry-After header wins, up to 60 s).
        concurrency: requests in flight at once.
        max_requests: request budget of one run (retries included); None for no limit.
        max_consecutive_failures: requests in a row with no answer from the endpoint (refused, reset, timed out,
            502 / 503 / 504) that stop the run; finished classes stay cached.
    """

    name = "openai"
    can_top_up = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        template: str | None = None,
        system_prompt: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
        timeout: float = 60.0,
        max_retries: int = 4,
        retry_backoff: float = 1.0,
        concurrency: int = 4,
        max_requests: int | None = None,
        max_consecutive_failures: int = 4,
    ):
        super().__init__()
        if not model:
            raise ConfigError("neighbors.model is required for backend openai (the model name the endpoint serves)")
        self.model = model
        self.base_url = base_url
        self.where = redact(base_url or "api.openai.com")
        self.api_key_env = api_key_env
        self.template = template or PAPER_TEMPLATE
        self.system_prompt = system_prompt
        self.template_hash = template_hash(self.template, system_prompt)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.concurrency = max(1, concurrency)
        self.max_requests = max_requests
        self.max_consecutive_failures = max(1, max_consecutive_failures)
        self._client = None

    def settings(self):
        return {
            "base_url": redact(self.base_url) if self.base_url else None,
            "api_key_env": self.api_key_env,
            "template": self.template,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
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

    def estimate(self, queries: list[TargetQuery], cache: RequestCache | None = None) -> dict:
        """What a run would cost: requests not answered by the cache and a rough token count (4 chars a token)."""
        todo = [q for q in queries if self.cached_reply(q, cache) is None]
        prompt_tokens = sum(len(json.dumps(self.messages(q))) // 4 for q in todo)
        completion_tokens = sum(min(self.max_tokens, 8 * q.num_requested + 8) for q in todo)
        return {
            "requests": len(todo),
            "cached": len(queries) - len(todo),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "max_completion_tokens": self.max_tokens * len(todo),
        }

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
        elif status is not None:
            text = f"the endpoint {self.where} rejected the request (HTTP {status}): check neighbors.model, " \
                   f"max_tokens, temperature and system_prompt; the endpoint said: {message}"  # fmt: skip
        else:
            text = f"the API key in {key} is not a valid HTTP header value; store the bare key there"
        return ConfigError(redact(text))

    def _request(self, query: TargetQuery, run: _Run) -> tuple[str | None, str | None]:
        """(reply text, None) or (None, error message), retrying transient failures with exponential backoff."""
        import openai

        error = None
        for attempt in range(self.max_retries + 1):
            if run.stop.is_set():
                raise _Stopped
            if not run.take():
                return None, f"request budget exhausted (max_requests={self.max_requests})" + (
                    f"; last error: {error}" if error else ""
                )
            self.count("requests")
            try:
                response = self._get_client().chat.completions.create(
                    model=self.model, messages=self.messages(query), temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )  # fmt: skip
            except openai.APIConnectionError as e:  # timeouts included
                last = e
                cause = e.__cause__
                if type(cause).__name__ == "LocalProtocolError" or "header value" in str(cause).lower():
                    raise self._fatal(e) from None
                error, answered = _describe(e, self.where), False
            except openai.APIStatusError as e:
                last = e
                code = str(getattr(e, "code", "") or "") + str(getattr(e, "body", "") or "")
                if e.status_code in _FATAL_STATUS and "content_filter" not in code:
                    raise self._fatal(e) from None
                if e.status_code != 429 and e.status_code < 500:
                    return None, _describe(e, self.where)
                error, answered = _describe(e, self.where), e.status_code not in _GATEWAY_DOWN
            except Exception as e:  # a body that is not a chat completion at all
                run.answered(True)
                return None, redact(f"malformed response from the endpoint: {type(e).__name__}: {e}")[:300]
            else:
                run.answered(True)
                try:
                    return response.choices[0].message.content or "", None
                except (AttributeError, IndexError, TypeError):
                    text = str(response)[:200]
                    return None, redact(
                        f"malformed response from the endpoint (no choices[0].message.content): {text}"
                    )
            if run.answered(answered):
                raise NeighborSearchError(
                    f"the endpoint {self.where} did not answer {run.max_unanswered} requests in a row "
                    f"(last: {error}); check neighbors.base_url and that the server is up, then rerun: finished "
                    "classes are cached and not asked again"
                )
            if attempt == self.max_retries:
                break
            delay = self.retry_backoff * 2**attempt * (1 + 0.1 * random.random())
            retry_after = _retry_after(last)
            if retry_after is not None:
                delay = min(max(delay, retry_after), 60.0)
            self.count("retries")
            logger.warning("%s: %s; retry %d/%d in %.2fs", query.name, error, attempt + 1, self.max_retries, delay)
            if run.stop.wait(delay):
                raise _Stopped
        return None, f"gave up after {self.max_retries + 1} attempts: {error}"

    def _one(self, query: TargetQuery, cache: RequestCache | None, run: _Run) -> Proposal:
        reply, cached = self.cached_reply(query, cache), True
        if reply is not None:
            self.count("cache_hits")
        else:
            if not clean_name(query.query):
                return Proposal.failed(f"class name {query.name!r} is empty after removing odd characters")
            reply, error = self._request(query, run)
            if error is not None:
                return Proposal.failed(error)
            reply, cached = redact(reply), False
        parsed = read_reply(reply)
        if not parsed.names:
            return Proposal(status="failed", error=_failure(reply, parsed), raw_reply=reply[:200],
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


def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(error, where: str) -> str:
    import openai

    if isinstance(error, openai.APITimeoutError):
        return f"request to {where} timed out"
    if isinstance(error, openai.APIConnectionError):
        return redact(f"cannot reach the endpoint {where}: {error.__cause__ or error}")[:300]
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", str(error))
    return redact(f"HTTP {status} from {where}: {str(message)[:200]}")
