"""An append-only CSV of results keyed by some of its columns, for long runs that resume after an interruption.

``ResumableCSV(path, columns, key_columns)`` reads what an earlier run left in ``path`` (rows whose key is
already there are "done"), then appends new rows as they are computed. A run killed while writing can leave
a last line without its newline; that line is not trusted (a cut-off number still parses as a number), it is
cut from the file before anything is appended, so the row is simply computed again. Rows with the wrong
number of fields are ignored; when a key occurs twice, the later row wins. A row whose key is already there is
not written again (a resumed group of rows may recompute some that were finished). Values are kept as the
strings written (write floats with ``repr`` to keep every digit).

``stop_after=N`` (the scripts' ``--stop-after N``) ends the run on purpose once N new rows are on disk, by raising
:class:`StopRequested`: a deterministic interruption, to split a long run over several sessions and to test that a
resumed run ends with the rows of an uninterrupted one.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ResumableCSV", "StopRequested"]


class StopRequested(Exception):
    """``stop_after`` new rows are written: the run stops here, as if interrupted, and resumes when run again."""


def _drop_partial_last_line(path: Path) -> None:
    """Cut a trailing line that has no newline (an interrupted write) from ``path``."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        keep, chunk_end = 0, size
        while chunk_end > 0:  # find the last newline, reading backwards in chunks
            start = max(0, chunk_end - 65536)
            fh.seek(start)
            chunk = fh.read(chunk_end - start)
            pos = chunk.rfind(b"\n")
            if pos >= 0:
                keep = start + pos + 1
                break
            chunk_end = start
    os.truncate(path, keep)


class ResumableCSV:
    """Rows of ``columns`` keyed by ``key_columns`` (a prefix or any subset of the columns)."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], key_columns: Sequence[str],
                 stop_after: int | None = None) -> None:
        self.path = Path(path)
        self.stop_after = stop_after
        self.written = 0  # rows appended by this instance
        self.columns = list(columns)
        missing = [c for c in key_columns if c not in self.columns]
        if missing:
            raise ValueError(f"key columns {missing} are not among the columns {self.columns}")
        self._key_index = [self.columns.index(c) for c in key_columns]
        self.rows: dict[tuple[str, ...], list[str]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            _drop_partial_last_line(self.path)
            self._read()
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self._fh = self.path.open("a", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        if new:
            self._writer.writerow(self.columns)
            self._fh.flush()

    def _read(self) -> None:
        with self.path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:  # an empty file
                return
            if header != self.columns:
                raise ValueError(f"{self.path} has the columns {header}, expected {self.columns}; "
                                 "write to another file or delete it")
            for row in reader:
                if len(row) == len(self.columns):
                    self.rows[self.key(row)] = row

    def key(self, row: Sequence[object]) -> tuple[str, ...]:
        """The key of a full row (values in column order)."""
        return tuple(str(row[i]) for i in self._key_index)

    def __contains__(self, key: Sequence[object]) -> bool:
        return tuple(str(v) for v in key) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, str]]:
        """The rows present, as dicts of strings (one per key)."""
        return (dict(zip(self.columns, row, strict=True)) for row in self.rows.values())

    def add(self, row: Sequence[object]) -> None:
        """Append one row (written at the next :meth:`flush`) unless its key is already there."""
        if len(row) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} values ({self.columns}), got {len(row)}")
        values = [str(v) for v in row]
        key = self.key(values)
        if key in self.rows:
            return
        self.rows[key] = values
        self._writer.writerow(values)
        self.written += 1
        if self.stop_after is not None and self.written >= self.stop_after:
            self.flush()
            raise StopRequested(f"stopped after {self.written} new rows in {self.path} (--stop-after); run the same "
                                "command again to resume")

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> ResumableCSV:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
