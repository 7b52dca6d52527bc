"""The web image search APIs (Brave, SerpApi's Google Images, Google CSE until it closes) against loopback servers in
each provider's documented request and response format: paging to images_per_class, a bad key, an exhausted quota,
zero results, a body that is not JSON, the price of a run before anything is sent, and retired names refused before
any request. API keys are canaries: none may appear in a stream or a file."""

import json
import sys

import pytest
import yaml
from retrieval_fixtures.server import ImageServer, load_jpegs
from test_retrieval_search import LOOPBACK, leaks, run_curate, write_manifest

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval import search
from neighbor_lt.retrieval.pricing import describe_estimate, estimate_search_cost
from neighbor_lt.retrieval.search import SearchError, get_search_backend
from neighbor_lt.retrieval.searches import open_searches
from neighbor_lt.retrieval.stages import StageError, run_retrieve

MANY = [(f"/many/{i}.jpg", f"/page/{i}", f"Goldfish photo {i}") for i in range(250)]
RESULTS = {
    "goldfish": MANY,
    "axolotl": [(f"/img/{i}.jpg", f"/page/{i}", f"An axolotl {i}") for i in range(3)],
    "koi": [(f"/img/{i}.jpg", f"/page/k{i}", f"A koi {i}") for i in range(3, 6)],
}
ENDPOINTS = {"brave": "/res/v1/images/search", "serpapi": "/search.json", "google": "/customsearch/v1"}


@pytest.fixture
def server(tiny_imagenet_dir):
    server = ImageServer(load_jpegs(tiny_imagenet_dir, 10), search_results=RESULTS).start()
    yield server
    server.stop()


def backend(server, name, key="test-key", **kwargs):
    extra = {"cx": "test-cx"} if name == "google" else {}
    return get_search_backend(name, api_key=key, endpoint=server.url(ENDPOINTS[name]), **extra, **kwargs)


# ---- paging ------------------------------------------------------------------------------------------------------
def test_serpapi_pages_until_images_per_class(server):
    hits = backend(server, "serpapi").search("goldfish", max_results=230)
    assert [h.image_url for h in hits] == [server.url(f"/many/{i}.jpg") for i in range(230)]
    assert hits[150].page_url == server.url("/page/150") and hits[150].caption == "Goldfish photo 150"
    assert server.requests["/search.json"] == 3  # ijn 0, 1, 2: 100 images a page
    # a source that runs dry stops at its first empty page
    assert len(backend(server, "serpapi").search("goldfish", max_results=800)) == 250
    assert server.requests["/search.json"] == 3 + 4  # pages 0-2 (250 images), then the empty page 3
    assert estimate_search_cost("serpapi", 1, 230)["requests"] == 3


def test_brave_asks_one_page_of_at_most_200(server):
    hits = backend(server, "brave").search("goldfish", max_results=800)
    assert [h.image_url for h in hits] == [server.url(f"/many/{i}.jpg") for i in range(200)]
    assert hits[7].page_url == server.url("/page/7") and hits[7].caption == "Goldfish photo 7"
    assert server.requests["/res/v1/images/search"] == 1  # the image API has no offset: one request, count=200
    assert len(backend(server, "brave").search("goldfish", max_results=30)) == 30


def test_a_short_rate_limit_wait_is_honoured_once(server):
    server.api_mode = "burst"
    assert len(backend(server, "brave").search("axolotl")) == 3
    assert server.requests["/res/v1/images/search"] == 2  # the 429 with Retry-After: 0, then the answer


# ---- failures, in the provider's own words --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, mode, message",
    [
        ("brave", None, r"brave: HTTP 422: The provided subscription token is invalid\. \(422, SUBSCRIPTION_TOKEN_INVALID\)"),
        ("serpapi", None, r"serpapi: HTTP 401: Invalid API key\. Your API key should be here: https://serpapi\.com/manage"),
        ("brave", "quota", r"brave: HTTP 429: Request rate limit exceeded for plan\. \(429, RATE_LIMITED\)"),
        ("serpapi", "quota", r"serpapi: HTTP 429: Your account has run out of searches\.$"),
    ],
)  # fmt: skip
def test_bad_keys_and_exhausted_quotas_are_fatal(server, name, mode, message):
    server.api_mode = mode
    key = "test-key" if mode else "wrong-key-123"
    with pytest.raises(SearchError, match=message) as caught:
        backend(server, name, key=key).search("goldfish", max_results=300)
    assert caught.value.fatal and "wrong-key-123" not in str(caught.value)
    assert server.requests[ENDPOINTS[name]] == 1


