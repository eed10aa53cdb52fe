"""Store: every artifact of the engine as Parquet tables under one fsspec root URL.

Layout (each directory is a Parquet dataset `pandas.read_parquet(root + "/<table>")` reads as it is):
    images/batch-<hash of ids>.parquet
    embeddings/model_version=<v>/<image_id>.parquet       one row: fetch one embedding without the others
    masks/round=<r>/stage=<s>/shard-<shard>.parquet       one file per written shard
    models/<model_version>.parquet
    rounds/round-<r>-<stage>.parquet
    state/<table>/<hash of key>.parquet                   small keyed tables (e.g. the Label Studio cursor)
    calibration/<model_version>.parquet                   a version's automatic candidates scored against
                                                          ground truth (tasks.calibrate)
    calibration/<model_version>@<crop layout>.parquet     the same for a generator with crop layers
    checkpoints/<model_version>.pt                        the weights of the versions the engine trained
File names come from what a file holds, so a rerun overwrites its own output instead of adding rows.
"""

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import BadRecordError, CorruptFileError, SchemaMismatchError, StoreNotFoundError
from .fsio import (
    atomic_write,
    check_key,
    join_inside,
    list_data_files,
    open_filesystem,
    read_parquet_file,
    table_bytes,
)
from .masks import mask_id_for, prepare_masks
from .registry import KeyedTables
from .schemas import (
    BBOX,
    CALIBRATION,
    EMBEDDINGS,
    IMAGES,
    MASKS,
    MASKS_PARTITION,
    SCHEMA_VERSIONS,
    check_file_schema,
    file_version,
    with_metadata,
)

_EMBED_DTYPES = ("float32", "float16")
# The top-level folders a store may hold; a folder with none of them is not a store (see Store(create=False)).
TABLES = ("images", "embeddings", "masks", "models", "rounds", "state", "calibration", "checkpoints")
_FLOAT16_MAX = 65504.0
_MASKS_V1_LISTS = ("bbox", "crop_box", "point_coords")  # list columns of masks schema version 1
_MASK_FILE_OPTIONS = dict(
    use_dictionary=["image_id", "source", "phrase", "model_version", "annotator"],
    # lz4, not zstd: unpacking zstd was about half of the CPU time of a plain pandas.read_parquet of one
    # round (250,000 masks: 0.46 s with lz4, 0.88 s with zstd; files 1.6x bigger). counts not at all: its
    # COCO RLE strings are already compact (lz4 packs them 1.3x) and unpacking them was still half of such
    # a read (0.33 s -> 0.17 s on 2 busy cores); files 1.26x bigger (250,000 masks: 130 MB -> 163 MB)
    compression={name: "none" if name == "counts" else "lz4" for name in MASKS.names},
)


def _masks_v2_as_v3(table: pa.Table) -> pa.Table:
    """A masks schema version 2 table in version 3's form: the same columns and values, and a null `phrase`."""
    phrase = pa.nulls(len(table), MASKS.field("phrase").type)
    return table.append_column("phrase", phrase).select(MASKS.names).cast(MASKS)


def _now() -> datetime:
    return datetime.now(UTC)


def _partition_values(path: str, base: str) -> dict[str, str]:
    rel = path[len(base) + 1 :].split("/")[:-1]
    return dict(part.split("=", 1) for part in rel if "=" in part)


