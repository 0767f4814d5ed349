"""The merge task's worker (one block over the whole volume): joins the
block-unique ids that touch across block faces into objects and numbers the
objects in scan order of their first voxel, as a serial
``scipy.ndimage.label`` numbers its components. Writes the lookup table
from ids to objects that relabel.py applies.

Its read ROI is the whole volume, so it starts only once every label block
is done. The work is proportional to the number of fragments, not voxels.
"""

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import daisy_worker
from smooth_data import FRAGMENTS, LOOKUP


def process(block):
    fragments = [np.load(path) for path in sorted(FRAGMENTS.glob("*.npz"))]
    ids = np.concatenate([f["ids"] for f in fragments])
    first_voxels = np.concatenate([f["first_voxels"] for f in fragments])
    pairs = np.concatenate([f["pairs"] for f in fragments])
    order = np.argsort(ids)
    ids, first_voxels = ids[order], first_voxels[order]
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(ids), len(ids)))
    count, component = connected_components(graph, directed=False)
    # Number the objects by their first voxel in scan order.
    component_first = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(component_first, component, first_voxels)
    rank = np.empty(count, dtype=np.uint64)
    rank[np.argsort(component_first)] = np.arange(1, count + 1, dtype=np.uint64)
    np.savez(LOOKUP, ids=ids, objects=rank[component])
    print(f"{len(ids)} fragments in {len(fragments)} blocks, {len(pairs)} touching pairs: "
          f"{count} objects")  # goes to the .out log


if __name__ == "__main__":
    daisy_worker.serve(process)
