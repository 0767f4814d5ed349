"""The square task's worker: squares one block of data/input.zarr into
data/squares.zarr.

    worker = ["python3", "square.py"]             numpy, vectorised (default)
    worker = ["python3", "square.py", "--nditer"] the seed's element-by-element
                                                  np.nditer loop (the benchmark)

One process serves many blocks (``daisy_worker.serve``), so Python, numpy and
zarr start once per worker, not once per block.
"""

import argparse

import numpy as np
import zarr

from quickstart_data import INPUT, SQUARES


def square_vectorised(values):
    """Squares all values at once (numpy)."""
    return np.square(values)


def square_nditer(values):
    """The seed's process function: squares the values one by one, in place."""
    for x in np.nditer(values, op_flags=["readwrite"]):
        x[...] = x**2
    return values


def main():
    # Imported here so that serial.py can import the square functions without
    # daisy_worker on its path (daisy run puts it there for workers).
    import daisy_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nditer", action="store_true",
        help="square element by element with np.nditer (the seed's function)",
    )
    args = parser.parse_args()
    square = square_nditer if args.nditer else square_vectorised
    values = zarr.open_array(str(INPUT), mode="r")
    squares = zarr.open_array(str(SQUARES), mode="r+")

    def process(block):
        # 1-D ROIs in voxels (voxel size 1): to_slices() indexes zarr directly.
        squares[block.write_roi.to_slices()] = square(values[block.read_roi.to_slices()])

    daisy_worker.serve(process)


if __name__ == "__main__":
    main()
