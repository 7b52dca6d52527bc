"""What today's Chat Completions endpoints take and answer: OpenAI's reasoning models and their parameters, list
prices, the Structured Outputs format of a neighbor list, and how to read an endpoint's refusal of a parameter.

OpenAI's o-series and GPT-5 family are reasoning models: they refuse ``max_tokens`` (the limit is
``max_completion_tokens``, reasoning tokens included) and any ``temperature`` but the default. Other
OpenAI-compatible servers (vLLM, Ollama, llama.cpp, ...) differ in what they take; their HTTP 400 / 422 names the
parameter, in OpenAI's ``error.param`` or only in words.
"""

from __future__ import annotations

import json
import re

from neighbor_lt.secrets import redact

#: The reply as Structured Outputs (strict JSON schema): an object holding the list of names.
NEIGHBOR_LIST_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "neighbor_categories",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "categories": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Names of visually similar categories, most similar first.",
                }
            },
            "required": ["categories"],
            "additionalProperties": False,
        },
    },
}

#: OpenAI's standard list prices, USD per 1M (input, output) tokens, as published on openai.com/api/pricing in 2026
#: (dated snapshots such as gpt-5.5-2026-04-23 take their model's price). Prices change: a run is priced with
#: neighbors.price_per_million when set.
OPENAI_PRICES = {
    "gpt-5.5": (5.00, 30.00),
    "gpt-5.4": (2.50, 15.00),
    "gpt-5.4-mini": (0.75, 4.50),
    "gpt-5.4-nano": (0.20, 1.25),
}

# Request parameters an endpoint may refuse (HTTP 400 / 422) while the reply is usable without them.
_OPTIONAL_PARAMETERS = ("response_format", "json_schema", "max_completion_tokens", "max_tokens", "temperature")


def _model_id(model: str) -> str:
    return str(model).rsplit("/", 1)[-1].lower()  # "openai/gpt-5.5" on a router is gpt-5.5


def is_reasoning_model(model: str) -> bool:
    """Whether the model name is one of OpenAI's reasoning models: the o-series and the GPT-5 family, but not its
    chat models.

    Example:
        >>> [is_reasoning_model(m) for m in ("o3", "o4-mini", "gpt-5.5", "gpt-5-chat-latest", "gpt-4.1", "llama3")]
        [True, True, True, False, False, False]
    """
    m = _model_id(model)
    return bool(re.match(r"o\d+(?:-|$)", m)) or (m.startswith("gpt-5") and "chat" not in m)


def takes_temperature(model: str, reasoning_effort: str | None = None) -> bool:
    """Whether a request to ``model`` may carry ``temperature``: reasoning models take only the default, except a
    GPT-5 model told not to reason (``reasoning_effort: none``). An endpoint's HTTP 400 overrules this guess.

    Example:
        >>> takes_temperature("gpt-4.1"), takes_temperature("o3"), takes_temperature("gpt-5.5", "none")
        (True, False, True)
    """
    if not is_reasoning_model(model):
        return True
    return _model_id(model).startswith("gpt-5") and reasoning_effort == "none"


def list_price(model: str) -> tuple[float, float] | None:
    """OpenAI's list price of ``model`` (USD per 1M input, output tokens) from :data:`OPENAI_PRICES`, or None."""
    return OPENAI_PRICES.get(re.sub(r"-\d{4}-\d{2}-\d{2}$", "", _model_id(model)))


def rejected_parameter(error) -> str | None:
    """The optional request parameter an HTTP 400 / 422 is about: OpenAI's ``error.param``, else the first one its
    message names (vLLM, llama.cpp and others only say it in words), or None.

    Example:
        >>> from types import SimpleNamespace
        >>> rejected_parameter(SimpleNamespace(param=None, message="Unsupported parameter: 'max_tokens' is not "
        ...                    "supported with this model. Use 'max_completion_tokens' instead."))
        'max_tokens'
    """
    param = getattr(error, "param", None)
    if isinstance(param, str) and re.split(r"[.\[]", param)[0] in _OPTIONAL_PARAMETERS:
        return re.split(r"[.\[]", param)[0]
    text = f"{getattr(error, 'message', '') or ''} {json.dumps(getattr(error, 'body', None), default=str)}"
    found = [(m.start(), name) for name in _OPTIONAL_PARAMETERS
             for m in [re.search(rf"(?<![A-Za-z_]){name}(?![A-Za-z_])", text)] if m]  # fmt: skip
    return min(found)[1] if found else None


def retry_after(error) -> float | None:
    """The seconds a Retry-After header asks to wait, or None."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def describe_error(error, where: str) -> str:
    """One redacted line for a failed request."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return f"request to {where} timed out"
    if isinstance(error, openai.APIConnectionError):
        return redact(f"cannot reach the endpoint {where}: {error.__cause__ or error}")[:300]
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", str(error))
    return redact(f"HTTP {status} from {where}: {str(message)[:200]}")


def unfinished_reply(content: str) -> bool:
    """A reply with no text, or JSON that does not close (a structured reply cut at the token limit)."""
    text = content.strip()
    if not text:
        return True
    if text[0] not in "{[":
        return False
    try:
        json.loads(text)
    except ValueError:
        return True
    return False
