"""The kernel-log source: follow /dev/kmsg (or a plain file) and report what it says.

The kernel is where a GPU falling off the bus, a double-bit ECC error or a dying disk is
said first. This module reads those lines and turns them into findings, and nothing
more: the patterns (data/kmsg_patterns.yaml, applied by `patterns.PatternSet`) say what
a line means, the policy decides what to do.

Three layers, the I/O kept thin:

- Parsing (pure): `parse_record` reads one /dev/kmsg record
  (`prio,seq,usec,flags[,...];message` plus continuation lines ` KEY=value`),
  `parse_line` one line of a plain file (a kmsg record, a dmesg line with or without a
  `[ 123.456789]` prefix, or bare text). Both return a `KmsgRecord` or None, and count
  each skipped input by reason in `ParseStats`.
- Reading: `read_device_records(read, ...)` drains a non-blocking /dev/kmsg descriptor,
  one record per read, a buffer that fits the largest record; EPIPE (the ring buffer
  overran under us) becomes a `KmsgGap` and reading goes on. `read` is any callable
  `read(n) -> bytes` raising BlockingIOError when drained, so tests drive it.
  A plain file is followed with `tail.LineTailer` (appends, truncation, rotation).
- `KmsgFollower` joins them with the cursor: the boot id and the last sequence number
  (and, for a file, its inode and byte offset), kept atomically in a JSON cursor file.
  On open it skips the records of this boot it already saw, or starts a new boot from
  its beginning, so a restarted agent neither replays old lines nor misses new ones.
  `KmsgSource` adds the patterns and the storm-proof `patterns.Coalescer` and hands out
  findings.

Use from an asyncio loop: for /dev/kmsg, `loop.add_reader(source.fileno(), on_ready)`
where `on_ready` calls `source.poll(time.time())`; for a plain file `fileno()` is None
and the loop calls `poll` on a timer. Call `commit()` once the findings are handled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from pitstop.daemon.patterns import (KMSG_PATTERNS, Coalescer, GpuMap, PatternSet,
                                     findings_from_lines)
from pitstop.daemon.scan import LiteralScanner
from pitstop.daemon.tail import LineTailer, TailPosition
from pitstop.fsutil import write_json_atomic
from pitstop.model import Finding

log = logging.getLogger(__name__)

DEV_KMSG = "/dev/kmsg"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# A record is at most ~8 KiB of text plus its dictionary (the kernel's
# CONSOLE_EXT_LOG_MAX); a read with a smaller buffer fails with EINVAL.
RECORD_BUFFER = 32 * 1024
MAX_RECORDS_PER_POLL = 10_000
CURSOR_VERSION = 1

_KMSG_HEADER = re.compile(r"^(\d+),(\d+),(\d+),([^,;]*)(?:,[^;]*)?;")
_LOOKS_LIKE_HEADER = re.compile(r"^\d+,\d+[,;]")
_DMESG_PREFIX = re.compile(r"^\[\s*(\d+)\.(\d{1,9})\]\s?")


@dataclass
class KmsgRecord:
    """One kernel-log record: the message and what the kernel said about it."""

    message: str
    priority: int | None = None  # syslog: facility << 3 | level
    seq: int | None = None
    usec: int | None = None  # since boot
    flags: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # continuation KEY=value lines

    @property
    def level(self) -> int | None:
        return None if self.priority is None else self.priority & 7


@dataclass(frozen=True)
class KmsgGap:
    """Records were lost: the ring buffer overran, or turned over while we were away."""

    reason: str
    lost: int | None = None  # how many, when the sequence numbers tell


@dataclass
class ParseStats:
    """What the parser saw: records made, inputs skipped (by reason)."""

    records: int = 0
    skipped: Counter = field(default_factory=Counter)
    replayed: int = 0  # records of this boot already seen before a restart
    passed_over: int = 0  # well-formed lines no pattern can match, never parsed further

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def to_dict(self) -> dict[str, object]:
        return {"records": self.records, "skipped": dict(self.skipped), "replayed": self.replayed,
                "passed_over": self.passed_over}


def _is_binary(text: str) -> bool:
    """NUL bytes, or mostly bytes that were not UTF-8: not a kernel message."""
    return "\x00" in text or text.count("\ufffd") * 4 > len(text)


def _continuations(lines: list[str], record: KmsgRecord, stats: ParseStats) -> None:
    for extra in lines:
        if not extra:
            continue
        key, sep, value = extra[1:].partition("=")
        if extra[0] == " " and sep and key:
            record.fields[key] = value
        else:
            stats.skip("bad_continuation")


def parse_record(raw: str, stats: ParseStats) -> KmsgRecord | None:
    """One /dev/kmsg record (`prio,seq,usec,flags;message` + ` KEY=value` lines) or None."""
    head, *rest = raw.rstrip("\n").split("\n")
    match = _KMSG_HEADER.match(head)
    if match is None:
        stats.skip("malformed_header")
        return None
    prio, seq, usec, flags = match.groups()
    record = KmsgRecord(message=head[match.end():], priority=int(prio), seq=int(seq),
                        usec=int(usec), flags=flags)
    _continuations(rest, record, stats)
    stats.records += 1
    return record


def parse_line(line: str, stats: ParseStats) -> KmsgRecord | None:
    """One line of a plain kernel-log file, in any of the forms it comes in, or None."""
    line = line.rstrip("\r\n")
    if not line.strip():
        stats.skip("empty")
        return None
    if _is_binary(line):
        stats.skip("binary")
        return None
    if _LOOKS_LIKE_HEADER.match(line):
        return parse_record(line, stats)
    usec = None
    prefix = _DMESG_PREFIX.match(line)
    if prefix:
        usec = int(prefix.group(1)) * 1_000_000 + int(prefix.group(2).ljust(6, "0")[:6])
        line = line[prefix.end():]
    stats.records += 1
    return KmsgRecord(message=line, usec=usec)


KmsgItem = Union[KmsgRecord, KmsgGap]


def read_device_records(read: Callable[[int], bytes], stats: ParseStats,
                        max_records: int = MAX_RECORDS_PER_POLL,
                        buffer_size: int = RECORD_BUFFER) -> list[KmsgItem]:
    """Drain what a non-blocking /dev/kmsg descriptor holds now: one record per read.

    Stops when `read` raises BlockingIOError (drained), returns b"" (end), or after
    `max_records` (the descriptor stays readable; the event loop calls again).
    """
    items: list[KmsgItem] = []
    while len(items) < max_records:
        try:
            data = read(buffer_size)
        except BlockingIOError:
            break
        except BrokenPipeError:
            items.append(KmsgGap("kernel log ring buffer overran: records were lost"))
            continue
        except InterruptedError:
            continue
        if not data:
            break
        record = parse_record(data.decode("utf-8", errors="replace"), stats)
        if record is not None:
            items.append(record)
    return items


def read_boot_id(path: Path | str = BOOT_ID_PATH) -> str:
    """This boot's id, "" when it cannot be read (then every start is a new boot)."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


