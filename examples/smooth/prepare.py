"""Creates the example's synthetic raw volume and its empty outputs under
data/, removing what an earlier run left there.

    python3 prepare.py

raw.zarr is uniform noise in [0, 1) (float32, seeded): smoothed and
thresholded, it turns into blobs of a few hundred voxels that cross block
faces, which is what the merge has to get right.
"""

import shutil
import time

import numpy as np
import zarr

from smooth_data import (
    BLOCK_SHAPE, DATA, FRAGMENTS, LABELS, RAW, RAW_SHAPE, SEED, SEGMENTATION, SHAPE, SMOOTHED,
)


def main():
    started = time.perf_counter()
    shutil.rmtree(DATA, ignore_errors=True)
    FRAGMENTS.mkdir(parents=True)
    raw = zarr.create_array(
        store=str(RAW), shape=RAW_SHAPE, chunks=BLOCK_SHAPE, dtype="float32", fill_value=0,
    )
    raw[...] = np.random.default_rng(SEED).random(RAW_SHAPE, dtype=np.float32)
    for path, dtype in [(SMOOTHED, "float32"), (LABELS, "uint64"), (SEGMENTATION, "uint64")]:
        zarr.create_array(
            store=str(path), shape=SHAPE, chunks=BLOCK_SHAPE, dtype=dtype, fill_value=0,
        )
    print(
        f"wrote {RAW} ({'x'.join(map(str, RAW_SHAPE))} float32 noise) and empty "
        f"smoothed, labels and segmentation arrays of {'x'.join(map(str, SHAPE))} "
        f"in {time.perf_counter() - started:.2f} s"
    )


if __name__ == "__main__":
    main()
