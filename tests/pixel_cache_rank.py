"""One torchrun process of tests/test_pixels.py's build-once test: builds the tensor pipeline's dataset, then writes
how many images this process decoded. Arguments: parquet file, cache folder, output folder."""

import json
import sys
import time
from types import SimpleNamespace

from datasets import Dataset

import neighbor_lt.pixels as pixels
from neighbor_lt.configs import NeighborLTTrainingArguments


def main(parquet: str, cache: str, out: str) -> None:
    decoded, decode = [], pixels._decode_square

    def counted(item, size):  # count this rank's work; slow enough that a rank not held back would start its own
        decoded.append(1)
        time.sleep(0.05)
        return decode(item, size)

    pixels._decode_square = counted
    args = NeighborLTTrainingArguments(output_dir=out, use_cpu=True, report_to="none")
    with args.main_process_first(desc="load"):  # the Arrow cache of the parquet, also once
        rows = Dataset.from_parquet(parquet, cache_dir=f"{cache}/datasets").select(range(40))
    data_args = SimpleNamespace(input_pipeline="tensor", crop_min_scale=0.35, pixel_cache_dir=f"{cache}/pixels")
    dataset, _, _ = pixels.make_train_dataset(data_args, args, rows, None, 200, 32, (0.5,) * 3, (0.5,) * 3)
    result = {"world": args.world_size, "decoded": len(decoded), "sum": int(dataset.target_pixels.sum())}
    with open(f"{out}/rank{args.process_index}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