@pytest.mark.parametrize("name", ["brave", "serpapi", "google"])
def test_zero_results_and_malformed_answers(server, name):
    assert backend(server, name).search("unicorn", max_results=300) == []
    assert server.requests[ENDPOINTS[name]] == 1
    server.api_mode = "malformed"
    with pytest.raises(SearchError, match=rf"{name}: HTTP 200 but the answer is not JSON \(application/json\)") as e:
        backend(server, name).search("goldfish")
    assert not e.value.fatal  # one bad answer: the other queries are still asked


def test_a_query_brave_refuses_is_not_fatal(server):
    with pytest.raises(
        SearchError, match=r"HTTP 422: Unable to validate request parameter\(s\) \(422, VALIDATION\)"
    ) as e:
        backend(server, "brave", extra_params={"count": 500}).search("goldfish")  # max 200
    assert not e.value.fatal  # a 422 under a valid key is this query's fault, not the key's


def test_a_fatal_error_stops_the_stage_at_the_first_query(server, tmp_path, caplog):
    write_manifest(tmp_path, [{"name": n, "neighbor_of": ["tench"]} for n in ("goldfish", "axolotl", "koi")])
    server.api_mode = "quota"
    section = {"backend": "serpapi", "backend_kwargs": {"api_key": "test-key", "endpoint": server.url("/search.json")},
               "download": LOOPBACK}  # fmt: skip
    with caplog.at_level("INFO"), pytest.raises(StageError, match="all 3 search.* failed \\(2 not sent\\)"):
        run_retrieve(section, CurateContext(str(tmp_path)))
    assert server.requests["/search.json"] == 1
    assert caplog.text.count("Your account has run out of searches.") == 1


def test_a_missing_httpx_is_one_line_naming_the_extra(server, tmp_path, monkeypatch):
    write_manifest(tmp_path, [{"name": n, "neighbor_of": ["tench"]} for n in ("goldfish", "axolotl", "koi")])
    monkeypatch.setitem(sys.modules, "httpx", None)  # what an install without the retrieval extra sees
    section = {"backend": "serpapi", "backend_kwargs": {"api_key": "test-key", "endpoint": server.url("/search.json")},
               "download": LOOPBACK}  # fmt: skip
    with pytest.raises(StageError) as e:
        run_retrieve(section, CurateContext(str(tmp_path)))
    assert str(e.value) == 'retrieve: httpx is not installed: pip install "neighbor-lt[retrieval]"'
    assert server.requests["/search.json"] == 0


# ---- images_per_class and the dry run ------------------------------------------------------------------------------
def test_images_per_class_sizes_the_searches_and_the_dry_run_prices_them_first(server, tmp_path):
    write_manifest(tmp_path, [{"name": n, "neighbor_of": ["tench"]} for n in ("goldfish", "axolotl", "koi")])
    context = CurateContext(str(tmp_path))
    section = {"backend": "serpapi", "backend_kwargs": {"api_key": "test-key", "endpoint": server.url("/search.json")},
               "images_per_class": 120, "dry_run": True, "search_only": True, "download": LOOPBACK}  # fmt: skip
    estimate = run_retrieve(section, context)
    assert server.requests["/search.json"] == 0  # nothing sent
    assert estimate["requests"] == 3 * 2 and estimate["requests_per_query"] == 2
    assert estimate["currency"] == "USD" and estimate["cost"] == pytest.approx(6 * 15.0 / 1000)
    assert estimate["price_source"] == "https://serpapi.com/pricing" and estimate["price_read"]
    assert json.loads((tmp_path / "retrieve" / "dry_run.json").read_text())["requests"] == 6

    assert run_retrieve({**section, "dry_run": False}, context) == {"candidates": 120 + 3 + 3}
    with open_searches(str(tmp_path / "retrieve")) as cache:
        searches = {r["aux_name"]: r for r in cache.iter()}
    assert len(searches["goldfish"]["candidates"]) == 120
    asked = server.requests["/search.json"]
    again = run_retrieve({**section, "images_per_class": 800}, context)  # cached classes are not priced again
    assert again["requests"] == 0 and again["cached"] == 3 and server.requests["/search.json"] == asked


