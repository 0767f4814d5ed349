"""Sizes and paths shared by the quickstart's scripts.

Every array lives under ``data/`` next to this file, so the scripts work from
any directory (``daisy run`` starts the workers in the pipeline file's
directory; ``prepare.py`` and ``serial.py`` may be started from anywhere).
"""

from pathlib import Path

#: How many values (0..N) are squared and summed; the seed's 4,096,000.
N = 4_096_000
#: Values per square block and per chunk of input.zarr and squares.zarr
#: (pipeline.toml: square's write_roi shape): 250 blocks.
SQUARE_BLOCK = 16_384
#: Values per sum block (pipeline.toml: sum's write_roi shape): 16 blocks.
SUM_BLOCK = 256_000

DATA = Path(__file__).resolve().parent / "data"
INPUT = DATA / "input.zarr"
SQUARES = DATA / "squares.zarr"
#: One value per sum block: voxel ``k`` holds the sum of squares of
#: ``[k * SUM_BLOCK, (k + 1) * SUM_BLOCK)``.
PARTIAL_SUMS = DATA / "partial_sums.zarr"
RESULT = DATA / "result.json"


def closed_form(n):
    """Σ_{i<n} i² = (n-1)n(2n-1)/6, in Python's unbounded ints: for the
    default n it is ≈ 2.29e19, more than an int64 (or uint64) holds."""
    return (n - 1) * n * (2 * n - 1) // 6


def create_arrays(directory, zarr):
    """Creates empty squares and partial-sums arrays in ``directory``.

    Uncompressed chunks (as daisy-array's default), so a block's I/O is a
    file read or write. ``voxel_size`` is funlib's (and daisy-array's)
    attribute: a partial sum is one voxel of SUM_BLOCK world units, so the
    Rust side opens it with the same geometry as the sum task's blocks.
    """
    squares = zarr.create_array(
        store=str(directory / "squares.zarr"), shape=(N,), chunks=(SQUARE_BLOCK,),
        dtype="int64", fill_value=0, compressors=None, overwrite=True,
    )
    partial_sums = zarr.create_array(
        store=str(directory / "partial_sums.zarr"), shape=(N // SUM_BLOCK,), chunks=(1,),
        dtype="int64", fill_value=0, compressors=None, overwrite=True,
        attributes={"voxel_size": [SUM_BLOCK], "offset": [0]},
    )
    return squares, partial_sums


def partial_sum(squares):
    """The sum of a block of squares as a Python int, refusing int64 overflow.

    With the default sizes the largest partial sum (the last block's) is
    ≈ 4.03e18 < 2**63 ≈ 9.22e18, so numpy's int64 sum is exact; the bound
    check makes other sizes fail loudly instead of wrapping.
    """
    if len(squares) and int(squares.max()) > (2**63 - 1) // len(squares):
        raise OverflowError("a partial sum may overflow int64: use smaller sum blocks")
    return int(squares.sum(dtype="int64"))
