"""Write a ``datasets`` dataset directory row batch by row batch, in the layout ``save_to_disk`` gives.

``Dataset.save_to_disk`` needs the whole dataset as one Arrow table (in memory or memory-mapped,
which for a corpus means its resident pages grow with the text). :class:`DatasetWriter` takes
row batches as they come and writes them with the same writer ``save_to_disk`` uses
(``datasets.arrow_writer.ArrowWriter``) into ``data-XXXXX-of-YYYYY.arrow`` shards, then
``dataset_info.json`` (``DatasetInfo.write_to_directory``) and ``state.json``, so
``datasets.load_from_disk`` reads the result like any saved dataset. Memory is one batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

STATE_FILE = (
    "state.json"  # what save_to_disk writes beside the shards (datasets.config.DATASET_STATE_JSON_FILENAME)
)


def shard_sizes(num_rows: int, num_bytes: int, max_shard_bytes: int) -> list[int]:
    """Rows per shard as ``save_to_disk`` cuts them: ``num_bytes // max_shard_bytes + 1`` contiguous shards
    of (nearly) equal row counts (never more shards than rows, and at least one)."""
    shards = max(1, min(num_bytes // max_shard_bytes + 1, num_rows))
    div, mod = divmod(num_rows, shards)
    return [div + (1 if i < mod else 0) for i in range(shards)]


class DatasetWriter:
    """Writes ``sum(sizes)`` rows, given in batches, as ``len(sizes)`` shards into the directory ``out``."""

    def __init__(self, out: Path, features: datasets.Features, sizes: list[int]) -> None:
        self.out = Path(out)
        self.features = features
        self.sizes = sizes
        self._shard = -1
        self._left = 0  # rows still to write into the current shard
        self._writer: ArrowWriter | None = None
        self.rows_written = 0

    def _name(self, i: int) -> str:
        return f"data-{i:05d}-of-{len(self.sizes):05d}.arrow"

    def _next_shard(self) -> None:
        self._close_shard()
        self._shard += 1
        self._left = self.sizes[self._shard]
        self._writer = ArrowWriter(features=self.features, path=str(self.out / self._name(self._shard)))

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
            self._writer = None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Append rows (columns as in ``features``, in order)."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self.rows_written + table.num_rows > sum(self.sizes):
            raise ValueError(f"more rows than the {sum(self.sizes)} announced")
        while table.num_rows:
            if self._left == 0:
                self._next_shard()
            part = table.slice(0, self._left)
            assert self._writer is not None
            self._writer.write_table(part)
            self._left -= part.num_rows
            self.rows_written += part.num_rows
            table = table.slice(part.num_rows)

    def close(self, fingerprint: str) -> None:
        """Finish the last shard and write dataset_info.json and state.json (as ``save_to_disk`` does).

        ``fingerprint`` (hex) becomes the dataset's ``_fingerprint``, which datasets keys its caches on.
        """
        if self.rows_written != sum(self.sizes):
            raise ValueError(f"{self.rows_written} rows written, {sum(self.sizes)} announced")
        while self._shard + 1 < len(self.sizes):  # empty shards (only when no rows at all)
            self._next_shard()
        self._close_shard()
        datasets.DatasetInfo(features=self.features).write_to_directory(str(self.out))
        state = {
            "_data_files": [{"filename": self._name(i)} for i in range(len(self.sizes))],
            "_fingerprint": fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.out / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
