"""A downloader folder's records: read in chunks by outcome, nothing from a folder without records, and the JSONL log
of an earlier version migrated on first use."""

import json

from neighbor_lt.retrieval.download import has_downloads, iter_downloads, open_downloads, read_downloads


def test_records_of_a_folder_come_in_chunks_by_outcome(tmp_path):
    assert not has_downloads(str(tmp_path)) and list(iter_downloads(str(tmp_path))) == []
    with open_downloads(str(tmp_path)) as store:
        store.put_many(
            {"key": f"fish\thttp://x/{i}.jpg", "source_url": f"http://x/{i}.jpg", "caption": "ünïcode",
             "outcome": "ok" if i % 4 else "timeout", "path": f"images/{i}.jpg" if i % 4 else None}
            for i in range(10)
        )  # fmt: skip
    assert has_downloads(str(tmp_path))
    chunks = list(iter_downloads(str(tmp_path), chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1] and {r["outcome"] for c in chunks for r in c} == {"ok"}
    assert [len(c) for c in iter_downloads(str(tmp_path), outcome=["timeout"])] == [3]
    assert [r["caption"] for r in read_downloads(str(tmp_path))] == ["ünïcode"] * 10


def test_a_jsonl_log_of_an_earlier_version_is_read_through_the_store(tmp_path):
    lines = [{"key": "a", "outcome": "timeout", "source_url": "http://x/a"}, {"key": "a", "outcome": "ok"}]
    (tmp_path / "downloads.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"key": "b", "outc')
    assert has_downloads(str(tmp_path))
    assert [r["outcome"] for r in read_downloads(str(tmp_path))] == ["ok"]  # a key's last line wins, torn line out
    assert (tmp_path / "downloads.jsonl.migrated").exists() and not (tmp_path / "downloads.jsonl").exists()


def test_the_one_scan_of_iter_downloads_keeps_a_small_page_cache(tmp_path, monkeypatch):
    """A writer's store keeps 64 MiB of pages; the filter's scans of the records read each page once and keep 4."""
    from neighbor_lt.retrieval import records_store

    sizes = []
    opened = records_store.RecordStore.__init__

    def init(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        sizes.append(self._db.execute("PRAGMA cache_size").fetchone()[0])

    monkeypatch.setattr(records_store.RecordStore, "__init__", init)
    with open_downloads(str(tmp_path)) as store:
        store.put({"key": "a", "outcome": "ok"})
    assert [r["key"] for c in iter_downloads(str(tmp_path)) for r in c] == ["a"]
    assert sizes == [-64 * 1024, -4 * 1024]  # KiB
