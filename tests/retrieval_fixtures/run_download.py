"""Run the downloader on a candidate list in its own process (the kill / Ctrl-C tests interrupt it midway).

Usage: python run_download.py CANDIDATES.json OUTPUT_DIR [retry] [processes=N]

Exits 130 on Ctrl-C, like recipes/curate.py.
"""

import json
import sys

from neighbor_lt.retrieval import Candidate, DownloadConfig, Downloader

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        candidates = [Candidate(**c) for c in json.load(f)]
    options = sys.argv[3:]
    processes = next((int(o.split("=")[1]) for o in options if o.startswith("processes=")), 1)
    config = DownloadConfig(
        num_workers=4,
        num_processes=processes,
        allowed_networks=["127.0.0.1/32"],
        requests_per_second_per_host=0,
        backoff_base=0.01,
    )
    try:
        Downloader(sys.argv[2], config).run(candidates, retry_failed="retry" in options)
    except KeyboardInterrupt:
        sys.exit(130)
