"""The small tables: models (a registry of checkpoints), rounds (one summary row per round and stage), and keyed
state rows (e.g. the Label Studio sync cursor). One file per key, so rewriting a key replaces its row.

A mixin of Store: it uses Store's _write, _read_all, path and fs.
"""

import hashlib
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import BadRecordError
from .fsio import check_key, read_parquet_file
from .schemas import MODELS, ROUNDS, STATE


def _now() -> datetime:
    return datetime.now(UTC)


class KeyedTables:
    def _row_table(self, schema: pa.Schema, row: dict, json_columns: tuple[str, ...], what: str) -> pa.Table:
        unknown = sorted(set(row) - set(schema.names))
        if unknown:
            raise BadRecordError(f"{what}: unknown fields {unknown}")
        values = dict(row)
        for name in json_columns:
            if values.get(name) is not None and not isinstance(values[name], str):
                values[name] = json.dumps(values[name], sort_keys=True, default=str)
        if "created_at" in schema.names and values.get("created_at") is None:
            values["created_at"] = _now()
        try:
            return pa.Table.from_pylist([{f.name: values.get(f.name) for f in schema}], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise BadRecordError(f"{what}: {e}") from e

    def _read_rows(
        self, table_name: str, directory: str, json_columns: tuple[str, ...], schema
    ) -> pd.DataFrame:
        table = self._read_all(table_name, directory)
        df = (table if table is not None else schema.empty_table()).to_pandas()
        for name in json_columns:
            df[name] = [json.loads(v) if isinstance(v, str) else v for v in df[name]]
        return df

    def write_model(self, row: dict) -> str:
        """Register a model (model_version, parent_version, config dict, checkpoint_uri, trained_on_round, metrics)."""
        mv = check_key("model_version", row.get("model_version"))
        table = self._row_table(MODELS, row, ("config", "metrics"), f"model {mv}")
        return self._write("models", ["models", f"{mv}.parquet"], table)

    def models(self) -> pd.DataFrame:
        return self._read_rows("models", "models", ("config", "metrics"), MODELS)

    def write_round(self, row: dict) -> str:
        """Record a round/stage summary; rewriting the same (round, stage) replaces it."""
        if not isinstance(row.get("round"), int | np.integer):
            raise BadRecordError(f"round row: round={row.get('round')!r} must be an int")
        stage = check_key("stage", row["stage"]) if row.get("stage") is not None else "all"
        table = self._row_table(ROUNDS, row, ("metrics",), f"round {row['round']}")
        return self._write("rounds", ["rounds", f"round-{int(row['round'])}-{stage}.parquet"], table)

    def rounds(self) -> pd.DataFrame:
        df = self._read_rows("rounds", "rounds", ("metrics",), ROUNDS)
        return df.sort_values(["round", "stage"], kind="stable").reset_index(drop=True)

    def write_state(self, table: str, key: str, row: dict) -> str:
        """Upsert one row of a small keyed table (e.g. write_state("labelstudio_sync", project, {...}))."""
        name = check_key("table", table)
        if not isinstance(key, str) or not key:
            raise BadRecordError(f"state {name}: key must be a non-empty str, got {key!r}")
        try:
            text = json.dumps(row, sort_keys=True, default=str)
        except TypeError as e:
            raise BadRecordError(f"state {name} key {key!r}: row is not JSON-serialisable: {e}") from e
        file_key = hashlib.sha1(key.encode()).hexdigest()[:24]
        data = pa.table(
            {"key": [key], "row": [text], "updated_at": pa.array([_now()], STATE.field("updated_at").type)}
        )
        return self._write("state", ["state", name, f"{file_key}.parquet"], data.cast(STATE))

    def read_state(self, table: str, key: str | None = None):
        """One row as a dict (None if absent) when `key` is given, else all rows as a DataFrame with a key column."""
        name = check_key("table", table)
        if key is not None:
            path = self.path("state", name, f"{hashlib.sha1(key.encode()).hexdigest()[:24]}.parquet")
            try:
                data = read_parquet_file(self.fs, path, "state")
            except FileNotFoundError:
                return None
            return json.loads(data["row"][0].as_py())
        data = self._read_all("state", f"state/{name}")
        if data is None:
            return pd.DataFrame({"key": pd.Series([], dtype=str)})
        rows = [
            {"key": k, **json.loads(r)}
            for k, r in zip(data["key"].to_pylist(), data["row"].to_pylist(), strict=True)
        ]
        return pd.DataFrame(rows)
