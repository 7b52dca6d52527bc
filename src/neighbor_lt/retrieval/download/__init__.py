"""A polite, guarded, resumable image downloader.

Every candidate URL gets exactly one record in ``downloads.sqlite`` (its outcome, hashes and stored file; a
:class:`~neighbor_lt.retrieval.records_store.RecordStore`, read with :func:`iter_downloads`); images are stored once, by
SHA-256, under ``images/``. A rerun skips every URL that already has a record, so killing the process at any point and
starting it again loses nothing and duplicates nothing (a batch of records not yet committed is redone). A
``downloads.jsonl`` of an earlier version is migrated into the store once.

Outcomes: ``ok``, ``http_error``, ``timeout``, ``network_error``, ``dns_error`` (the name does not resolve),
``bad_url`` (malformed URL, invalid port, unsupported scheme), ``robots_unreachable`` (robots.txt answered 5xx or could
not be fetched: RFC 9309 says disallow all), ``not_image``, ``too_large``, ``too_small``, ``duplicate``,
``blocked_address``, ``opted_out``, ``error`` (anything unexpected, with its type in ``detail``). Nothing raises out of
:meth:`Downloader.run` for one URL. Timeouts, network and DNS errors, 429 / 5xx after the retries and an unreachable
robots.txt are *retryable*: ``Downloader.run(..., retry_failed=True)`` (``recipes/curate.py --retry_failed``)
fetches those again and nothing else.

Ctrl-C stops the run within about a second: queued URLs are dropped, downloads still in flight get ``stop_grace``
seconds to finish and be recorded, the rest are abandoned with nothing written for them. An image file is written only
together with its record (a file whose record ``kill -9`` left uncommitted is removed on the next run), so a rerun
resumes with nothing lost and nothing twice.

Speed: one Python process is CPU-bound at a few hundred images per second, so ``num_processes`` download processes
(default: one per CPU core, at most 4, for 200 URLs or more) fetch, validate and hash in parallel, with
``num_workers`` threads shared out between them; this process alone deduplicates and writes, so the guarantees above
hold unchanged. The processes are started once per run and fed every chunk of candidates; each reads a host's
robots.txt once.

Politeness: at most ``requests_per_second_per_host`` (default 4) requests per second and ``max_connections_per_host``
at once to one host, which caps a single-host source at about that many images per second; the summary says how long
the limit held requests back. Set it to 0 for your own servers. Both limits hold over all download processes
together (each gets its share).

Safety by default: only http(s); any address that is private, loopback, link-local, multicast, reserved or unspecified
is refused, checked on the IP a hostname resolves to at connect time (so redirects and DNS answers cannot sneak past),
unless it is in ``allowed_networks``; robots.txt and ``X-Robots-Tag: noai / noimageai / noindex / none`` are honoured.
A URL the guard refused (``blocked_address``, the record names the setting) is checked again with ``retry_failed``,
and by any run whose guard settings changed. ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` are honoured
(:mod:`neighbor_lt.retrieval.proxies`); through a proxy the guard checks IP literals and the names this machine can
resolve, and leaves the names only the proxy resolves to the proxy.

The parts, one concern each: :mod:`.config` (settings, outcomes), :mod:`.client` (HTTP/1.1 connections and the
address guard), :mod:`.robots` (robots.txt, X-Robots-Tag), :mod:`.limits` (per-host limits), :mod:`.images`
(validation), :mod:`.dedup` (hashes and the dedup index), :mod:`.records` (the record store's folder helpers),
:mod:`.downloader` (the loop over candidates), :mod:`.processes` (the download processes), :mod:`.img2dataset`
(ingesting its output).
"""

from .client import AddressGuard, BlockedAddress, DnsError
from .config import OUTCOMES, RETRYABLE_OUTCOMES, DownloadConfig, is_retryable
from .dedup import DedupIndex, hamming, perceptual_hash
from .downloader import Downloader
from .images import decode_image
from .img2dataset import iter_img2dataset
from .records import (
    DOWNLOADS,
    candidate_to_dict,
    has_downloads,
    iter_downloads,
    open_downloads,
    read_downloads,
)

__all__ = [
    "DOWNLOADS",
    "OUTCOMES",
    "RETRYABLE_OUTCOMES",
    "AddressGuard",
    "BlockedAddress",
    "DedupIndex",
    "DnsError",
    "DownloadConfig",
    "Downloader",
    "candidate_to_dict",
    "decode_image",
    "hamming",
    "has_downloads",
    "is_retryable",
    "iter_downloads",
    "iter_img2dataset",
    "open_downloads",
    "perceptual_hash",
    "read_downloads",
]
