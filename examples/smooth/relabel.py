"""The relabel task's worker: writes one block of segmentation.zarr, each
block-unique id of labels.zarr replaced by its object id from merge.py's
lookup table.
"""

import numpy as np
import zarr

import daisy_worker
from smooth_data import LABELS, LOOKUP, SEGMENTATION, interior_slices


def main():
    labels = zarr.open_array(str(LABELS), mode="r")
    segmentation = zarr.open_array(str(SEGMENTATION), mode="r+")
    lookup = {}

    def process(block):
        # Loaded at the first block: this worker starts only once merge is done.
        if not lookup:
            lookup.update(np.load(LOOKUP))
        write = interior_slices(block.write_roi)
        ids = labels[write]
        index = np.searchsorted(lookup["ids"], ids)
        objects = lookup["objects"][np.minimum(index, len(lookup["ids"]) - 1)]
        segmentation[write] = np.where(ids > 0, objects, 0).astype(np.uint64)

    daisy_worker.serve(process)


if __name__ == "__main__":
    main()
