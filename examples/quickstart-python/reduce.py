"""The reduce task's worker (one block): adds the 16 partial sums, checks the
total against (n-1)n(2n-1)/6 and writes data/result.json. A wrong total
fails the block, so ``daisy run`` exits 1.

Why no numpy or zarr here: this worker starts only when the last sum block is
done, so its start-up is on the critical path of the run. Importing numpy and
zarr costs ≈ 0.45 s on the benchmark machine; the standard library ≈ 0.03 s.
A zarr v3 array with the raw ``bytes`` codec (as prepare.py creates it) keeps
chunk ``k`` in the file ``c/k`` as little-endian values, and a chunk never
written holds the fill value, so 16 one-value chunks are read with ``struct``.
The zarr.json check below refuses any other layout instead of misreading it.
"""

import json
import struct

import daisy_worker
from quickstart_data import N, PARTIAL_SUMS, RESULT, closed_form


def read_partial_sums(path):
    """The values of a 1-D, one-value-per-chunk, uncompressed int64 zarr v3 array."""
    metadata = json.loads((path / "zarr.json").read_text())
    expected_layout = {
        "data_type": "int64",
        "chunk_shape": [1],
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    }
    layout = {
        "data_type": metadata["data_type"],
        "chunk_shape": metadata["chunk_grid"]["configuration"]["chunk_shape"],
        "codecs": metadata["codecs"],
        "chunk_key_encoding": metadata["chunk_key_encoding"],
    }
    if layout != expected_layout:
        raise ValueError(f"{path}: expected the layout {expected_layout}, found {layout}")
    values = []
    for k in range(metadata["shape"][0]):
        chunk = path / "c" / str(k)
        values.append(struct.unpack("<q", chunk.read_bytes())[0] if chunk.exists()
                      else metadata["fill_value"])
    return values


def process(block):
    partial_sums = read_partial_sums(PARTIAL_SUMS)
    # Python ints: the total (≈ 2.29e19) does not fit in an int64.
    total = sum(partial_sums)
    expected = closed_form(N)
    result = {
        "n": N,
        "partial_sums": len(partial_sums),
        "sum_of_squares": total,
        "expected": expected,
        "ok": total == expected,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"sum of squares = {total:,}, expected {expected:,}")  # goes to the .out log
    if total != expected:
        raise ValueError(f"sum of squares {total:,} != (n-1)n(2n-1)/6 = {expected:,}")


if __name__ == "__main__":
    daisy_worker.serve(process)
