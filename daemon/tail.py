"""Follow a growing text file line by line, with memory bounded whatever it holds.

Both the plain-file kernel log (the testbed's stand-in for /dev/kmsg) and the jobs'
output files are followed the same way: poll, read what was appended in fixed chunks,
hand back complete lines. A file may not exist yet, may be truncated (`> file`) or
replaced (rotation); a line may be megabytes long (a progress bar without newlines, a
tensor printed whole). None of that may cost more than one chunk and one capped line.

`LineTailer` keeps its position as (inode, offset of the first byte not yet handed back
as a line), so a caller can persist it and resume exactly there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CHUNK_BYTES = 256 * 1024
MAX_LINE_BYTES = 64 * 1024
MAX_BYTES_PER_POLL = 4 * 1024 * 1024


@dataclass
class TailStats:
    """What the tailer had to do beyond reading lines; published as counters."""

    lines: int = 0
    truncated_lines: int = 0  # lines longer than the cap: handed back cut to the cap
    file_truncations: int = 0
    rotations: int = 0
    reopen_errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class TailPosition:
    """Where a tailer stands: enough to resume after a restart."""

    inode: int | None = None
    offset: int = 0


@dataclass
class LineTailer:
    """Hands back the complete lines appended to `path` since the last poll.

    A line longer than `max_line` is handed back once, cut to `max_line` bytes, and the
    rest of it up to its newline is dropped as it streams past (counted).
    """

    path: Path
    position: TailPosition = field(default_factory=TailPosition)
    max_line: int = MAX_LINE_BYTES
    chunk: int = CHUNK_BYTES
    max_bytes_per_poll: int = MAX_BYTES_PER_POLL
    stats: TailStats = field(default_factory=TailStats)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._fh = None
        self._partial = bytearray()
        self._dropping = False  # inside an over-long line, dropping to its newline
        self._read_offset = self.position.offset

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "LineTailer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> list[str]:
        """The complete lines appended since the last call (decoded, newline removed)."""
        lines: list[str] = []
        self._follow(self._split, lines)
        return lines

    def poll_blocks(self) -> list[bytes]:
        """What `poll` returns, undecoded and unsplit: runs of complete lines, each run
        ending in a newline, so a caller can search a whole run at once and split only
        the lines it wants. A line longer than `max_line` comes once, cut to `max_line`,
        as a run of its own; a run may hold a complete line of up to `chunk + max_line`
        bytes (its start was the partial line of the chunk before): cut what you keep."""
        blocks: list[bytes] = []
        self._follow(self._cut, blocks)
        return blocks

    def _follow(self, take, out: list) -> None:
        if self._fh is None and not self._open():
            return
        self._check_truncated()
        self._drain(take, out)
        if self._rotated():
            self._drain(take, out)  # the rest of the old file first, then the new one
            self.close()
            self.stats.rotations += 1
            self.position = TailPosition()
            self._reset_buffer(0)
            if self._open():
                self._drain(take, out)

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (kept open across polls; closed in close())
        except FileNotFoundError:
            return False
        except OSError:
            self.stats.reopen_errors += 1
            return False
        st = os.fstat(fh.fileno())
        if self.position.inode == st.st_ino and st.st_size >= self.position.offset:
            fh.seek(self.position.offset)
            self._reset_buffer(self.position.offset)
        else:
            if self.position.inode is not None:
                self.stats.rotations += 1
            self.position = TailPosition(inode=st.st_ino, offset=0)
            self._reset_buffer(0)
        self._fh = fh
        return True

    def _reset_buffer(self, offset: int) -> None:
        self._partial.clear()
        self._dropping = False
        self._read_offset = offset

    def _check_truncated(self) -> None:
        size = os.fstat(self._fh.fileno()).st_size
        if size < self._read_offset:
            self.stats.file_truncations += 1
            self._fh.seek(0)
            self.position.offset = 0
            self._reset_buffer(0)

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # deleted or mid-rotation: keep reading the open file
        return st.st_ino != os.fstat(self._fh.fileno()).st_ino

    def _drain(self, take, out: list) -> None:
        budget = self.max_bytes_per_poll
        while budget > 0:
            data = self._fh.read(min(self.chunk, budget))
            if not data:
                return
            budget -= len(data)
            self._read_offset += len(data)
            take(data, out)

    def _cut(self, data: bytes, blocks: list[bytes]) -> None:
        start = 0
        if self._dropping:
            newline = data.find(b"\n")
            if newline < 0:
                self.position.offset = self._read_offset
                return
            self._dropping = False
            start = newline + 1
        last = data.rfind(b"\n", start)
        if last >= 0:
            run = data[start:last + 1]
            if self._partial:
                run = bytes(self._partial) + run
                self._partial.clear()
            blocks.append(run)
            self.stats.lines += run.count(b"\n")
            start = last + 1
        self._partial += data[start:]
        if len(self._partial) > self.max_line:
            blocks.append(bytes(self._partial[:self.max_line]) + b"\n")
            self.stats.lines += 1
            self.stats.truncated_lines += 1
            self._partial.clear()
            self._dropping = True
        if self._dropping:
            self.position.offset = self._read_offset
        else:
            self.position.offset = self._read_offset - len(self._partial)

    def _split(self, data: bytes, lines: list[str]) -> None:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if not self._dropping:
                room = self.max_line - len(self._partial)
                if len(piece) > room:
                    self._partial += piece[:room]
                    self._emit(lines, truncated=True)
                    self._dropping = True
                else:
                    self._partial += piece
            if newline < 0:
                break
            if self._dropping:
                self._dropping = False
            else:
                self._emit(lines, truncated=False)
            start = newline + 1
        if self._dropping:
            self.position.offset = self._read_offset
        elif start > 0:  # a line ended in this chunk: the partial one starts after it
            self.position.offset = self._read_offset - (len(data) - start)

    def _emit(self, lines: list[str], truncated: bool) -> None:
        text = bytes(self._partial).decode("utf-8", errors="replace").rstrip("\r")
        self._partial.clear()
        lines.append(text)
        self.stats.lines += 1
        if truncated:
            self.stats.truncated_lines += 1
