"""Geometry, paths and parameters shared by the smooth example's scripts.

The geometry comes from pipeline.toml, so the volume is resized in one
place. World units are voxels: the raw volume covers the smooth task's
total ROI, and the outputs cover the interior that the smooth task writes
(its total ROI shrunk by the halo), in chunks of one block each, so that
two blocks never write into the same chunk.
"""

import tomllib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RAW = DATA / "raw.zarr"
SMOOTHED = DATA / "smoothed.zarr"
#: Block-unique component ids, before merging across block faces.
LABELS = DATA / "labels.zarr"
#: One object id per connected component of the whole volume.
SEGMENTATION = DATA / "segmentation.zarr"
#: Per label block: the ids that touch across its faces, and each of its
#: ids' first voxel in scan order (see label.py).
FRAGMENTS = DATA / "fragments"
#: merge.py's lookup table from block-unique ids to object ids.
LOOKUP = DATA / "lookup.npz"

#: Gaussian sigma of the smoothing, in voxels.
SIGMA = 2.0
#: scipy's default filter radius is int(4 * sigma + 0.5) voxels: the halo.
HALO = int(4.0 * SIGMA + 0.5)
#: Foreground is smoothed intensity above this (the raw noise is uniform in
#: [0, 1), so its smoothed mean is 0.5 with a standard deviation of ~0.016).
THRESHOLD = 0.52
SEED = 14


def _tasks():
    with open(HERE / "pipeline.toml", "rb") as f:
        return {task["id"]: task for task in tomllib.load(f)["task"]}


_SMOOTH = _tasks()["smooth"]
#: The raw volume: the smooth task's total ROI (begin, shape).
RAW_BEGIN = tuple(_SMOOTH["total_roi"]["offset"])
RAW_SHAPE = tuple(_SMOOTH["total_roi"]["shape"])
#: The interior every output covers: the raw volume shrunk by the halo.
BEGIN = tuple(b + HALO for b in RAW_BEGIN)
SHAPE = tuple(s - 2 * HALO for s in RAW_SHAPE)
#: One chunk per block.
BLOCK_SHAPE = tuple(_SMOOTH["write_roi"]["shape"])
_CONTEXT = tuple(w - r for w, r in zip(_SMOOTH["write_roi"]["offset"], _SMOOTH["read_roi"]["offset"]))
if _CONTEXT != (HALO,) * 3:
    raise SystemExit(f"pipeline.toml: the smooth task's halo is {_CONTEXT}, the filter needs {HALO}")


def interior_slices(roi):
    """Slices of the interior arrays for a ROI inside the interior."""
    return tuple(slice(b - o, e - o) for b, e, o in zip(roi.offset, roi.end, BEGIN))


def read_padded(array, roi, fill=0):
    """The ROI of an interior array; voxels outside the interior are ``fill``."""
    out = np.full(tuple(roi.shape), fill, dtype=array.dtype)
    begin = [max(b, o) for b, o in zip(roi.offset, BEGIN)]
    end = [min(e, o + s) for e, o, s in zip(roi.end, BEGIN, SHAPE)]
    if all(b < e for b, e in zip(begin, end)):
        src = tuple(slice(b - o, e - o) for b, e, o in zip(begin, end, BEGIN))
        dst = tuple(slice(b - r, e - r) for b, e, r in zip(begin, end, roi.offset))
        out[dst] = array[src]
    return out


def linear_index(coordinates):
    """Scan-order (C-order) index of interior voxels given as world coordinates."""
    return np.ravel_multi_index(
        tuple(np.asarray(c) - o for c, o in zip(coordinates, BEGIN)), SHAPE
    )
