"""One redaction rule for every secret: API keys, tokens, credentials in URLs and key query parameters.

Secrets must never leave memory: not in logs, error messages, manifests, saved configs, caches or cards. Every
place that formats an error or writes a record passes the text through :func:`redact`; :func:`install_log_redaction`
puts the same rule on the logging handlers and keeps HTTP clients' request logging (which prints full URLs, query
keys included) at DEBUG.

Example:
    >>> register_secret("sk-abc123")
    >>> redact("Illegal header value b'Bearer sk-abc123\\n' for http://user:pw@host/v1?key=K&q=cat")
    "Illegal header value b'Bearer <redacted>\\n' for http://<redacted>@host/v1?key=<redacted>&q=cat"
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Callable

REDACTED = "<redacted>"

# Names whose values are secrets (config keys, environment variables, query parameters, header names).
SECRET_NAME = re.compile(
    r"(api[_-]?key|apikey|token|secret|password|passwd|credential|auth|subscription[_-]?key|^key$|^sig$|signature)",
    re.IGNORECASE,
)
# key=... / token=... / api_key: ... inside free text (query strings, header dumps, reprs)
_QUERY_SECRET = re.compile(
    r"(?P<name>\b(?:key|api[_-]?key|apikey|access[_-]?token|token|auth|sig|signature|secret|password|"
    r"subscription[_-]?key|client[_-]?secret)\b)(?P<sep>\s*[=:]\s*['\"]?)(?P<value>[^&\s'\",;)}\]]+)",
    re.IGNORECASE,
)
# scheme://user:password@host and scheme://token@host
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+)@")
# Authorization: Bearer xxx / "Bearer xxx"
# ("Token" only capitalised, as the scheme is written: "the provided subscription token is invalid" is an API's message)
_BEARER = re.compile(r"(?P<prefix>\b(?:(?i:Bearer|Basic)|Token)\s+)(?P<value>[^\s'\"\\]+)")
# Environment variables whose values are treated as secrets when they are at least this long.
_MIN_SECRET_LEN = 4

_lock = threading.Lock()
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value (an API key read from config or environment) so :func:`redact` removes it anywhere.

    Values are stripped (a key read with a trailing newline is the same key); values shorter than 4 characters
    are not registered on their own (they would redact ordinary words) but the patterns still catch them in
    ``key=`` / ``Bearer`` positions.
    """
    if not value:
        return
    with _lock:
        for v in {value, value.strip()}:
            if len(v) >= _MIN_SECRET_LEN:
                _registered.add(v)


_MIN_ENV_SECRET_LEN = 8  # an env value shorter than this ("true", "1", "none") is a setting, not a credential


def registered_secrets() -> list[str]:
    """The values given to :func:`register_secret` so far (handed to worker processes, which redact them too)."""
    with _lock:
        return sorted(_registered)


def secret_env_values() -> list[str]:
    """Values of environment variables whose names look secret (``*_API_KEY``, ``*TOKEN*``, ``*SECRET*`` ...).

    Values shorter than 8 characters or without a digit or symbol are left out (``SOME_AUTH=true`` is a switch); a key
    read by a backend is registered with :func:`register_secret` whatever its length."""
    return [
        v
        for k, v in os.environ.items()
        if is_secret_name(k) and v and len(v.strip()) >= _MIN_ENV_SECRET_LEN and not v.strip().isalpha()
    ]


@functools.lru_cache(maxsize=4096)  # pure; the environment's names are checked on every redact()
def is_secret_name(name: str) -> bool:
    """Whether a config key / header / parameter name holds a secret value (``api_key``, ``hub_token`` ...).

    ``api_key_env`` (the *name* of an environment variable) is not a secret, nor is a name where the secret word is
    only the start of a longer word (``average_tokens_across_devices``, ``include_num_input_tokens_seen``,
    ``author``): those hold flags and counts, and redacting them breaks a rerun from the saved config.
    """
    lowered = name.lower()
    if lowered.endswith("_env"):
        return False
    return any(not lowered[m.end() : m.end() + 1].isalpha() for m in SECRET_NAME.finditer(lowered))


def _known_secrets() -> list[str]:
    with _lock:
        return sorted(_registered | set(secret_env_values()), key=len, reverse=True)


def redact(text) -> str:
    """``text`` with every registered secret, secret-looking environment value, URL credential, ``key=`` value and
    bearer token replaced by ``<redacted>``."""
    return _redact_with(_known_secrets(), text)


def redactor() -> Callable[[object], str]:
    """:func:`redact` bound to the secrets known now (registered and in the environment), for a hot loop: reading
    the environment on every call costs ~0.5 ms, a few times per downloaded image. Make a new one when secrets may
    have been added (the downloader makes one per run)."""
    return functools.partial(_redact_with, _known_secrets())


def _redact_with(values: list[str], text) -> str:
    text = str(text)
    for v in values:
        if v in text:
            text = text.replace(v, REDACTED)
        stripped = v.strip()
        if stripped and stripped in text:
            text = text.replace(stripped, REDACTED)
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    text = _BEARER.sub(lambda m: m.group("prefix") + REDACTED, text)
    text = _QUERY_SECRET.sub(
        lambda m: m.group(0) if m.group("value") == REDACTED else m.group("name") + m.group("sep") + REDACTED, text
    )
    return text


def redact_url(url: str) -> str:
    """A URL without its user-info and secret query parameters (for manifests, logs and errors)."""
    return redact(url)


def redact_mapping(values: dict) -> dict:
    """A copy of a (nested) config mapping with secret-named keys' values redacted and every string redacted."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = redact_mapping(value)
        elif value not in (None, "") and is_secret_name(str(key)):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = redact(value)
        elif isinstance(value, list):
            out[key] = [redact(v) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that formats the record's message, redacts it and freezes it (args cleared)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_QUIET_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "urllib3", "aiohttp.access")


def install_log_redaction() -> None:
    """Put :class:`RedactingFilter` on every handler of the root logger (idempotent) and move HTTP clients' request
    logging to WARNING (it prints full request URLs, API keys in query strings included, and breaks progress bars).
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
