"""The downloader's settings and the outcomes it records."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..search import DEFAULT_USER_AGENT

OUTCOMES = (
    "ok",
    "http_error",
    "timeout",
    "network_error",
    "not_image",
    "too_large",
    "too_small",
    "duplicate",
    "blocked_address",
    "opted_out",
    "bad_url",
    "dns_error",
    "robots_unreachable",
    "error",
)
RETRYABLE_OUTCOMES = ("timeout", "network_error", "dns_error", "robots_unreachable")


#: Outcomes a setting decided (the address guard's ``allowed_networks`` / ``block_private_addresses``): fetched again
#: with ``retry_failed``, and by any run whose guard settings differ from those the record was made under.
SETTING_OUTCOMES = ("blocked_address",)


def guard_settings(config: DownloadConfig) -> list:
    """The settings a ``blocked_address`` record was decided under (stored in it as ``guard``)."""
    return [bool(config.block_private_addresses), sorted(str(n) for n in config.allowed_networks)]


def is_refetched(record: dict, retry_failed: bool, guard: list) -> bool:
    """Whether a run fetches ``record``'s URL again: a retryable failure with ``retry_failed``; a refusal of the
    address guard with ``retry_failed`` or once the guard's settings (``guard``, :func:`guard_settings`) changed."""
    if record.get("outcome") in SETTING_OUTCOMES:
        return retry_failed or record.get("guard", guard) != guard
    return retry_failed and is_retryable(record)


def is_retryable(record: dict) -> bool:
    """Whether a manifest record failed in a way that may succeed later (timeouts, network / DNS errors, 429 and
    5xx after the retries, an unreachable robots.txt); ``--retry_failed`` fetches exactly these again."""
    if record.get("outcome") in RETRYABLE_OUTCOMES:
        return True
    status = record.get("status")
    return record.get("outcome") == "http_error" and isinstance(status, int) and (status == 429 or status >= 500)


@dataclass
class DownloadConfig:
    """Downloader settings (the ``download:`` block of the ``retrieve`` stage)."""

    num_workers: int = field(default=16, metadata={"help": "Concurrent downloads (threads, over all processes)."})
    num_processes: int = field(
        default=0,
        metadata={
            "help": "Download processes sharing the threads and the per-host limits (one Python process is CPU-bound "
            "at ~250 images/s); 0 = one per CPU core, at most 4, for 200 URLs or more."
        },
    )
    max_connections_per_host: int = field(default=4, metadata={"help": "Concurrent requests to one host."})
    requests_per_second_per_host: float = field(default=4.0, metadata={"help": "Request rate per host; 0 = no limit."})
    connect_timeout: float = field(default=10.0, metadata={"help": "Seconds to connect."})
    read_timeout: float = field(default=20.0, metadata={"help": "Seconds between two reads."})
    total_timeout: float = field(default=60.0, metadata={"help": "Seconds for one whole response body."})
    max_retries: int = field(default=3, metadata={"help": "Retries on 429, 5xx and connection errors."})
    backoff_base: float = field(default=1.0, metadata={"help": "Backoff before retry k is base * 2^k (+ jitter)."})
    backoff_max: float = field(default=60.0, metadata={"help": "Longest wait before a retry (caps Retry-After too)."})
    max_redirects: int = field(default=5, metadata={"help": "Redirects followed per URL; loops are refused."})
    max_bytes: int = field(default=20_000_000, metadata={"help": "Largest response body accepted, in bytes."})
    max_pixels: int = field(default=40_000_000, metadata={"help": "Largest width*height (decompression-bomb guard)."})
    min_side: int = field(default=16, metadata={"help": "Smallest accepted image side, in pixels."})
    max_side: int = field(default=512, metadata={"help": "Images are resized so their longer side is at most this."})
    jpeg_quality: int = field(default=90, metadata={"help": "Quality of the stored JPEG."})
    phash_distance: int = field(
        default=0, metadata={"help": "Perceptual-hash Hamming distance counted as a duplicate; -1 disables."}
    )
    user_agent: str = field(default=DEFAULT_USER_AGENT, metadata={"help": "User-Agent header (say who you are)."})
    block_private_addresses: bool = field(
        default=True, metadata={"help": "Refuse private, loopback, link-local, multicast and reserved addresses."}
    )
    allowed_networks: list[str] = field(
        default_factory=list, metadata={"help": "CIDRs exempt from the address guard (tests: ['127.0.0.1/32'])."}
    )
    ca_bundle: str | None = field(
        default=None,
        metadata={"help": "PEM file of extra certificate authorities to trust for https (a mirror with its own CA)."},
    )
    respect_robots_txt: bool = field(default=True, metadata={"help": "Skip URLs that robots.txt disallows for us."})
    respect_x_robots_tag: bool = field(default=True, metadata={"help": "Skip responses carrying an opt-out header."})
    opt_out_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "none"],
        metadata={"help": "X-Robots-Tag directives that count as an opt-out."},
    )
    stop_grace: float = field(
        default=1.0, metadata={"help": "Seconds Ctrl-C waits for downloads in flight to finish and be recorded."}
    )
