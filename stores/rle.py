"""COCO compressed RLE strings, checked and encoded many at a time with numpy (no per-mask Python loop).

A COCO RLE of an H x W mask lists alternating run lengths (background first) over the column-major pixels; the
string form (pycocotools' rleToString) stores each run as 5-bit groups offset by 48, with bit 0x20 meaning "more
groups follow" and, from the fourth run on, the difference to the run two places before.
"""

import numpy as np
import pyarrow as pa

_MAX_GROUPS = (
    7  # 35 bits: more than any image's pixel count; longer groups are garbage, and would overflow int64
)


def _string_buffers(counts) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 N+1, bytes uint8) of a sequence of str; rejects nulls by returning offsets only for strings."""
    arr = (
        counts if isinstance(counts, pa.Array | pa.ChunkedArray) else pa.array(counts, type=pa.large_string())
    )
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    if arr.null_count:
        raise ValueError(f"row {_first_null(arr)}: counts is null")
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def _segmented_cumsum(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Cumulative sum of `values` restarting whenever `segment` changes (segments are contiguous)."""
    if len(values) == 0:
        return values
    cs = np.cumsum(values)
    starts = np.r_[True, segment[1:] != segment[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(values)), 0))
    return cs - (cs[first] - values[first])


def decode_runs(counts) -> tuple[np.ndarray, np.ndarray]:
    """Decode N COCO RLE strings to run lengths.

    Returns (runs int64 R, owner int64 R): every run of every string, in order, and the row it belongs to.
    Raises ValueError("row i: ...") for the first malformed string.
    """
    offsets, chars = _string_buffers(counts)
    n = len(offsets) - 1
    if n == 0:  # an empty shard is legal: a rerun may find nothing to keep
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = np.diff(offsets)
    if n and (lengths == 0).any():
        raise ValueError(f"row {int(np.flatnonzero(lengths == 0)[0])}: counts is empty")
    c = chars.astype(np.int32) - 48  # int32 halves the memory traffic of these char-length arrays
    bad = (c < 0) | (c > 63)
    if bad.any():
        row = int(np.searchsorted(offsets[1:], np.flatnonzero(bad)[0], side="right"))
        raise ValueError(f"row {row}: counts has a character outside the COCO RLE alphabet")
    last = ~((c & 0x20).astype(bool))  # the last 5-bit group of a run
    if n:
        unfinished = ~last[offsets[1:] - 1]
        if unfinished.any():
            raise ValueError(f"row {int(np.flatnonzero(unfinished)[0])}: counts ends in the middle of a run")
    ends = np.flatnonzero(last)
    starts = np.r_[0, ends[:-1] + 1]
    run_of_char = np.cumsum(last, dtype=np.int64) - last
    group = (np.arange(len(c), dtype=np.int64) - starts[run_of_char]).astype(np.int32)
    runs_per_row = np.add.reduceat(last.astype(np.int64), offsets[:-1]) if n else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(n, dtype=np.int64), runs_per_row)
    if len(group) and group.max() >= _MAX_GROUPS:
        row = int(owner[run_of_char[int(np.argmax(group >= _MAX_GROUPS))]])
        raise ValueError(f"row {row}: counts has a run longer than {_MAX_GROUPS} groups")
    contribution = (c & 0x1F).astype(np.int64) << (5 * group)
    raw = np.add.reduceat(contribution, starts) if len(starts) else np.zeros(0, np.int64)
    negative = (c[ends] & 0x10).astype(bool)
    raw = raw - np.where(negative, np.left_shift(np.int64(1), 5 * (group[ends].astype(np.int64) + 1)), 0)
    # From the fourth run on the string holds a delta to the run two places before: undo it per row and parity.
    first_run = np.r_[0, np.cumsum(np.bincount(owner, minlength=n))[:-1]] if n else np.zeros(0, np.int64)
    index = np.arange(len(raw)) - first_run[owner]
    runs = raw.copy()
    for parity, begin in ((1, 1), (0, 2)):
        sel = np.flatnonzero((index % 2 == parity) & (index >= begin))
        runs[sel] = _segmented_cumsum(raw[sel], owner[sel])
    return runs, owner


def check_counts(counts, height: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Validate N RLE strings against their mask sizes; return the area (foreground pixels) of each, int64 N.

    Raises ValueError("row i: ...") naming the first row whose string is malformed or whose runs do not add up
    to height * width.
    """
    height = np.asarray(height, dtype=np.int64)
    width = np.asarray(width, dtype=np.int64)
    n = len(height)
    runs, owner = decode_runs(counts)
    if (runs < 0).any():
        raise ValueError(f"row {int(owner[np.argmax(runs < 0)])}: counts decodes to a negative run length")
    total = np.bincount(owner, weights=runs, minlength=n).astype(np.int64)
    first_run = np.r_[0, np.cumsum(np.bincount(owner, minlength=n))[:-1]] if n else np.zeros(0, np.int64)
    odd = (np.arange(len(runs)) - first_run[owner]) % 2 == 1
    area = np.bincount(owner[odd], weights=runs[odd], minlength=n).astype(np.int64)
    wrong = total != height * width
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise ValueError(
            f"row {i}: counts covers {total[i]} pixels but the mask is {height[i]} x {width[i]} = "
            f"{height[i] * width[i]}"
        )
    return area


def encode_runs(runs: np.ndarray, owner: np.ndarray, n: int) -> pa.LargeStringArray:
    """Encode run lengths (grouped by row `owner`, rows 0..n-1 in order) to N COCO RLE strings, vectorised.

    The inverse of decode_runs; byte-identical to pycocotools' rleToString.
    """
    runs = np.asarray(runs, dtype=np.int64)
    owner = np.asarray(owner, dtype=np.int64)
    per_row = np.bincount(owner, minlength=n)
    first_run = np.r_[0, np.cumsum(per_row)[:-1]]
    index = np.arange(len(runs)) - first_run[owner]
    x = runs.copy()
    delta = index > 2
    prev = np.flatnonzero(delta) - 2
    x[delta] = runs[delta] - runs[prev]
    groups = np.zeros(len(x), dtype=np.int64)  # 5-bit groups needed: x must fit in 5k bits, two's complement
    for k in range(_MAX_GROUPS, 0, -1):
        fits = (x >= -(1 << (5 * k - 1))) & (x < (1 << (5 * k - 1)))
        groups[fits] = k
    rep = np.repeat(np.arange(len(x)), groups)
    group_start = np.r_[0, np.cumsum(groups)[:-1]]
    j = np.arange(len(rep)) - group_start[rep]
    chars = ((x[rep] >> (5 * j)) & 0x1F) | np.where(j < groups[rep] - 1, 0x20, 0)
    chars = (chars + 48).astype(np.uint8)
    chars_per_row = np.bincount(owner, weights=groups, minlength=n).astype(np.int64)
    offsets = np.r_[0, np.cumsum(chars_per_row)].astype(np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
