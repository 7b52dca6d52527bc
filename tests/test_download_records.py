"""The downloader's JSONL log: a torn last line (a killed writer) is skipped on reading and cut before appending."""

import json
import threading

from neighbor_lt.retrieval.download import JsonlWriter, read_jsonl


def test_a_torn_last_line_is_skipped_then_cut_and_threads_write_whole_lines(tmp_path):
    path = tmp_path / "log" / "downloads.jsonl"
    assert read_jsonl(path) == []
    writer = JsonlWriter(str(path))
    writer.write({"key": "a", "caption": "ünïcode"})
    writer.close()
    with open(path, "a") as f:
        f.write('{"key": "b", "outc')  # killed mid-line
    assert read_jsonl(path) == [{"key": "a", "caption": "ünïcode"}]
    writer = JsonlWriter(str(path))
    threads = [threading.Thread(target=writer.write, args=({"key": f"t{i}", "pad": "x" * 5000},)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9 and all(json.loads(line) for line in lines)  # no torn or interleaved line
    assert sorted(r["key"] for r in read_jsonl(path)) == ["a"] + [f"t{i}" for i in range(8)]
