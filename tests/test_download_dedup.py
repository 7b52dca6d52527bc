"""The dedup index: the same bytes, a near-identical picture, or the same URL is stored once."""

import threading

from neighbor_lt.retrieval.download import DedupIndex, Downloader, hamming, open_downloads


def test_same_bytes_or_a_near_perceptual_hash_is_a_duplicate_of_the_first():
    index = DedupIndex(phash_distance=2)
    assert index.claim("a", "sha-a", "ff00ff00ff00ff00") is None
    assert index.claim("b", "sha-a", "0000000000000000") == "a"  # same bytes
    assert index.claim("c", "sha-c", "ff00ff00ff00ff03") == "a"  # 2 bits away
    assert hamming("ff00ff00ff00ff00", "ff00ff00ff00ff07") == 3
    assert index.claim("d", "sha-d", "ff00ff00ff00ff07") is None  # 3 bits away: another picture
    exact, off = DedupIndex(phash_distance=0), DedupIndex(phash_distance=-1)
    for one in (exact, off):
        one.add_stored({"key": "old", "sha256": "sha-old", "phash": "1234123412341234"})
    assert exact.claim("e", "sha-e", "1234123412341234") == "old"
    assert exact.claim("f", "sha-f", "1234123412341235") is None
    assert off.claim("e", "sha-e", "1234123412341234") is None  # perceptual dedup off: only the bytes count
    assert off.claim("g", "sha-old", "0") == "old"


def test_one_claim_wins_when_threads_race():
    index, winners = DedupIndex(), []
    threads = [
        threading.Thread(target=lambda i=i: winners.append(index.claim(f"k{i}", "same", "00"))) for i in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert winners.count(None) == 1


def test_a_url_keeps_its_first_record_and_pool_rows_are_not_urls(tmp_path):
    downloader = Downloader(str(tmp_path))
    assert downloader.url_result("http://x/1.jpg") is None  # no run: nothing recorded
    with open_downloads(str(tmp_path)) as store:
        downloader._store = store  # what a run holds open
        first = {"key": "a\thttp://x/1.jpg", "source_url": "http://x/1.jpg", "outcome": "http_error"}
        store.put(first)
        store.put({**first, "key": "b\thttp://x/1.jpg", "outcome": "ok"})
        assert downloader.url_result("http://x/1.jpg") == first
        store.put({"key": "a\tpool://set#3", "source_url": "pool://set#3", "outcome": "ok"})
        assert downloader.url_result("pool://set#3") is None and downloader.url_result("http://x/2.jpg") is None