def test_the_dry_run_prices_each_provider():
    brave = estimate_search_cost("brave", 5000, 800)
    assert (brave["requests"], brave["candidates_per_query"], brave["cost"]) == (5000, 200, 25.0)
    google = estimate_search_cost("google", 100, 800)
    assert (google["requests"], google["candidates_per_query"], google["cost"]) == (1000, 100, 5.0)
    mine = estimate_search_cost("serpapi", 5000, 800, {"price_per_1000": 10.0, "max_pages": 5})
    assert (mine["requests"], mine["cost"]) == (25000, 250.0)
    assert estimate_search_cost("urls", 5000, 800)["requests"] == 0
    assert describe_estimate(brave) == (
        "5000 class(es) to search x 1 request(s) = 5000 request(s), about USD 25.00 at the list price of USD 5.00 per "
        "1,000 (Search; read 2026-12-03 from https://api-dashboard.search.brave.com/app/plans); then up to 1000000 "
        "image download(s) (200 per class)"
    )
    assert "no request to a priced API" in describe_estimate(estimate_search_cost("urls", 5, 800))


# ---- retired and closing APIs -------------------------------------------------------------------------------------
def test_bing_is_refused_before_any_request_with_exit_status_2(server, tmp_path, monkeypatch, caplog):
    from neighbor_lt.curate import main

    write_manifest(tmp_path, [{"name": "goldfish", "neighbor_of": ["tench"]}])
    monkeypatch.setenv("BING_SEARCH_KEY", "bing-key-0000")
    config = {
        "output_dir": str(tmp_path / "out"),
        "stages": ["retrieve"],
        "target": {},
        "retrieve": {
            "backend": "bing",
            "backend_kwargs": {"endpoint": server.url("/v7.0/images/search")},
            "neighbor_manifest": str(tmp_path / "neighbors" / "neighbors.json"),
            "download": LOOPBACK,
        },
    }
    (tmp_path / "bing.yaml").write_text(yaml.safe_dump(config))  # fmt: skip
    with caplog.at_level("INFO"):
        assert main(["--config", str(tmp_path / "bing.yaml")]) == 2  # recipes/curate.py exits with it
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "\n" not in lines[0] and "retired" in lines[0] and "August 2025" in lines[0]
    assert "use brave (web image search API), serpapi (Google Images)" in lines[0] and "urls" in lines[0]
    assert sum(server.requests.values()) == 0


def test_google_warns_once_then_stops_with_one_line_after_the_shutdown(server, monkeypatch, caplog):
    monkeypatch.setattr(search, "_warned", set())
    with caplog.at_level("WARNING"):
        backend(server, "google")
        backend(server, "google")
    assert caplog.text.count("stops serving on 2027-01-01") == 1
    monkeypatch.setattr(search, "_today", lambda: search.date(2027, 1, 2))
    server.api_mode = "gone"
    with pytest.raises(SearchError) as caught:
        backend(server, "google").search("goldfish", max_results=50)
    assert caught.value.fatal and "\n" not in str(caught.value)
    assert "stopped serving on 2027-01-01 (HTTP 410); set retrieve.backend to brave or serpapi" in str(caught.value)
    assert server.requests["/customsearch/v1"] == 1  # no retry


# ---- no key in any stream or file -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, env_var", [("brave", "BRAVE_API_KEY"), ("serpapi", "SERPAPI_API_KEY")])
def test_api_keys_never_leave_memory(tiny_imagenet_dir, tmp_path, name, env_var):
    canary, inline = f"canary-{name}-7f3a9c1e", f"canary-inline-{name}-5b2d8e40"
    results = {"axolotl": [(f"/img/{i}.jpg", f"/page/{i}", f"An axolotl {i}") for i in range(4)]}
    server = ImageServer(load_jpegs(tiny_imagenet_dir, 10), search_results=results, api_key=canary).start()
    try:
        write_manifest(tmp_path, [{"name": n, "neighbor_of": ["tench"]} for n in ("axolotl", "unicorn", "yeti")])
        retrieve = {"backend": name, "backend_kwargs": {"endpoint": server.url(ENDPOINTS[name])},
                    "neighbor_manifest": str(tmp_path / "neighbors" / "neighbors.json"), "download": LOOPBACK}  # fmt: skip
        status, output = run_curate(tmp_path, "good", retrieve, env_key=canary, env_var=env_var)
        assert status == 0, output[-3000:]
        assert f"retrieve ({name}): 4 candidate(s): 4 ok" in output
        assert not leaks(tmp_path / "good", output, [canary])

        bad = {**retrieve, "backend_kwargs": {**retrieve["backend_kwargs"], "api_key": inline}}
        calls = server.requests[ENDPOINTS[name]]
        status, output = run_curate(tmp_path, "bad", bad, env_key=canary, env_var=env_var)
        assert status == 1, output[-3000:]
        assert server.requests[ENDPOINTS[name]] == calls + 1  # a bad key is fatal: one request
        assert "not sent" in output and not leaks(tmp_path / "bad", output, [canary, inline])
    finally:
        server.stop()
