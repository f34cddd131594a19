"""An append-only CSV of results keyed by some of its columns, for long runs that resume after an interruption.

``ResumableCSV(path, columns, key_columns)`` reads what an earlier run left in ``path`` (rows whose key is
already there are "done"), then appends new rows as they are computed. A run killed while writing can leave
a last line without its newline; that line is not trusted (a cut-off number still parses as a number), it is
cut from the file before anything is appended, so the row is simply computed again. Rows with the wrong
number of fields are ignored; when a key occurs twice, the later row wins. A row whose key is already there is
not written again (a resumed group of rows may recompute some that were finished). Values are kept as the
strings written (write floats with ``repr`` to keep every digit).

Several writers (processes, or instances in one process) may share a file: every write happens under an
exclusive ``fcntl.flock`` on the file, after reading the rows the others appended since (:meth:`refresh`), so a
row another writer has already written is not written twice. Rows added are written at :meth:`flush` (and at
:meth:`close`), each flush as one ``write`` call.

``stop_after=N`` (the scripts' ``--stop-after N``) ends the run on purpose once N new rows are on disk, by raising
:class:`StopRequested`: a deterministic interruption, to split a long run over several sessions and to test that a
resumed run ends with the rows of an uninterrupted one.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

__all__ = ["ResumableCSV", "StopRequested"]


class StopRequested(Exception):
    """``stop_after`` new rows are written: the run stops here, as if interrupted, and resumes when run again."""


def _csv_line(values: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ResumableCSV:
    """Rows of ``columns`` keyed by ``key_columns`` (a prefix or any subset of the columns)."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], key_columns: Sequence[str],
                 stop_after: int | None = None) -> None:
        self.path = Path(path)
        self.stop_after = stop_after
        self.written = 0  # rows added by this instance
        self.columns = list(columns)
        missing = [c for c in key_columns if c not in self.columns]
        if missing:
            raise ValueError(f"key columns {missing} are not among the columns {self.columns}")
        self.key_columns = list(key_columns)
        self._key_index = [self.columns.index(c) for c in key_columns]
        self._header = _csv_line(self.columns)
        self.rows: dict[tuple[str, ...], list[str]] = {}
        self._on_disk: set[tuple[str, ...]] = set()  # keys read from or written to the file
        self._pending: list[list[str]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._open()
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------------------------------------- file handling

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        self._offset = 0  # bytes of the file parsed so far (always at a line end)
        self._on_disk = set()
        pending = {self.key(row) for row in self._pending}
        self.rows = {key: row for key, row in self.rows.items() if key in pending}

    def _replaced(self) -> bool:
        """Whether the path now names another file than the one open (rewritten by :meth:`rewrite`, or deleted)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock of the file the path names; a cut last line is dropped, the header written."""
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if not self._replaced():
                break
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._open()
        try:
            self._drop_partial_last_line()
            if os.fstat(self._fd).st_size == 0:
                _write_all(self._fd, self._header)
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _drop_partial_last_line(self) -> None:
        """Cut a trailing line that has no newline (an interrupted write); only done under the lock, when no writer
        can be half-way through its (single) write."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        keep, end = 0, size
        while end > 0:  # the last newline, reading backwards in chunks
            start = max(0, end - 65536)
            pos = os.pread(self._fd, end - start, start).rfind(b"\n")
            if pos >= 0:
                keep = start + pos + 1
                break
            end = start
        os.ftruncate(self._fd, keep)

    def _read_new_rows(self) -> None:
        """Parse the complete lines appended since the last read (by this or any other writer)."""
        size = os.fstat(self._fd).st_size
        if size < self._offset:  # rewritten in place: read it all again
            self._offset, self._on_disk = 0, set()
        data = os.pread(self._fd, size - self._offset, self._offset)
        data = data[: data.rfind(b"\n") + 1]
        if not data:
            return
        lines = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        if self._offset == 0:
            header = next(lines, None)
            if header != self.columns:
                raise ValueError(f"{self.path} has the columns {header}, expected {self.columns}; "
                                 "write to another file or delete it")
        for row in lines:
            if len(row) == len(self.columns):
                key = self.key(row)
                self.rows[key] = row
                self._on_disk.add(key)
        self._offset += len(data)

    # -------------------------------------------------------------------------------------------- public interface

    def key(self, row: Sequence[object]) -> tuple[str, ...]:
        """The key of a full row (values in column order)."""
        return tuple(str(row[i]) for i in self._key_index)

    def __contains__(self, key: Sequence[object]) -> bool:
        return tuple(str(v) for v in key) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, str]]:
        """The rows present, as dicts of strings (one per key)."""
        return (dict(zip(self.columns, row, strict=True)) for row in list(self.rows.values()))

    def refresh(self) -> None:
        """Read the rows other writers appended since the last read."""
        with self._locked():
            self._read_new_rows()

    def add(self, row: Sequence[object]) -> None:
        """Add one row (written at the next :meth:`flush`) unless its key is already there."""
        if len(row) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} values ({self.columns}), got {len(row)}")
        values = [str(v) for v in row]
        key = self.key(values)
        if key in self.rows:
            return
        self.rows[key] = values
        self._pending.append(values)
        self.written += 1
        if self.stop_after is not None and self.written >= self.stop_after:
            self.flush()
            raise StopRequested(f"stopped after {self.written} new rows in {self.path} (--stop-after); run the same "
                                "command again to resume")

    def flush(self) -> None:
        """Write the rows added since the last flush, except those another writer has written meanwhile."""
        if not self._pending or self._fd < 0:
            return
        with self._locked():
            self._read_new_rows()
            fresh = [row for row in self._pending if self.key(row) not in self._on_disk]
            for row in fresh:
                self.rows[self.key(row)] = row
                self._on_disk.add(self.key(row))
            data = b"".join(_csv_line(row) for row in fresh)
            _write_all(self._fd, data)
            self._offset += len(data)
        self._pending = []

    def rewrite(self, keep: Callable[[dict[str, str]], bool]) -> int:
        """Replace the file by the rows ``keep`` accepts (written to a temporary file, then renamed, under the lock:
        other writers notice the new file and read it again). Returns the number of rows dropped."""
        self.flush()
        with self._locked():
            self._read_new_rows()
            kept = {key: row for key, row in self.rows.items() if keep(dict(zip(self.columns, row, strict=True)))}
            dropped = len(self.rows) - len(kept)
            if dropped:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(self._header + b"".join(_csv_line(row) for row in kept.values()))
                os.replace(tmp, self.path)
        if dropped:
            self.rows = {}
            self._open()
            with self._locked():
                self._read_new_rows()
        return dropped

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> ResumableCSV:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
