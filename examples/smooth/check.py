"""Computes the segmentation serially, over the whole volume in one process,
and compares it with the pipeline's data/segmentation.zarr voxel for voxel.
Exits 1 if they differ.

    python3 check.py

Serially: the same Gaussian filter over all of raw.zarr, cropped to the
interior, the same threshold, and one ``scipy.ndimage.label``. Its objects
are renumbered in scan order of their first voxel, as merge.py numbers
them, so equal segmentations have equal ids.
"""

import sys
import time

import numpy as np
import zarr
from scipy import ndimage

from smooth_data import HALO, RAW, SEGMENTATION, SIGMA, THRESHOLD


def serial_segmentation():
    raw = zarr.open_array(str(RAW), mode="r")[...]
    interior = (slice(HALO, -HALO),) * 3
    smoothed = ndimage.gaussian_filter(raw, sigma=SIGMA)[interior]
    labels, count = ndimage.label(smoothed > THRESHOLD)
    first_voxels = ndimage.minimum(
        np.arange(labels.size).reshape(labels.shape), labels, np.arange(1, count + 1)
    )
    rank = np.zeros(count + 1, dtype=np.uint64)
    rank[1:][np.argsort(first_voxels)] = np.arange(1, count + 1, dtype=np.uint64)
    return rank[labels], count


def main():
    started = time.perf_counter()
    expected, count = serial_segmentation()
    blockwise = zarr.open_array(str(SEGMENTATION), mode="r")[...]
    differing = int(np.count_nonzero(expected != blockwise))
    elapsed = time.perf_counter() - started
    if differing:
        sys.exit(f"FAILED: {differing} of {expected.size} voxels differ from the serial "
                 f"segmentation ({count} objects)")
    foreground = int(np.count_nonzero(expected))
    print(f"segmentation matches the serial computation: {count} objects, "
          f"{foreground} of {expected.size} voxels, serial in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
