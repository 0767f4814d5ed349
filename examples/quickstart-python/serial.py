"""The serial baseline: the same square function over the whole array in
one process, then the same sums and reduce, with the same zarr I/O (read the
input, write the squares, read them back, write 16 partial sums, read them).
Writes to data/serial/, so it does not disturb the pipeline's arrays.

    python3 serial.py            numpy, vectorised
    python3 serial.py --nditer   the seed's element-by-element np.nditer loop

Prints the time of the work itself (after imports); time the whole command
(``time python3 serial.py --nditer``) to compare with ``daisy run``.
"""

import argparse
import time

import zarr

from quickstart_data import DATA, INPUT, N, SUM_BLOCK, closed_form, create_arrays, partial_sum
from square import square_nditer, square_vectorised


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nditer", action="store_true", help="square with np.nditer")
    args = parser.parse_args()
    square = square_nditer if args.nditer else square_vectorised
    serial_dir = DATA / "serial"
    serial_dir.mkdir(parents=True, exist_ok=True)
    squares, partial_sums = create_arrays(serial_dir, zarr)

    started = time.perf_counter()
    squares[:] = square(zarr.open_array(str(INPUT), mode="r")[:])
    for voxel in range(N // SUM_BLOCK):
        begin = voxel * SUM_BLOCK
        partial_sums[voxel] = partial_sum(squares[begin : begin + SUM_BLOCK])
    total = sum(int(partial) for partial in partial_sums[:])
    elapsed = time.perf_counter() - started

    expected = closed_form(N)
    function = "np.nditer" if args.nditer else "vectorised"
    print(f"serial ({function}): sum of squares = {total:,} in {elapsed:.2f} s")
    if total != expected:
        raise SystemExit(f"FAILED: expected (n-1)n(2n-1)/6 = {expected:,}")
    print("check: ok, equals (n-1)n(2n-1)/6")


if __name__ == "__main__":
    main()
