"""Creates the quickstart's arrays under data/: input.zarr holding 0..n
(int64) and the empty squares.zarr and partial_sums.zarr that the pipeline
writes. Removes what an earlier run left there.

    python3 prepare.py
"""

import shutil
import time

import numpy as np
import zarr

from quickstart_data import DATA, INPUT, N, SQUARE_BLOCK, create_arrays


def main():
    started = time.perf_counter()
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    values = zarr.create_array(
        store=str(INPUT), shape=(N,), chunks=(SQUARE_BLOCK,), dtype="int64",
        fill_value=0, compressors=None,
    )
    values[:] = np.arange(N, dtype=np.int64)
    create_arrays(DATA, zarr)
    print(
        f"wrote {INPUT} ({N:,} int64 values 0..{N - 1:,} in chunks of {SQUARE_BLOCK:,}) "
        f"and empty squares.zarr, partial_sums.zarr in {time.perf_counter() - started:.2f} s"
    )


if __name__ == "__main__":
    main()
