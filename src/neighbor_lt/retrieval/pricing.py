"""What a run of searches takes before anything is sent: requests per query and the provider's list price.

Example:
    >>> estimate = estimate_search_cost("brave", queries=5000, results_per_query=800)
    >>> estimate["requests"], estimate["cost"], estimate["candidates_per_query"]
    (5000, 25.0, 200)
"""

from __future__ import annotations

from .search import search_backend_class


def estimate_search_cost(name: str, queries: int, results_per_query: int, options: dict | None = None) -> dict:
    """What searching ``queries`` classes for ``results_per_query`` candidates each takes, with nothing sent: requests
    and the provider's list price (``price_per_1000`` in ``options`` replaces it with your plan's).

    Example:
        >>> estimate_search_cost("serpapi", queries=5000, results_per_query=800)["requests"]
        40000

    Args:
        name: a search backend name.
        queries: classes to search (those already in the search cache excluded).
        results_per_query: candidates wanted per class (``retrieve.images_per_class``).
        options: the backend's options (``max_pages``, ``price_per_1000``).
    """
    options = options or {}
    cls = search_backend_class(name)
    per_query = cls.requests_per_query(results_per_query, options)
    reachable = results_per_query
    if cls.pages:
        reachable = min(results_per_query, cls.max_results or results_per_query, per_query * cls.page_size)
    price = cls.price
    per_1000 = options.get("price_per_1000") or (price.per_1000 if price else 0.0)
    requests = queries * per_query
    return {
        "backend": name,
        "queries": queries,
        "requests_per_query": per_query,
        "requests": requests,
        "candidates_per_query": reachable,
        "candidates": queries * reachable,
        "price_per_1000": per_1000,
        "currency": price.currency if price else "",
        "cost": round(requests * per_1000 / 1000, 2),
        "plan": price.plan if price else "",
        "price_source": price.source if price else "",
        "price_read": price.read if price else "",
        "limits": price.limits if price else "",
    }


def describe_estimate(estimate: dict) -> str:
    """One line for an :func:`estimate_search_cost` answer (what is sent, what it costs, where the price is from)."""
    searched = f"{estimate['queries']} class(es) to search"
    if "cached" in estimate:
        searched += f" ({estimate['cached']} in the search cache)"
    fetched = f"up to {estimate['candidates']} image download(s) ({estimate['candidates_per_query']} per class)"
    if not estimate["requests"]:
        return f"{searched}, no request to a priced API; then {fetched}"
    return (
        f"{searched} x {estimate['requests_per_query']} request(s) = {estimate['requests']} request(s), about "
        f"{estimate['currency']} {estimate['cost']:,.2f} at the list price of {estimate['currency']} "
        f"{estimate['price_per_1000']:.2f} per 1,000 ({estimate['plan']}; read {estimate['price_read']} from "
        f"{estimate['price_source']}); then {fetched}"
    )
