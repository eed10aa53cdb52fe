"""Turn a caller's masks DataFrame into a checked Arrow table of the masks schema.

Every row is validated before anything is written (RLE well formed and covering height x width pixels, area and
bbox consistent, source known), so a bad shard raises BadRecordError naming the row and leaves the store as it was.
"""

import hashlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
from pycocotools import mask as mask_utils

from .errors import BadRecordError
from .rle import check_counts
from .schemas import MASKS

SOURCES = ("auto", "model", "human")
REQUIRED = ("image_id", "counts", "height", "width", "source")


def mask_id_for(image_id: str, round: int, stage: str, source: str, counts: str) -> str:
    """Deterministic id of a mask: the same mask written again by the same round/stage/source gets the same id."""
    key = f"{image_id}|{round}|{stage}|{source}|{counts}".encode()
    return hashlib.blake2b(key, digest_size=10).hexdigest()


def _row_name(df: pd.DataFrame, i: int, what: str) -> str:
    ident = df["mask_id"].iloc[i] if "mask_id" in df and pd.notna(df["mask_id"].iloc[i]) else None
    parts = [f"{what} row {i}"]
    if ident is not None:
        parts.append(f"mask_id={ident}")
    parts.append(f"image_id={df['image_id'].iloc[i]}")
    return " ".join(parts)


def _listify(values) -> list:
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def _column(df: pd.DataFrame, name: str, type_: pa.DataType, default=None) -> pa.Array:
    if name not in df:
        return pa.array([default] * len(df), type=type_)
    values = df[name]
    if pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_):
        values = _listify(values)
    elif pa.types.is_timestamp(type_):
        values = pd.to_datetime(values, utc=True)
    try:
        return pa.array(values, type=type_, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise BadRecordError(f"masks column {name!r} cannot be stored as {type_}: {e}") from e


def prepare_masks(df: pd.DataFrame, round: int, stage: str, what: str = "masks") -> pa.Table:
    """Validate `df` and return it as a pa.Table with the masks schema (round/stage are partition keys)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        raise BadRecordError(f"{what}: missing required columns {missing}")
    unknown = sorted(set(df.columns) - set(MASKS.names) - {"round", "stage"})
    if unknown:
        raise BadRecordError(f"{what}: unknown columns {unknown}")
    df = df.reset_index(drop=True)
    for name in REQUIRED:
        nulls = df[name].isna().to_numpy()
        if nulls.any():
            raise BadRecordError(f"{_row_name(df, int(np.flatnonzero(nulls)[0]), what)}: {name} is null")
    bad_source = ~df["source"].isin(SOURCES).to_numpy()
    if bad_source.any():
        i = int(np.flatnonzero(bad_source)[0])
        raise BadRecordError(f"{_row_name(df, i, what)}: source={df['source'].iloc[i]!r} not in {SOURCES}")
    height = df["height"].to_numpy(dtype=np.int64)
    width = df["width"].to_numpy(dtype=np.int64)
    if ((height <= 0) | (width <= 0)).any():
        i = int(np.flatnonzero((height <= 0) | (width <= 0))[0])
        raise BadRecordError(f"{_row_name(df, i, what)}: height/width must be positive")
    counts = pa.array(df["counts"].astype(str).to_numpy(dtype=object), type=pa.large_string())
    try:
        area = check_counts(counts, height, width)
    except ValueError as e:
        row = int(str(e).split(":")[0].split()[1])
        raise BadRecordError(f"{_row_name(df, row, what)}: {str(e).split(': ', 1)[1]}") from e
    if "area" in df and df["area"].notna().any():
        given = df["area"].to_numpy(dtype=np.float64)
        wrong = ~np.isnan(given) & (given != area)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise BadRecordError(
                f"{_row_name(df, i, what)}: area={given[i]:g} but counts holds {area[i]} pixels"
            )
    ids = df["mask_id"].copy() if "mask_id" in df else pd.Series([None] * len(df), dtype=object)
    absent = ids.isna().to_numpy()
    if absent.any():
        ids = ids.astype(object)
        image_ids, sources, strings = (df[c].tolist() for c in ("image_id", "source", "counts"))
        ids[absent] = [
            mask_id_for(image_ids[i], round, stage, sources[i], strings[i]) for i in np.flatnonzero(absent)
        ]
    dup = ids.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise BadRecordError(
            f"{what} row {i}: duplicate mask_id={ids.iat[i]} in one shard (pass distinct mask_id)"
        )
    if "bbox" in df and df["bbox"].notna().all():
        bbox = _column(df, "bbox", MASKS.field("bbox").type)
    else:  # pycocotools computes it from the (already validated) runs
        rles = [
            {"size": [int(h), int(w)], "counts": c}
            for h, w, c in zip(height, width, df["counts"], strict=True)
        ]
        boxes = mask_utils.toBbox(rles) if rles else np.zeros((0, 4))
        bbox = pa.array(boxes.tolist(), type=MASKS.field("bbox").type)
    now = datetime.now(UTC)
    columns = {
        "mask_id": pa.array(ids.astype(str).tolist(), type=pa.string()),
        "counts": counts.cast(pa.string()),
        "area": pa.array(area, type=pa.int64()),
        "bbox": bbox,
        "created_at": _column(df, "created_at", MASKS.field("created_at").type, now),
        "deleted": _column(df, "deleted", pa.bool_(), False).fill_null(False),
    }
    arrays = [columns[f.name] if f.name in columns else _column(df, f.name, f.type) for f in MASKS]
    created = arrays[MASKS.get_field_index("created_at")]
    if created.null_count:
        arrays[MASKS.get_field_index("created_at")] = created.fill_null(pa.scalar(now, created.type))
    return pa.Table.from_arrays(arrays, schema=MASKS)