@dataclass
class KmsgCursor:
    """How far the agent read: persisted after the findings were handled."""

    boot_id: str = ""
    seq: int | None = None  # the last record's sequence number this boot
    path: str = ""
    inode: int | None = None  # plain file only
    offset: int = 0  # plain file only: bytes consumed

    def to_dict(self) -> dict[str, object]:
        return {"version": CURSOR_VERSION, "boot_id": self.boot_id, "seq": self.seq,
                "path": self.path, "inode": self.inode, "offset": self.offset}

    @classmethod
    def load(cls, path: Path | str | None) -> "KmsgCursor":
        """The saved cursor; an empty one (with a warning) when it is missing or bad."""
        if path is None:
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            log.warning("kmsg cursor %s unreadable (%s): starting from the beginning of this boot",
                        path, err)
            return cls()
        try:
            if not isinstance(data, dict) or data.get("version") != CURSOR_VERSION:
                raise TypeError("not a version 1 cursor")
            seq, inode = data.get("seq"), data.get("inode")
            return cls(boot_id=str(data.get("boot_id", "")),
                       seq=None if seq is None else int(seq), path=str(data.get("path", "")),
                       inode=None if inode is None else int(inode),
                       offset=max(0, int(data.get("offset", 0))))
        except (TypeError, ValueError) as err:
            log.warning("kmsg cursor %s malformed (%s): starting from the beginning of this boot",
                        path, err)
            return cls()

    def save(self, path: Path | str) -> None:
        write_json_atomic(path, self.to_dict())


