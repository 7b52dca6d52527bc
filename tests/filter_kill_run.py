"""One filter stage run of tests/test_filter_scale.py, in its own process so that it can be killed with SIGKILL at a
chosen point of the scoring pass. Arguments: output folder, saved target DatasetDict, the filter section (JSON), and
where to die: ``none``, ``after:N`` (once the N-th shard of this run is committed) or ``torn:N`` (the N-th shard's
rows written into the score store, its transaction not yet committed).

The kill comes from inside because the point must be exact (a kill from the test on a timer would race the pass):
the process sends itself SIGKILL, which nothing can catch or clean up after, as with ``kill -9``."""

import json
import os
import signal
import sys

from datasets import load_from_disk

from neighbor_lt.curate import CurateContext
from neighbor_lt.retrieval.records_store import RecordStore
from neighbor_lt.retrieval.stages import run_filter


def die_at(where: str) -> None:
    if where == "none":
        return
    how, count = where.split(":")
    shards = []
    put_many, flush = RecordStore.put_many, RecordStore.flush

    def counted(store, records):
        if "scores-" in store.path:
            shards.append(store.path)
        put_many(store, records)
        if how == "after" and len(shards) == int(count):
            os.kill(os.getpid(), signal.SIGKILL)

    def watched(store):
        if how == "torn" and len(shards) == int(count) and store._db.in_transaction:
            os.kill(os.getpid(), signal.SIGKILL)
        flush(store)

    RecordStore.put_many, RecordStore.flush = counted, watched


def main(output_dir: str, target_dir: str, section: str, where: str) -> None:
    die_at(where)
    context = CurateContext(output_dir, target=load_from_disk(target_dir))
    print(json.dumps(run_filter(json.loads(section), context)))


if __name__ == "__main__":
    main(*sys.argv[1:])
