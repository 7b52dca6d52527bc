"""Neighbor search with a chat LLM behind any OpenAI-compatible endpoint, with a request cache.

Every request and its reply are appended to a JSONL cache keyed by (backend, model, template hash, class query,
count), so a rerun sends no request and an interrupted run resumes. Only replies that parse into at least one
name are cached: a failed class is asked again on the next run. The API key is read from the environment at call
time and is never logged, cached or written to the manifest.
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
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from neighbor_lt.neighbors.base import Candidate, NeighborBackend, Proposal, TargetQuery
from neighbor_lt.neighbors.guard import clean_name, normalize

logger = logging.getLogger(__name__)

# The structured in-context prompt of the paper (appendix B.2); {k} and {name} are filled in per class.
PAPER_TEMPLATE = (
    "Now I will give you one category name. Please create a list which contains {k} visually similar categories "
    "of the provided category. For example: If I give you a category name: Acacia cochliacantha. You should return: "
    "[Acacia cambagei, Acacia farnesiana, Acacia karroo, Acacia nilotica, Acacia tortilis]. "
    "Now, I give you this category name: {name}. You should return:"
)

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i am unable|i'?m unable|as an ai|i won'?t)", re.IGNORECASE
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])\s+")
_MAX_WORDS = 8


def template_hash(template: str, system_prompt: str | None = None) -> str:
    """A short, stable hash of the prompt template (and system prompt), recorded with every reply."""
    return hashlib.sha256(json.dumps([template, system_prompt]).encode()).hexdigest()[:16]


def render(template: str, name: str, k: int) -> str:
    """Fill a template; plain replacement, so braces inside a class name cannot break it."""
    return template.replace("{k}", str(k)).replace("{name}", name)


def _latin(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) >= 0.6 * len(letters)


def _items_from_json(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if lists else None
    if isinstance(value, list):
        return [v if isinstance(v, str) else (v.get("name") if isinstance(v, dict) else str(v)) for v in value]
    return None


def parse_reply(text: str | None) -> list[str]:
    """Category names from a free-form reply, in order, duplicates and empty entries removed.

    Understands a JSON list (or an object holding one), a bracketed list (``[a, b, c]``), numbered or bulleted
    lines, one comma-separated line, code fences and markdown emphasis; prose lines around a list are ignored and a
    trailing description (``koi: a colourful carp``, ``koi - ...``) is cut off.

    Example:
        >>> parse_reply("Sure! Here you go:\\n1. **Koi**\\n2. crucian carp - a fish\\n3. koi\\n")
        ['Koi', 'crucian carp']
    """
    if not text:
        return []
    text = re.sub(r"```[a-zA-Z]*", "\n", text).strip()
    items = _items_from_json(text)
    if items is None:
        brackets = re.search(r"\[([^\[\]]+)\]", text, re.DOTALL)
        lines = [line for line in text.splitlines() if line.strip()]
        bulleted = [line for line in lines if _BULLET.match(line)]
        if brackets and (_items_from_json(brackets.group(0)) is not None or not bulleted):
            items = _items_from_json(brackets.group(0)) or re.split(r"[,;\n]", brackets.group(1))
        elif bulleted:
            items = [_BULLET.sub("", line) for line in bulleted]
        else:
            content = [line for line in lines if not line.rstrip().endswith(":")]
            if len(content) == 1:
                items = re.split(r"[,;]", content[0])
            else:
                items = content
    names, seen = [], set()
    for item in items:
        if not isinstance(item, str):
            continue
        item = re.split(r"\s+[-\u2013\u2014]\s+|:\s", item, maxsplit=1)[0]
        name = clean_name(item.replace("**", ""))
        key = normalize(name)
        if not key or key in seen or len(name.split()) > _MAX_WORDS:
            continue
        seen.add(key)
        names.append(name)
    return names


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
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
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
        with self._lock:
            self.records[key] = record
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")


class _Budget:
    def __init__(self, limit: int | None):
        self.limit, self.used, self._lock = limit, 0, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True


class OpenAIBackend(NeighborBackend):
    """Ask a chat model behind an OpenAI-compatible endpoint, one request per target class.

    Example:
        >>> backend = OpenAIBackend(model="gpt-4o", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
        >>> backend.propose([TargetQuery(0, "n01443537", "goldfish")])[0].candidates  # doctest: +SKIP

    Args:
        model: model name sent to the endpoint.
        base_url: endpoint root (``.../v1``); None for api.openai.com.
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
    """

    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o",
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
    ):
        super().__init__()
        self.model = model
        self.base_url = base_url
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
        self._client = None

    def settings(self):
        return {
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "template": self.template,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def messages(self, query: TargetQuery) -> list[dict]:
        """The chat messages of one request."""
        prompt = render(self.template, clean_name(query.query), query.num_requested)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": prompt}]

    def cache_key(self, query: TargetQuery) -> str:
        """Cache key: backend, model, template hash, class query and requested count."""
        return RequestCache.key(
            backend=self.name, model=self.model, template_hash=self.template_hash, query=query.query,
            k=query.num_requested, temperature=self.temperature,
        )  # fmt: skip

    def estimate(self, queries: list[TargetQuery], cache: RequestCache | None = None) -> dict:
        """What a run would cost: requests not answered by the cache and a rough token count (4 chars a token)."""
        todo = [q for q in queries if not (cache and cache.get(self.cache_key(q)))]
        prompt_tokens = sum(len(json.dumps(self.messages(q))) // 4 for q in todo)
        completion_tokens = sum(min(self.max_tokens, 8 * q.num_requested + 8) for q in todo)
        return {
            "requests": len(todo),
            "cached": len(queries) - len(todo),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "max_completion_tokens": self.max_tokens * len(todo),
        }

    def _get_client(self):
        if self._client is None:
            import openai

            # retries are ours (counted against the budget and logged), so the client makes a single attempt
            self._client = openai.OpenAI(
                api_key=os.environ[self.api_key_env], base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
        return self._client

    def _request(self, query: TargetQuery, budget: _Budget) -> tuple[str | None, str | None]:
        """(reply text, None) or (None, error message), retrying transient failures with exponential backoff."""
        import openai

        transient = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        error = None
        for attempt in range(self.max_retries + 1):
            if not budget.take():
                return None, f"request budget exhausted (max_requests={self.max_requests})" + (
                    f"; last error: {error}" if error else ""
                )
            self.count("requests")
            try:
                response = self._get_client().chat.completions.create(
                    model=self.model, messages=self.messages(query), temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )  # fmt: skip
            except transient as e:
                error = _describe(e, self.base_url)
                if attempt == self.max_retries:
                    break
                delay = self.retry_backoff * 2**attempt * (1 + 0.1 * random.random())
                retry_after = _retry_after(e)
                if retry_after is not None:
                    delay = min(max(delay, retry_after), 60.0)
                self.count("retries")
                logger.warning("%s: %s; retry %d/%d in %.2fs", query.name, error, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
                continue
            except openai.APIStatusError as e:
                return None, _describe(e, self.base_url)
            except Exception as e:  # a body that is not a chat completion at all
                return None, f"malformed response from the endpoint: {type(e).__name__}: {e}"
            try:
                content = response.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                return (
                    None,
                    f"malformed response from the endpoint (no choices[0].message.content): {str(response)[:200]}",
                )
            return content, None
        return None, f"gave up after {self.max_retries + 1} attempts: {error}"

    def _one(self, query: TargetQuery, cache: RequestCache | None, budget: _Budget) -> Proposal:
        key = self.cache_key(query)
        record = cache.get(key) if cache else None
        if record is not None:
            self.count("cache_hits")
            reply, cached = record["reply"], True
        else:
            if not clean_name(query.query):
                return Proposal.failed(f"class name {query.name!r} is empty after removing odd characters")
            reply, error = self._request(query, budget)
            if error is not None:
                return Proposal.failed(error)
            cached = False
        if not reply or not reply.strip():
            return Proposal.failed("empty reply", reply)
        if _REFUSAL.match(reply):
            return Proposal.failed(f"the model refused: {reply.strip()[:120]!r}", reply)
        names = parse_reply(reply)
        latin = [n for n in names if _latin(n)]
        if names and not latin:
            return Proposal.failed("reply is not in Latin script (another language?)", reply)
        if not latin:
            return Proposal.failed(f"malformed reply, no names found: {reply.strip()[:120]!r}", reply)
        if not cached and cache is not None:
            cache.put(key, {
                "backend": self.name, "model": self.model, "template_hash": self.template_hash, "query": query.query,
                "k": query.num_requested, "messages": self.messages(query), "reply": reply,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })  # fmt: skip
        return Proposal([Candidate(n) for n in latin], raw_reply=reply, cached=cached)

    def propose(self, queries, vocabulary=None, cache=None):
        budget = _Budget(self.max_requests)
        need_request = any(not (cache and cache.get(self.cache_key(q))) for q in queries)
        if need_request and not os.environ.get(self.api_key_env):
            missing = f"missing API key: set the {self.api_key_env} environment variable"
            logger.error(missing)
            results = []
            for q in queries:  # classes answered by the cache still succeed
                cached = cache.get(self.cache_key(q)) if cache else None
                results.append(self._one(q, cache, budget) if cached else Proposal.failed(missing))
            return results
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self._one, q, cache, budget) for q in queries]
            return [f.result() for f in tqdm(futures, desc="neighbors (openai)", unit="class")]


def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(error, base_url: str | None) -> str:
    import openai

    where = base_url or "api.openai.com"
    if isinstance(error, openai.APITimeoutError):
        return f"request to {where} timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach the endpoint {where}: {error.__cause__ or error}"
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", str(error))
    if status == 401:
        return f"HTTP 401 from {where}: the API key was rejected"
    return f"HTTP {status} from {where}: {str(message)[:200]}"
