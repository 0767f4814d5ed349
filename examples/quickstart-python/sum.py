"""The sum task's worker: sums the squares of one block (256,000 values) into
its one value of data/partial_sums.zarr.

The pipeline lists square upstream of sum, so daisy-rs hands this worker a
block as soon as the square blocks under it are written, while other square
blocks are still running.
"""

import zarr

import daisy_worker
from quickstart_data import PARTIAL_SUMS, SQUARES, SUM_BLOCK, partial_sum


def main():
    squares = zarr.open_array(str(SQUARES), mode="r")
    partial_sums = zarr.open_array(str(PARTIAL_SUMS), mode="r+")

    def process(block):
        # The block's write ROI is one voxel of partial_sums (voxel size SUM_BLOCK).
        voxel = block.write_roi.begin[0] // SUM_BLOCK
        partial_sums[voxel] = partial_sum(squares[block.read_roi.to_slices()])

    daisy_worker.serve(process)


if __name__ == "__main__":
    main()
