"""The kept files of a corpus build, on disk while the build runs (so memory does not grow with the corpus).

Rows (text, project, path, sha256) go to an Arrow IPC stream in batches of ``batch_rows`` rows or
``batch_bytes`` bytes of text; MinHash signatures go to a flat uint32 file beside it, read back as
a ``np.memmap``. Reading streams the batches back one at a time (no memory map, so the pages read
do not stay in the process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

ROW_SCHEMA = pa.schema([(name, pa.string()) for name in ("text", "project", "path", "sha256")])


class RowSpool:
    """Append-only store of kept rows and their signatures in the folder ``root``."""

    def __init__(
        self, root: Path, num_perm: int, batch_rows: int = 1024, batch_bytes: int = 16 << 20
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.num_perm = num_perm
        self.batch_rows = batch_rows  # rows per Arrow record batch (at most)
        self.batch_bytes = batch_bytes  # characters of text per record batch (at most, after one file)
        self.rows_path, self.sigs_path = self.root / "rows.arrow", self.root / "signatures.u32"
        self._sink = pa.OSFile(str(self.rows_path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, ROW_SCHEMA)
        self._sigs = open(self.sigs_path, "wb")  # noqa: SIM115 (closed in close())
        self._pending: list[tuple[str, str, str, str]] = []
        self._pending_chars = 0
        self.num_rows = 0

    def add(self, text: str, project: str, path: str, sha256: str, signature: np.ndarray) -> None:
        self._pending.append((text, project, path, sha256))
        self._pending_chars += len(text)
        self._sigs.write(np.ascontiguousarray(signature, dtype=np.uint32).tobytes())
        self.num_rows += 1
        if len(self._pending) >= self.batch_rows or self._pending_chars >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            columns = [pa.array(list(col), pa.string()) for col in zip(*self._pending, strict=True)]
            self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=ROW_SCHEMA))
            self._pending, self._pending_chars = [], 0

    def close(self) -> None:
        """Write what is pending and close the files (reading needs a closed spool)."""
        if self._sigs.closed:
            return
        self._flush()
        self._writer.close()
        self._sink.close()
        self._sigs.close()

    def signatures(self) -> np.ndarray:
        """(num_rows, num_perm) uint32 signatures, memory-mapped read-only."""
        if self.num_rows == 0:
            return np.zeros((0, self.num_perm), np.uint32)
        return np.memmap(self.sigs_path, dtype=np.uint32, mode="r", shape=(self.num_rows, self.num_perm))

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows in the order they were added, one record batch at a time."""
        with pa.OSFile(str(self.rows_path), "rb") as source:
            yield from pa.ipc.open_stream(source)