class KmsgFollower:
    """Reads new kernel-log records from /dev/kmsg or a plain file, resuming at a cursor.

    `mode` is "device" (a character device: /dev/kmsg), "file", or "auto" (by what
    `path` is). `read` replaces os.read on the device's descriptor (tests).
    """

    def __init__(self, path: Path | str = DEV_KMSG, *, cursor_path: Path | str | None = None,
                 boot_id_path: Path | str = BOOT_ID_PATH, mode: str = "auto",
                 read: Callable[[int], bytes] | None = None,
                 interesting: Callable[[str], bool] | None = None,
                 scanner: LiteralScanner | None = None) -> None:
        self.path = Path(path)
        self.cursor_path = Path(cursor_path) if cursor_path is not None else None
        self.boot_id_path = Path(boot_id_path)
        if mode == "auto":
            mode = "device" if read is not None or _is_char_device(self.path) else "file"
        if mode not in ("device", "file"):
            raise ValueError(f"kmsg mode must be device, file or auto, not {mode!r}")
        self.mode = mode
        self.stats = ParseStats()
        # A plain file's lines that no pattern can match only move the cursor: most lines
        # of a busy kernel log are skipped before they are parsed into records.
        self.interesting = interesting
        # Better still, with a scanner a plain file is searched a block at a time and
        # only the lines holding a pattern's literal are split off and parsed.
        self.scanner = scanner
        self._read = read
        self._fd: int | None = None
        self._tailer: LineTailer | None = None
        self.boot_id = ""
        self._opened = False
        self._last_seq: int | None = None  # device: the running filter and gap detector
        self._skip_through: int | None = None  # file: the cursor's seq, replays to skip
        self._newest_seq: int | None = None  # file: the newest seq read (saved)
        self._first_read = True
        self._saved: KmsgCursor | None = None

    def open(self) -> "KmsgFollower":
        cursor = KmsgCursor.load(self.cursor_path)
        self.boot_id = read_boot_id(self.boot_id_path)
        same_boot = bool(self.boot_id) and cursor.boot_id == self.boot_id
        seq = cursor.seq if same_boot else None
        self._opened = True
        if self.mode == "device":
            self._last_seq = seq
            if self._read is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                fd = self._fd
                self._read = lambda size: os.read(fd, size)
        else:
            self._skip_through = self._newest_seq = seq
            position = TailPosition()
            if cursor.path == str(self.path):
                position = TailPosition(inode=cursor.inode, offset=cursor.offset)
            self._tailer = LineTailer(self.path, position=position)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tailer is not None:
            self._tailer.close()

    def __enter__(self) -> "KmsgFollower":
        return self if self._opened else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int | None:
        """The descriptor to wait on (device mode), None for a plain file (poll it)."""
        return self._fd

    def check_boot(self) -> bool:
        """Re-read the boot id; True when it changed (the testbed "reboots" a node so).

        Only a plain file can change boots under a running agent; an unreadable boot-id
        file keeps the boot we know.
        """
        if self.mode == "device":
            return False
        try:
            st = os.stat(self.boot_id_path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp is not None and stamp == getattr(self, "_boot_stamp", None):
            return False  # a stat is cheap; reading the file every pass is not
        self._boot_stamp = stamp
        current = read_boot_id(self.boot_id_path)
        if not current or current == self.boot_id:
            return False
        self.boot_id = current
        self._last_seq = None
        self._skip_through = self._newest_seq = None
        return True

    def poll(self) -> list[KmsgItem]:
        """The records (and gaps) that arrived since the last poll."""
        if not self._opened:
            raise RuntimeError("KmsgFollower.poll before open()")
        if self.mode == "device":
            return self._filter_device(read_device_records(self._read, self.stats))
        if self.scanner is not None:
            lines: list[str] = []
            read_before = self._tailer.stats.lines
            for block in self._tailer.poll_blocks():
                lines += self._lines_worth_parsing(block)
            self.stats.passed_over += max(0, self._tailer.stats.lines - read_before - len(lines))
            return self._filter_file(self._group_file_lines(lines, interesting=None))
        return self._filter_file(self._group_file_lines(self._tailer.poll()))

    def cursor(self) -> KmsgCursor:
        cursor = KmsgCursor(boot_id=self.boot_id, path=str(self.path))
        if self.mode == "device":
            cursor.seq = self._last_seq
        else:
            cursor.seq = self._newest_seq
            cursor.inode = self._tailer.position.inode
            cursor.offset = self._tailer.position.offset
        return cursor

    def commit(self) -> None:
        """Persist how far we read (atomically); call after the findings were handled.
        Cheap when nothing was read: the file is written only when the cursor moved."""
        if self.cursor_path is None:
            return
        cursor = self.cursor()
        if cursor != self._saved:
            cursor.save(self.cursor_path)
            self._saved = cursor

    def _filter_device(self, items: list[KmsgItem]) -> list[KmsgItem]:
        kept: list[KmsgItem] = []
        for item in items:
            if isinstance(item, KmsgGap):
                kept.append(item)
                continue
            if self._last_seq is not None and item.seq is not None:
                if item.seq <= self._last_seq:
                    self.stats.replayed += 1
                    continue
                lost = item.seq - self._last_seq - 1
                if lost > 0 and kept and isinstance(kept[-1], KmsgGap) and kept[-1].lost is None:
                    kept[-1] = KmsgGap(kept[-1].reason, lost=lost)  # EPIPE: now we know how many
                elif lost > 0:
                    why = ("the kernel log turned over while the agent was away"
                           if self._first_read else "kernel log records were skipped")
                    kept.append(KmsgGap(why, lost=lost))
            self._first_read = False
            if item.seq is not None:
                self._last_seq = item.seq
            kept.append(item)
        return kept

    def _filter_file(self, records: list[KmsgRecord]) -> list[KmsgItem]:
        kept: list[KmsgItem] = []
        for record in records:
            if record.seq is not None:
                if self._skip_through is not None and record.seq <= self._skip_through:
                    self.stats.replayed += 1
                    continue
                self._newest_seq = max(record.seq, self._newest_seq or 0)
            kept.append(record)
        return kept

    def _lines_worth_parsing(self, block: bytes) -> list[str]:
        """The lines of a run that hold a pattern's literal, with their ` KEY=value`
        continuation lines; the rest are only counted (by the caller) and move the
        cursor (by the seq of the run's last record)."""
        limit = self._tailer.max_line
        lines: list[str] = []
        taken_to = -1
        for start, end in self.scanner.line_spans(block):
            if start <= taken_to:
                continue  # a continuation line already taken with its record
            lines.append(_decode(block[start:min(end, start + limit)]))
            position = end + 1
            while block.startswith(b" ", position):  # the record's continuation lines
                stop = block.find(b"\n", position)
                stop = len(block) if stop < 0 else stop
                lines.append(_decode(block[position:min(stop, position + limit)]))
                position = stop + 1
            taken_to = position - 1
        seq = _last_seq(block)
        # A seq at or below the cursor's is still a replay of what was read: it moves nothing.
        if seq is not None and (self._skip_through is None or seq > self._skip_through):
            self._newest_seq = max(seq, self._newest_seq or 0)
        return lines

    def _group_file_lines(self, lines: list[str], interesting: Callable[[str], bool] | None | bool = True
                          ) -> list[KmsgRecord]:
        """Records from plain lines; ` KEY=value` lines belong to the record before."""
        records: list[KmsgRecord] = []
        if interesting is True:
            interesting = self.interesting
        for line in lines:
            if interesting is not None and not line.startswith(" ") and not interesting(line):
                self._pass_over(line)
                continue
            if line.startswith(" ") and "=" in line and not _DMESG_PREFIX.match(line):
                if records:
                    _continuations([line], records[-1], self.stats)
                else:
                    self.stats.skip("orphan_continuation")
                continue
            record = parse_line(line, self.stats)
            if record is not None:
                records.append(record)
        return records

    def _pass_over(self, line: str) -> None:
        """A line no pattern wants: classify it cheaply and keep its sequence number for
        the cursor, without building a record (most lines of a busy log end here)."""
        if _is_binary(line):
            self.stats.skip("binary")
            return
        head = line.split(",", 3)
        if not (len(head) >= 3 and head[0].isdigit()):
            self.stats.passed_over += 1  # a dmesg or bare line: no sequence number
            return
        usec = head[2].split(";", 1)[0]
        if not (head[1].isdigit() and usec.isdigit() and ";" in line):
            self.stats.skip("malformed_header")
            return
        self.stats.passed_over += 1
        seq = int(head[1])
        if self._skip_through is not None and seq <= self._skip_through:
            self.stats.replayed += 1
        else:
            self._newest_seq = max(seq, self._newest_seq or 0)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def _last_seq(block: bytes) -> int | None:
    """The sequence number of the last /dev/kmsg-format record of a run (continuation
    lines and lines in other formats carry none: look a few lines back)."""
    end = len(block) - 1 if block.endswith(b"\n") else len(block)
    for _ in range(8):
        if end <= 0:
            return None
        start = block.rfind(b"\n", 0, end) + 1
        line = block[start:end]
        end = start - 1
        if line.startswith(b" "):
            continue
        head = line.split(b",", 2)
        if len(head) >= 3 and head[0].isdigit() and head[1].isdigit() and b";" in line:
            return int(head[1])
        return None
    return None


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


class KmsgSource:
    """The kernel-log source: records in, findings out (one per storm episode).

    `quiet_s` (see `patterns.Coalescer`): a key that repeats within this many seconds of
    its last line is the same storm; None makes every key strictly once per boot.
    """

    def __init__(self, node: str, follower: KmsgFollower, *, patterns: PatternSet | None = None,
                 gpus: GpuMap | None = None, quiet_s: float | None = 60.0) -> None:
        self.node = node
        self.follower = follower
        self.patterns = patterns or PatternSet.load(KMSG_PATTERNS)
        if follower.interesting is None:
            follower.interesting = self.patterns.may_match
        if follower.scanner is None:
            follower.scanner = self.patterns.scanner
        self.gpus = gpus or GpuMap()
        self.coalescer = Coalescer(quiet_s=quiet_s)
        self._boot_id: str | None = None

    def open(self) -> "KmsgSource":
        self.follower.open()
        self._boot_id = self.follower.boot_id
        return self

    def close(self) -> None:
        self.follower.close()

    def fileno(self) -> int | None:
        return self.follower.fileno()

    @property
    def boot_id(self) -> str:
        return self.follower.boot_id

    def poll(self, now: float) -> list[Finding]:
        """The findings in what arrived since the last poll."""
        if self.follower.check_boot() or self._boot_id != self.follower.boot_id:
            self.coalescer.reset()
            self._boot_id = self.follower.boot_id
        return self.findings(self.follower.poll(), now)

    def findings(self, items: list[KmsgItem], now: float) -> list[Finding]:
        """The pure part: records and gaps in, the findings that start an episode out."""
        found: list[Finding] = []
        lines: list[str] = []
        for item in items:
            if isinstance(item, KmsgGap):
                found.extend(findings_from_lines(lines, self.patterns, node=self.node,
                                                 source="kmsg", now=now,
                                                 coalescer=self.coalescer, gpus=self.gpus))
                lines = []
                found.extend(self._gap_finding(item, now))
            else:
                lines.append(item.message)
        found.extend(findings_from_lines(lines, self.patterns, node=self.node, source="kmsg",
                                         now=now, coalescer=self.coalescer, gpus=self.gpus))
        return found

    def _gap_finding(self, gap: KmsgGap, now: float) -> list[Finding]:
        lost = f" ({gap.lost} records)" if gap.lost else ""
        finding = Finding(node=self.node, signal="kmsg_gap", message=f"{gap.reason}{lost}",
                          evidence=f"{gap.reason}{lost}", time=now, source="kmsg")
        return [finding] if self.coalescer.offer(finding, now, ("",) + finding.key) else []

    def commit(self) -> None:
        self.follower.commit()
