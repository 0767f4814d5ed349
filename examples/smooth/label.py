"""The label task's worker: connected components of one block, and which of
them touch the components of the neighbouring blocks.

Each block labels its thresholded write ROI (6-connectivity) with ids unique
to the block (``block id * (voxels per block + 1) + local id``) into
labels.zarr. Then it reads labels.zarr in its read ROI, a 1-voxel shell
around the block: a neighbour that already ran has written its labels
there, one that has not shows zeros. ``read_write_conflict = true`` makes
this complete and race-free: two face neighbours conflict, so they never run
at the same time, and the one that runs second records every pair of ids
that touch across their shared face. merge.py joins those pairs.
"""

import numpy as np
import zarr
from scipy import ndimage

import daisy_worker
from smooth_data import (
    FRAGMENTS, LABELS, SMOOTHED, THRESHOLD, interior_slices, linear_index, read_padded,
)


def face_pairs(labels, block_labels):
    """Pairs (id in the block, id of a neighbour) that touch across a face.

    ``labels`` is the read ROI (the block plus a 1-voxel shell), with the
    block's own ids at its centre ``block_labels``.
    """
    pairs = []
    for axis in range(3):
        for side in (0, -1):
            # The block's face layer on this side, and the shell layer beyond it.
            face = np.take(block_labels, side, axis=axis)
            beyond = [slice(1, -1)] * 3
            beyond[axis] = side
            beyond = labels[tuple(beyond)]
            touching = (face != 0) & (beyond != 0)
            pairs.append(np.stack([face[touching], beyond[touching]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def main():
    smoothed = zarr.open_array(str(SMOOTHED), mode="r")
    labels_array = zarr.open_array(str(LABELS), mode="r+")

    def process(block):
        _, block_id = block.block_id
        write = interior_slices(block.write_roi)
        local, count = ndimage.label(smoothed[write] > THRESHOLD)
        first_id = block_id * (local.size + 1)
        block_labels = np.where(local > 0, local.astype(np.uint64) + np.uint64(first_id), 0)
        block_labels = block_labels.astype(np.uint64)
        labels_array[write] = block_labels

        labels = read_padded(labels_array, block.read_roi)
        pairs = face_pairs(labels, block_labels)
        # Each id's first voxel in scan order of the whole volume: merge.py
        # numbers objects by it, as a serial scipy.ndimage.label does.
        coordinates = np.indices(local.shape).reshape(3, -1)
        coordinates += np.asarray(block.write_roi.offset).reshape(3, 1)
        order = linear_index(coordinates).reshape(local.shape)
        ids = np.arange(1, count + 1)
        first_voxels = ndimage.minimum(order, local, ids).astype(np.int64) if count else []
        np.savez(
            FRAGMENTS / f"{block_id}.npz",
            pairs=pairs.astype(np.uint64).reshape(-1, 2),
            ids=(ids + first_id).astype(np.uint64),
            first_voxels=np.asarray(first_voxels, dtype=np.int64),
        )

    daisy_worker.serve(process)


if __name__ == "__main__":
    main()
