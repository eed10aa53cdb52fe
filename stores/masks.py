"""Turn a caller's masks DataFrame into a checked Arrow table of the masks schema.

Every row is validated before anything is written (RLE well formed and covering height x width pixels, a given
area consistent with it, source known), so a bad shard raises BadRecordError naming the row and leaves the store as
it was. What follows from the mask itself is derived here, where a caller leaves it out: its area and box from the
RLE, its id from what it is (``mask_id_for``); the stages (tasks.records) leave all three to the store.

Boxes and points are accepted in the table's flat form (bbox_x ... bbox_h, crop_box_x ... crop_box_h,
point_coords_json), which the stages write, or in the list form of SA-1B's JSON and of masks schema version 1
(what Store.upgrade_masks rewrites): `bbox` and `crop_box` as [x, y, w, h] per row, `point_coords` as [[x, y], ...]
per row.
"""

import hashlib
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from .errors import BadRecordError
from .rle import check_counts
from .schemas import BBOX, CROP_BOX, MASKS

SOURCES = ("auto", "model", "human")
REQUIRED = ("image_id", "counts", "height", "width", "source")
LIST_FORMS = {"bbox": BBOX, "crop_box": CROP_BOX, "point_coords": ["point_coords_json"]}


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
    if pa.types.is_timestamp(type_):
        values = pd.to_datetime(values, utc=True)
    try:
        return pa.array(values, type=type_, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise BadRecordError(f"masks column {name!r} cannot be stored as {type_}: {e}") from e


def _boxes(df: pd.DataFrame, name: str, what: str) -> np.ndarray:
    """N x 4 float64 x, y, w, h of box `name` (bbox or crop_box) in either form; NaN rows where it is missing."""
    flat = LIST_FORMS[name]
    given = [c for c in flat if c in df]
    if name in df and given:
        raise BadRecordError(f"{what}: give {name!r} or {flat}, not both")
    if given:
        if len(given) < len(flat):
            raise BadRecordError(f"{what}: {name} needs all of {flat}, got {given}")
        try:
            return df[flat].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as e:
            raise BadRecordError(f"{what}: {flat} must be numbers: {e}") from e
    out = np.full((len(df), 4), np.nan)
    if name not in df:
        return out
    try:
        lists = pa.array(_listify(df[name]), type=pa.list_(pa.float64()), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise BadRecordError(f"{what}: column {name!r} must hold [x, y, w, h] lists: {e}") from e
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)  # NaN where null; [] is missing too
    wrong = ~np.isnan(lengths) & (lengths != 4) & (lengths != 0)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise BadRecordError(f"{_row_name(df, i, what)}: {name}={lists[i]} is not [x, y, w, h]")
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    out[lengths == 4] = values.reshape(-1, 4)
    return out


def _points_json(df: pd.DataFrame, what: str) -> pa.Array:
    """point_coords_json: each row's prompt points (point_coords [[x, y], ...] or its JSON) as JSON text."""
    if "point_coords" in df and "point_coords_json" in df:
        raise BadRecordError(f"{what}: give 'point_coords' or 'point_coords_json', not both")
    if "point_coords_json" in df:
        points = []
        for i, text in enumerate(df["point_coords_json"]):
            if not isinstance(text, str):
                if text is None or text is pd.NA or (isinstance(text, float) and np.isnan(text)):
                    points.append(None)
                    continue
                raise BadRecordError(f"{_row_name(df, i, what)}: point_coords_json={text!r} is not JSON text")
            try:
                points.append(json.loads(text))
            except ValueError as e:
                raise BadRecordError(f"{_row_name(df, i, what)}: point_coords_json is not JSON: {e}") from e
    elif "point_coords" in df:
        points = _listify(df["point_coords"])
    else:
        return pa.nulls(len(df), pa.string())
    try:
        lists = pa.array(points, type=pa.list_(pa.list_(pa.float64())), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise BadRecordError(f"{what}: point_coords must hold [[x, y], ...] lists of numbers: {e}") from e
    inner = pc.list_flatten(lists)
    row_of_point = pc.list_parent_indices(lists).to_numpy()
    coords = pc.list_flatten(inner).to_numpy(zero_copy_only=False)
    bad = pc.list_value_length(inner).to_numpy(zero_copy_only=False) != 2
    if not bad.any():
        bad = ~np.isfinite(coords.reshape(-1, 2)).all(axis=1)
    if bad.any():
        i = int(row_of_point[np.flatnonzero(bad)[0]])
        raise BadRecordError(f"{_row_name(df, i, what)}: point_coords={lists[i]} are not finite [x, y] pairs")
    return pa.array([None if p is None else json.dumps(p) for p in lists.to_pylist()], type=pa.string())


def prepare_masks(df: pd.DataFrame, round: int, stage: str, what: str = "masks") -> pa.Table:
    """Validate `df` and return it as a pa.Table with the masks schema (round/stage are partition keys)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        raise BadRecordError(f"{what}: missing required columns {missing}")
    unknown = sorted(set(df.columns) - set(MASKS.names) - set(LIST_FORMS) - {"round", "stage"})
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
    bbox = _boxes(df, "bbox", what)
    unboxed = np.flatnonzero(np.isnan(bbox).any(axis=1))
    if len(unboxed):  # pycocotools computes them from the (already validated) runs
        strings = df["counts"].tolist()
        rles = [{"size": [int(height[i]), int(width[i])], "counts": strings[i]} for i in unboxed]
        bbox[unboxed] = mask_utils.toBbox(rles)
    crop_box = _boxes(df, "crop_box", what)
    now = datetime.now(UTC)
    columns = {
        "mask_id": pa.array(ids.astype(str).tolist(), type=pa.string()),
        "counts": counts.cast(pa.string()),
        "area": pa.array(area, type=pa.int64()),
        **{name: pa.array(bbox[:, k]) for k, name in enumerate(BBOX)},
        **{name: pa.array(crop_box[:, k], from_pandas=True) for k, name in enumerate(CROP_BOX)},  # NaN: null
        "point_coords_json": _points_json(df, what),
        "created_at": _column(df, "created_at", MASKS.field("created_at").type, now),
        "deleted": _column(df, "deleted", pa.bool_(), False).fill_null(False),
    }
    arrays = [columns[f.name] if f.name in columns else _column(df, f.name, f.type) for f in MASKS]
    created = arrays[MASKS.get_field_index("created_at")]
    if created.null_count:
        arrays[MASKS.get_field_index("created_at")] = created.fill_null(pa.scalar(now, created.type))
    return pa.Table.from_arrays(arrays, schema=MASKS)
