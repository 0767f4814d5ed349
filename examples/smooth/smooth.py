"""The smooth task's worker: Gaussian smoothing of one block.

The block reads its write ROI grown by the halo (the filter's radius), so
every voxel it writes sees the same neighbourhood as in a filter over the
whole volume: the result is the serial one, bit for bit.
"""

import zarr
from scipy import ndimage

import daisy_worker
from smooth_data import RAW, RAW_BEGIN, SIGMA, SMOOTHED, interior_slices


def main():
    raw = zarr.open_array(str(RAW), mode="r")
    smoothed = zarr.open_array(str(SMOOTHED), mode="r+")

    def process(block):
        read = tuple(
            slice(b - o, e - o)
            for b, e, o in zip(block.read_roi.offset, block.read_roi.end, RAW_BEGIN)
        )
        filtered = ndimage.gaussian_filter(raw[read], sigma=SIGMA)
        # The write ROI inside the read ROI.
        inner = tuple(
            slice(w - r, w - r + s)
            for w, r, s in zip(block.write_roi.offset, block.read_roi.offset, block.write_roi.shape)
        )
        smoothed[interior_slices(block.write_roi)] = filtered[inner]

    daisy_worker.serve(process)


if __name__ == "__main__":
    main()