class Store(KeyedTables):
    """Parquet tables under `url` (file:///abs, a plain path, memory://name, s3://bucket/prefix)."""

    def __init__(self, url: str, storage_options: dict | None = None, create: bool = True):
        """With ``create`` (writers), the root folder is made if missing. Without it (readers), a URL whose root
        is missing or holds none of the store's tables raises StoreNotFoundError and nothing is created, so a
        mistyped URL is an error instead of an empty store."""
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = open_filesystem(url, self.storage_options, create=create)
        self._sizes = None  # (images files, their size tables, merged sizes): see _image_sizes
        if not create:
            self._check_exists()

    def _check_exists(self) -> None:
        self.fs.invalidate_cache(self.root)  # another process may have created it since this fs listed
        if not self.fs.isdir(self.root):
            what = "a file, not a folder" if self.fs.isfile(self.root) else "no such folder"
            raise StoreNotFoundError(f"no store at {self.url}: {what}")
        if not any(self.fs.isdir(self.path(table)) for table in TABLES):
            raise StoreNotFoundError(f"no store at {self.url}: no images, models or masks table in it")

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, *parts: str) -> str:
        """Filesystem path of `parts` under the root; PathEscapeError if it would leave the root."""
        return join_inside(self.root, *parts)

    def table_url(self, table: str) -> str:
        """URL of a table's dataset, for pandas.read_parquet(url, storage_options=store.storage_options)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{self.path(check_key('table', table))}".replace(":////", ":///")

    # ---- generic file access -------------------------------------------------------------------------------------
    def _write(self, table_name: str, rel: list[str], table: pa.Table, **options) -> str:
        table = table.replace_schema_metadata(with_metadata(table.schema, table_name).metadata)
        return atomic_write(self.fs, self.path(*rel), table_bytes(table, **options))

    def _read_all(
        self, table_name: str, directory: str, files: list[str] | None = None, columns=None
    ) -> pa.Table:
        base = self.path(directory)
        files = list_data_files(self.fs, base) if files is None else files
        if not files:
            return None

        def read(path: str) -> pa.Table:
            table = read_parquet_file(self.fs, path, table_name, columns)
            for key, value in _partition_values(path, base).items():
                type_ = MASKS_PARTITION.field(key).type if key in MASKS_PARTITION.names else pa.string()
                table = table.append_column(key, pa.array([value] * len(table)).cast(type_))
            return table

        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            tables = list(pool.map(read, files))
        return pa.concat_tables(tables, promote_options="permissive")

    # ---- images --------------------------------------------------------------------------------------------------
    def write_images(self, df: pd.DataFrame) -> int:
        """Add images (columns image_id, uri, width, height[, sha256, split, external_id]); return how many were new.

        Idempotent by image_id: ids already stored are skipped, so rerunning an ingest adds nothing.
        """
        missing = [c for c in ("image_id", "uri", "width", "height") if c not in df]
        if missing:
            raise BadRecordError(f"images: missing required columns {missing}")
        df = df.drop_duplicates("image_id", keep="first").reset_index(drop=True)
        for i, image_id in enumerate(df["image_id"]):
            check_key(f"images row {i} image_id", image_id)
        bad = (df["width"].to_numpy() <= 0) | (df["height"].to_numpy() <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BadRecordError(
                f"images row {i} image_id={df['image_id'].iat[i]}: width/height must be positive"
            )
        df = df[~df["image_id"].isin(self._image_sizes().index)]
        if df.empty:
            return 0
        now = _now()
        cols = {}
        for f in IMAGES:
            if f.name in df:
                values = pd.to_datetime(df[f.name], utc=True) if pa.types.is_timestamp(f.type) else df[f.name]
                cols[f.name] = pa.array(values, type=f.type, from_pandas=True)
            else:
                cols[f.name] = pa.array([now if f.name == "added_at" else None] * len(df), type=f.type)
        key = hashlib.sha1("\n".join(sorted(df["image_id"])).encode()).hexdigest()[:20]
        self._write("images", ["images", f"batch-{key}.parquet"], pa.table(cols, schema=IMAGES))
        return len(df)

    def images(self) -> pd.DataFrame:
        """All images, one row per image_id (the first write wins)."""
        table = self._read_all("images", "images")
        if table is None:
            return IMAGES.empty_table().to_pandas()
        df = table.to_pandas().sort_values("added_at", kind="stable")
        return df.drop_duplicates("image_id", keep="first").reset_index(drop=True)

    def _image_sizes(self) -> pd.DataFrame:
        """height, width indexed by image_id of every stored image (the first write wins, as in images()).

        Reads only the images files it has not read before: a file never changes once written (its name is
        the hash of ids that were new, and write_images skips known ids), so checking each masks shard
        against the images (and each ingest batch for known ids) costs one listing, not a read of the table.
        """
        files = list_data_files(self.fs, self.path("images"))
        if self._sizes is not None and self._sizes[0] == files:
            return self._sizes[2]
        seen = self._sizes[1] if self._sizes is not None else {}
        columns = ["image_id", "height", "width", "added_at"]
        parts = {
            p: seen[p] if p in seen else read_parquet_file(self.fs, p, "images", columns).to_pandas()
            for p in files
        }
        if parts:
            merged = pd.concat(parts.values()).sort_values("added_at", kind="stable")
            merged = merged.drop_duplicates("image_id").set_index("image_id")[["height", "width"]]
        else:
            merged = pd.DataFrame({"height": [], "width": []}, index=pd.Index([], name="image_id"))
        self._sizes = (files, parts, merged)
        return merged

    # ---- embeddings ----------------------------------------------------------------------------------------------
    def _embedding_path(self, image_id: str, model_version: str) -> str:
        mv = check_key("model_version", model_version)
        return self.path("embeddings", f"model_version={mv}", f"{check_key('image_id', image_id)}.parquet")

    def put_embedding(self, image_id: str, model_version: str, array, dtype: str = "float32") -> str:
        """Store one image embedding (C x H x W, e.g. 256 x 64 x 64) as float32 or float16.

        float16 halves the bytes; its rounding error is at most 2**-11 (4.9e-4) of each value's magnitude for
        |x| >= 6.1e-5 and at most 3e-8 absolute below that, so the absolute error is at most max|x| * 2**-11.
        Measured on a 256 x 64 x 64 heavy-tailed unit-scale tensor (max |x| 48.6): max absolute error 1.25e-2,
        max relative error 4.88e-4 (tests/stores/test_embeddings_and_rle.py).
        Values beyond float16's range (|x| > 65504) are refused rather than turned into inf.
        """
        if dtype not in _EMBED_DTYPES:
            raise ValueError(f"dtype={dtype!r} not in {_EMBED_DTYPES}")
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3:
            raise ValueError(f"embedding of image_id={image_id}: expected C x H x W, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"embedding of image_id={image_id}: contains NaN or inf")
        if dtype == "float16" and np.abs(array).max(initial=0) > _FLOAT16_MAX:
            raise ValueError(
                f"embedding of image_id={image_id}: values exceed float16 range, store as float32"
            )
        path = self._embedding_path(image_id, model_version)
        data = np.ascontiguousarray(array.astype("<f2" if dtype == "float16" else "<f4")).tobytes()
        table = pa.table(
            {
                "image_id": [image_id],
                "shape": pa.array([list(array.shape)], type=pa.list_(pa.int32())),
                "dtype": [dtype],
                "data": pa.array([data], type=pa.binary()),
                "created_at": pa.array([_now()], type=EMBEDDINGS.field("created_at").type),
            },
            schema=EMBEDDINGS,
        )
        rel = path[len(self.root) + 1 :].split("/")
        return self._write("embeddings", rel, table, compression_level=1)

    def get_embedding(self, image_id: str, model_version: str) -> np.ndarray:
        """The stored embedding as float32 C x H x W; KeyError if absent."""
        path = self._embedding_path(image_id, model_version)
        try:
            table = read_parquet_file(self.fs, path, "embeddings")
        except FileNotFoundError:
            raise KeyError(f"no embedding for image_id={image_id} model_version={model_version}") from None
        row = table.to_pylist()[0]
        np_dtype = "<f2" if row["dtype"] == "float16" else "<f4"
        try:
            return np.frombuffer(row["data"], dtype=np_dtype).reshape(row["shape"]).astype(np.float32)
        except ValueError as e:
            raise CorruptFileError(f"{path}: embedding bytes do not match shape {row['shape']}") from e

    def has_embedding(self, image_id: str, model_version: str) -> bool:
        return self.fs.exists(self._embedding_path(image_id, model_version))

    def embedded_image_ids(self, model_version: str) -> set[str]:
        """image_ids that have an embedding for `model_version` (a listing; no file is read)."""
        base = self.path("embeddings", f"model_version={check_key('model_version', model_version)}")
        return {p.rsplit("/", 1)[1][: -len(".parquet")] for p in list_data_files(self.fs, base)}

    # ---- calibration and checkpoints: one file per model version ---------------------------------------------------
    def _calibration_rel(self, model_version: str, layout: str = "") -> list[str]:
        # "@" is no key character, so no version's plain file can be another's layout file
        name = check_key("model_version", model_version)
        if layout:
            name += "@" + check_key("crop layout", layout)
        return ["calibration", f"{name}.parquet"]

    def write_calibration(self, model_version: str, candidates: pd.DataFrame, layout: str = "") -> str:
        """Publish the calibration candidates of ``model_version`` (the columns of schemas.CALIBRATION) atomically,
        replacing any earlier ones whole; return the file's URL. ``layout``: the crops of the generator that made
        them (tasks.thresholds.crop_layout; "" for the whole image alone), kept apart."""
        missing = [name for name in CALIBRATION.names if name not in candidates]
        if missing:
            raise BadRecordError(f"calibration of {model_version!r}: no columns {missing}")
        table = pa.Table.from_pandas(candidates[CALIBRATION.names], schema=CALIBRATION, preserve_index=False)
        return self.fs.unstrip_protocol(
            self._write("calibration", self._calibration_rel(model_version, layout), table)
        )

    def has_calibration(self, model_version: str, layout: str = "") -> bool:
        return self.fs.exists(self.path(*self._calibration_rel(model_version, layout)))

    def calibration(self, model_version: str, layout: str = "") -> pd.DataFrame:
        """The calibration candidates of ``model_version`` (for crop layout ``layout``); KeyError naming it when it
        has none. A file written before calibration files carried a schema stamp (the same columns) is read as
        version 1."""
        path = self.path(*self._calibration_rel(model_version, layout))
        if not self.fs.exists(path):
            where = f" for crop layout {layout!r}" if layout else ""
            raise KeyError(f"model {model_version!r} has no calibration{where} in store {self.url}")
        table = read_parquet_file(self.fs, path, "calibration", check=False)
        if file_version(table.schema) != ("?", "?"):
            check_file_schema(table.schema, "calibration", path)
        return table.to_pandas()

    def write_checkpoint(self, model_version: str, data: bytes) -> str:
        """Publish a trained version's checkpoint bytes atomically; return its URL (the models row's
        checkpoint_uri)."""
        path = self.path("checkpoints", f"{check_key('model_version', model_version)}.pt")
        return self.fs.unstrip_protocol(atomic_write(self.fs, path, data))

    # ---- masks ---------------------------------------------------------------------------------------------------
    def _mask_rel(self, round: int, stage: str, shard) -> list[str]:
        if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
            raise ValueError(f"round={round!r} must be a non-negative int")
        return [
            "masks",
            f"round={int(round)}",
            f"stage={check_key('stage', stage)}",
            f"shard-{check_key('shard', shard)}.parquet",
        ]

    def write_masks(self, df: pd.DataFrame, round: int, stage: str, shard) -> str:
        """Write one shard of masks atomically and return its path.

        Rerunning with the same (round, stage, shard) replaces that shard's rows; different shards may be written
        by different processes at once. Rows are checked first (see stores.masks.prepare_masks) and, for images
        already in the images table, height/width must match the image.
        """
        rel = self._mask_rel(round, stage, shard)
        for name, value in (("round", round), ("stage", stage)):
            if name in df and (df[name].astype(str) != str(value)).any():
                raise BadRecordError(
                    f"masks shard {shard!r}: column {name!r} disagrees with {name}={value!r}"
                )
        table = prepare_masks(
            df.drop(columns=["round", "stage"], errors="ignore"), int(round), stage, f"masks shard {shard!r}"
        )
        sizes = self._image_sizes() if len(table) else None
        if sizes is not None and len(sizes):
            got = table.select(["image_id", "height", "width"]).to_pandas()
            joined = got.merge(
                sizes, left_on="image_id", right_index=True, how="left", suffixes=("", "_image")
            )
            wrong = joined["height_image"].notna() & (
                (joined["height"] != joined["height_image"]) | (joined["width"] != joined["width_image"])
            )
            if wrong.any():
                i = int(np.flatnonzero(wrong.to_numpy())[0])
                r = joined.iloc[i]
                raise BadRecordError(
                    f"masks shard {shard!r} row {i} image_id={r['image_id']}: mask is {r['height']} x {r['width']} "
                    f"but the image is {int(r['height_image'])} x {int(r['width_image'])}"
                )
        return self._write("masks", rel, table, **_MASK_FILE_OPTIONS)

    def upgrade_masks(self) -> list[str]:
        """Rewrite every masks file of an older schema version in the current one; return the paths rewritten.

        Rows keep their ids, times and values; only the form changes (version 1 -> 2: the list columns bbox,
        crop_box and point_coords become bbox_x ... bbox_h, crop_box_x ... crop_box_h and point_coords_json;
        version 2 -> 3: a `phrase` column, null in every older row, since no older mask answered a text prompt).
        Each file is replaced atomically under its own name, so a crash leaves every file whole in one version or
        the other and a rerun rewrites only those still old. Run it while no round writes masks: until every
        file is upgraded, Store.masks() refuses the old ones and a plain pandas read of the mixed files fills
        the columns one version lacks with nulls.
        """
        base = self.path("masks")
        current = str(SCHEMA_VERSIONS["masks"])
        upgraded = []
        for path in list_data_files(self.fs, base):
            table = read_parquet_file(self.fs, path, "masks", check=False)
            found_table, version = file_version(table.schema)
            if found_table == "masks" and version == current:
                continue
            if found_table != "masks" or version not in ("1", "2"):
                raise SchemaMismatchError(
                    f"{path}: file holds table {found_table!r} schema version {version!r}, "
                    f"which upgrade_masks cannot turn into masks schema version {current}"
                )
            if version == "2":
                new = _masks_v2_as_v3(table)
            else:
                # Python ints and lists: ids with nulls stay exact, and the list columns keep their list form
                df = table.drop_columns(list(_MASKS_V1_LISTS)).to_pandas(integer_object_nulls=True)
                for name in _MASKS_V1_LISTS:
                    df[name] = table[name].to_pylist()
                part = _partition_values(path, base)
                new = prepare_masks(df, int(part["round"]), part["stage"], f"upgrade of {path}")
            self._write("masks", path[len(self.root) + 1 :].split("/"), new, **_MASK_FILE_OPTIONS)
            upgraded.append(path)
        return upgraded

    def delete_masks(self, mask_ids, round: int, stage: str, shard, annotator: str | None = None) -> str:
        """Withdraw masks without touching their rows: write one tombstone row (deleted=True) superseding each.

        The tombstones form their own shard (round, stage, shard), so a rerun replaces them like any shard.
        """
        ids = [mask_ids] if isinstance(mask_ids, str) else list(mask_ids)
        rows = self.masks(current_only=False)
        rows = rows[rows["mask_id"].isin(ids)].drop_duplicates("mask_id")
        unknown = sorted(set(ids) - set(rows["mask_id"]))
        if unknown:
            raise KeyError(f"no masks with mask_id {unknown}")
        keep = ["image_id", "counts", "height", "width", "area", *BBOX]
        tombstones = rows[keep].assign(
            mask_id=["deleted-" + mask_id_for(m, int(round), stage, "human", "") for m in rows["mask_id"]],
            supersedes=rows["mask_id"].to_numpy(),
            deleted=True,
            source="human",
            annotator=annotator,
        )
        return self.write_masks(tombstones, round, stage, shard)

    def _mask_files(self, round=None, stage=None) -> list[str]:
        base = self.path("masks")
        files = list_data_files(self.fs, base)
        keep = []
        for path in files:
            part = _partition_values(path, base)
            if round is not None and part.get("round") != str(int(round)):
                continue
            if stage is not None and part.get("stage") != stage:
                continue
            keep.append(path)
        return keep

    def masks(
        self,
        round=None,
        stage=None,
        image_id=None,
        source=None,
        current_only: bool = True,
        columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """Masks as a DataFrame (masks schema + round, stage), filtered by any of round/stage/image_id/source.

        image_id and source take one value or a list. current_only drops rows that a newer row supersedes (by its
        `supersedes` column, following chains across all rounds) and tombstones (deleted=True). ``columns``: read
        only these masks columns (and what the filters need), return them with round and stage; a question about
        one column then skips the masks' RLE, most of a shard's bytes.
        """
        read = shown = None
        if columns is not None:
            unknown = sorted(set(columns) - set(MASKS.names) - set(MASKS_PARTITION.names))
            if unknown:
                raise ValueError(
                    f"masks has no columns {unknown}; it has {MASKS.names + MASKS_PARTITION.names}"
                )
            shown = list(dict.fromkeys([c for c in columns if c in MASKS.names] + MASKS_PARTITION.names))
            filtered = [
                name for name, value in (("image_id", image_id), ("source", source)) if value is not None
            ]
            current = ["deleted", "mask_id"] if current_only else []
            read = list(dict.fromkeys([c for c in shown if c in MASKS.names] + filtered + current))
        files = self._mask_files(round, stage)
        if image_id is not None and files:  # skip shards without the image: read their image_id column only
            wanted = pa.array([image_id] if isinstance(image_id, str) else list(image_id), type=pa.string())

            def holds(path: str) -> bool:
                ids = read_parquet_file(self.fs, path, "masks", ["image_id"])["image_id"]
                return bool(pc.any(pc.is_in(ids, value_set=wanted)).as_py())

            with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
                files = [f for f, ok in zip(files, pool.map(holds, files), strict=True) if ok]
        table = self._read_all("masks", "masks", files, columns=read)
        if table is None:
            table = MASKS.empty_table()
            for f in MASKS_PARTITION:
                table = table.append_column(f.name, pa.array([], type=f.type))
            return table.to_pandas() if shown is None else table.select(shown).to_pandas()
        for name, value in (("image_id", image_id), ("source", source)):
            if value is not None:
                values = [value] if isinstance(value, str) else list(value)
                table = table.filter(pc.is_in(table[name], value_set=pa.array(values, type=pa.string())))
        if current_only:
            everything = self._read_all("masks", "masks", columns=["supersedes"])
            superseded = pc.unique(everything["supersedes"].drop_null()) if everything is not None else None
            keep = pc.invert(table["deleted"].fill_null(False))
            if superseded is not None and len(superseded):
                keep = pc.and_(keep, pc.invert(pc.is_in(table["mask_id"], value_set=superseded)))
            table = table.filter(keep)
        return table.to_pandas() if shown is None else table.select(shown).to_pandas()
