"""The kernel-log source: parsing, the /dev/kmsg read loop, following a file, the cursor."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from pitstop.daemon.kmsg import (RECORD_BUFFER, KmsgCursor, KmsgFollower, KmsgGap, KmsgRecord,
                                 KmsgSource, ParseStats, parse_line, parse_record,
                                 read_device_records)
from pitstop.daemon.patterns import GpuMap
from pitstop.waiting import wait_until

XID79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus."
XID48 = ("NVRM: Xid (0000:3b:00): 48, pid=4321, name=python, An uncorrectable double bit error "
         "(DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.")


def wait_for(condition, timeout=10.0, interval=0.01):
    return wait_until(condition, timeout, what="the condition", interval=interval)


# ------------------------------------------------------------------ parsing

def test_parse_record_with_dictionary_lines():
    stats = ParseStats()
    record = parse_record(f"3,1234,5678901,-;{XID79}\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n",
                          stats)
    assert record == KmsgRecord(message=XID79, priority=3, seq=1234, usec=5678901, flags="-",
                                fields={"SUBSYSTEM": "pci", "DEVICE": "+pci:0000:3b:00.0"})
    assert record.level == 3 and stats.records == 1


def test_parse_record_with_a_caller_field_and_semicolons_in_the_message():
    record = parse_record("6,7,8,c,caller=T42;a;b=c\n", ParseStats())
    assert (record.seq, record.flags, record.message) == (7, "c", "a;b=c")


@pytest.mark.parametrize("raw,reason", [
    ("6,7;no usec", "malformed_header"), ("x,1,2,-;msg", "malformed_header"),
    ("6,1,2,-", "malformed_header")])
def test_malformed_records_are_none_and_counted(raw, reason):
    stats = ParseStats()
    assert parse_record(raw, stats) is None
    assert stats.skipped[reason] == 1


@pytest.mark.parametrize("line,message,seq,usec", [
    (f"6,12,345,-;{XID79}", XID79, 12, 345),
    (f"[ 8123.456789] {XID79}", XID79, None, 8123456789),
    (f"[    1.5] {XID79}", XID79, None, 1500000),
    (XID79, XID79, None, None),
    (f"Dec  1 08:00:00 node1 kernel: {XID79}", f"Dec  1 08:00:00 node1 kernel: {XID79}", None, None),
])
def test_parse_plain_lines(line, message, seq, usec):
    record = parse_line(line, ParseStats())
    assert (record.message, record.seq, record.usec) == (message, seq, usec)


@pytest.mark.parametrize("line,reason", [
    ("", "empty"), ("   ", "empty"), ("\x00\x01\x02binary", "binary"),
    ("\ufffd\ufffd\ufffd\ufffd", "binary"), ("6,1,x;bad header", "malformed_header")])
def test_plain_lines_skipped_explicitly(line, reason):
    stats = ParseStats()
    assert parse_line(line, stats) is None
    assert stats.skipped[reason] == 1


def test_a_megabyte_line_parses_without_trouble():
    record = parse_line("6,1,2,-;" + "x" * 1_000_000, ParseStats())
    assert len(record.message) == 1_000_000


# ------------------------------------------------------------------ the /dev/kmsg read loop

class FakeKmsg:
    """A /dev/kmsg descriptor we control: a script of records and errors, then EAGAIN."""

    def __init__(self, script):
        self.script = list(script)
        self.sizes = []

    def read(self, size):
        self.sizes.append(size)
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "no more")
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item.encode()

    def add(self, *items):
        self.script.extend(items)


def record(seq, message="hello"):
    return f"6,{seq},{seq * 1000},-;{message}\n"


def test_device_reads_one_record_per_read_with_a_large_buffer():
    fake = FakeKmsg([record(1), record(2, XID79)])
    items = read_device_records(fake.read, ParseStats())
    assert [i.seq for i in items] == [1, 2]
    assert min(fake.sizes) >= 16 * 1024 and RECORD_BUFFER >= 16 * 1024


def test_epipe_is_a_gap_and_reading_goes_on():
    fake = FakeKmsg([record(1), BrokenPipeError(errno.EPIPE, "overrun"), record(50),
                     InterruptedError(), record(51)])
    items = read_device_records(fake.read, ParseStats())
    assert [type(i).__name__ for i in items] == ["KmsgRecord", "KmsgGap", "KmsgRecord", "KmsgRecord"]


def test_device_reading_stops_at_the_record_limit():
    fake = FakeKmsg([record(n) for n in range(1, 11)])
    assert len(read_device_records(fake.read, ParseStats(), max_records=4)) == 4
    assert len(read_device_records(fake.read, ParseStats())) == 6


def test_device_garbage_records_are_skipped_and_counted():
    fake = FakeKmsg(["\x00\xff garbage", record(3)])
    stats = ParseStats()
    assert [i.seq for i in read_device_records(fake.read, stats)] == [3]
    assert stats.skipped["malformed_header"] == 1


def make_boot(tmp_path: Path, boot: str) -> Path:
    path = tmp_path / "boot_id"
    path.write_text(boot + "\n")
    return path


def test_device_cursor_skips_what_this_boot_already_gave(tmp_path):
    boot = make_boot(tmp_path, "boot-a")
    cursor = tmp_path / "cursor.json"
    fake = FakeKmsg([record(1), record(2), record(3)])
    follower = KmsgFollower(cursor_path=cursor, boot_id_path=boot, read=fake.read).open()
    assert [i.seq for i in follower.poll()] == [1, 2, 3]
    follower.commit()
    # A restart: the kernel hands the whole buffer again, plus what came meanwhile.
    fake = FakeKmsg([record(1), record(2), record(3), record(4)])
    again = KmsgFollower(cursor_path=cursor, boot_id_path=boot, read=fake.read).open()
    assert [i.seq for i in again.poll()] == [4]
    assert again.stats.replayed == 3


def test_device_cursor_of_another_boot_starts_from_the_beginning(tmp_path):
    cursor = tmp_path / "cursor.json"
    KmsgCursor(boot_id="boot-old", seq=900).save(cursor)
    fake = FakeKmsg([record(1), record(2)])
    follower = KmsgFollower(cursor_path=cursor, boot_id_path=make_boot(tmp_path, "boot-new"),
                            read=fake.read).open()
    assert [i.seq for i in follower.poll()] == [1, 2]


def test_records_lost_while_away_are_a_gap(tmp_path):
    cursor = tmp_path / "cursor.json"
    KmsgCursor(boot_id="boot-a", seq=10).save(cursor)
    fake = FakeKmsg([record(40), record(41)])
    follower = KmsgFollower(cursor_path=cursor, boot_id_path=make_boot(tmp_path, "boot-a"),
                            read=fake.read).open()
    items = follower.poll()
    assert items[0] == KmsgGap("the kernel log turned over while the agent was away", lost=29)
    assert [i.seq for i in items[1:]] == [40, 41]


def test_an_overrun_counts_what_it_lost_once(tmp_path):
    fake = FakeKmsg([record(1), BrokenPipeError(), record(9)])
    follower = KmsgFollower(boot_id_path=make_boot(tmp_path, "b"), read=fake.read).open()
    items = follower.poll()
    gaps = [i for i in items if isinstance(i, KmsgGap)]
    assert len(gaps) == 1 and gaps[0].lost == 7


def test_source_turns_a_gap_into_one_kmsg_gap_finding(tmp_path):
    fake = FakeKmsg([record(1, XID79)] + [BrokenPipeError()] * 50 + [record(100)])
    follower = KmsgFollower(boot_id_path=make_boot(tmp_path, "b"), read=fake.read)
    source = KmsgSource("node1", follower, gpus=GpuMap(bus_index={"0000:3b:00": 2})).open()
    found = source.poll(now=10.0)
    assert [(f.signal, f.code, f.device) for f in found] == [("xid", "79", "gpu2"),
                                                             ("kmsg_gap", "", "")]
    assert all(f.node == "node1" and f.source == "kmsg" and f.time == 10.0 for f in found)


def test_real_dev_kmsg_reads_records():
    path = "/dev/kmsg"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        pytest.skip(f"/dev/kmsg not readable here ({err.strerror}); needs root or dmesg_restrict=0")
    try:
        items = read_device_records(lambda n: os.read(fd, n), ParseStats(), max_records=200)
    except OSError as err:  # e.g. EPERM from a container's /dev/kmsg
        pytest.skip(f"/dev/kmsg refused a read ({err.strerror})")
    finally:
        os.close(fd)
    records = [i for i in items if isinstance(i, KmsgRecord)]
    if not records:
        pytest.skip("/dev/kmsg is empty here")
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and all(r.priority is not None for r in records)


# ------------------------------------------------------------------ following a plain file

def kmsg_line(seq, message):
    return f"6,{seq},{seq * 1000},-;{message}\n"


def test_follows_a_file_another_thread_appends_to(tmp_path):
    log = tmp_path / "kmsg"
    follower = KmsgFollower(log, boot_id_path=make_boot(tmp_path, "b"), mode="file").open()
    seen: list[int] = []
    stop = threading.Event()

    def writer():
        with open(log, "a") as fh:
            for seq in range(1, 201):
                fh.write(kmsg_line(seq, f"line {seq}"))
                fh.flush()
                if seq % 50 == 0:
                    time.sleep(0.01)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()

    def all_seen():
        seen.extend(r.seq for r in follower.poll())
        return stop.is_set() and len(seen) >= 200

    wait_for(all_seen)
    thread.join()
    assert seen == list(range(1, 201))


def test_file_continuation_lines_join_their_record(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text(kmsg_line(1, XID79) + " SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n"
                   + kmsg_line(2, "next"))
    follower = KmsgFollower(log, boot_id_path=make_boot(tmp_path, "b"), mode="file").open()
    first, second = follower.poll()
    assert first.fields == {"SUBSYSTEM": "pci", "DEVICE": "+pci:0000:3b:00.0"}
    assert second.message == "next" and not second.fields


def test_file_cursor_restart_neither_replays_nor_misses(tmp_path):
    log, cursor = tmp_path / "kmsg", tmp_path / "cursor.json"
    boot = make_boot(tmp_path, "boot-a")
    log.write_text("".join(kmsg_line(n, f"m{n}") for n in range(1, 4)))
    follower = KmsgFollower(log, cursor_path=cursor, boot_id_path=boot, mode="file").open()
    assert [r.seq for r in follower.poll()] == [1, 2, 3]
    follower.commit()
    follower.close()
    with open(log, "a") as fh:  # written while the agent was down, one line half-written
        fh.write(kmsg_line(4, "m4") + "6,5,5000,-;m")
    again = KmsgFollower(log, cursor_path=cursor, boot_id_path=boot, mode="file").open()
    assert [r.seq for r in again.poll()] == [4]
    again.commit()
    again.close()
    with open(log, "a") as fh:
        fh.write("5\n")
    third = KmsgFollower(log, cursor_path=cursor, boot_id_path=boot, mode="file").open()
    assert [(r.seq, r.message) for r in third.poll()] == [(5, "m5")]


def test_a_file_rewritten_in_the_same_boot_skips_old_seqs(tmp_path):
    log, cursor = tmp_path / "kmsg", tmp_path / "cursor.json"
    boot = make_boot(tmp_path, "boot-a")
    log.write_text(kmsg_line(1, "a") + kmsg_line(2, "b"))
    follower = KmsgFollower(log, cursor_path=cursor, boot_id_path=boot, mode="file").open()
    follower.poll()
    follower.commit()
    follower.close()
    replacement = tmp_path / "kmsg.new"
    replacement.write_text(kmsg_line(1, "a") + kmsg_line(2, "b") + kmsg_line(3, "c"))
    os.replace(replacement, log)
    again = KmsgFollower(log, cursor_path=cursor, boot_id_path=boot, mode="file").open()
    assert [r.seq for r in again.poll()] == [3]


def test_a_new_boot_reads_the_new_lines_and_resets_dedup(tmp_path):
    log, cursor = tmp_path / "kmsg", tmp_path / "cursor.json"
    boot = make_boot(tmp_path, "boot-a")
    log.write_text(kmsg_line(1, XID48))
    source = KmsgSource("n1", KmsgFollower(log, cursor_path=cursor, boot_id_path=boot,
                                           mode="file"), quiet_s=None).open()
    assert len(source.poll(1.0)) == 1
    with open(log, "a") as fh:
        fh.write(kmsg_line(2, XID48))
    assert source.poll(2.0) == []  # same boot, same key: one finding
    boot.write_text("boot-b\n")
    with open(log, "a") as fh:
        fh.write(kmsg_line(1, XID48))  # the new boot numbers from 1 again
    assert len(source.poll(3.0)) == 1
    assert source.boot_id == "boot-b"


def test_truncation_and_rotation_are_followed(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text(kmsg_line(1, "a") + kmsg_line(2, "b"))
    follower = KmsgFollower(log, boot_id_path=make_boot(tmp_path, "b"), mode="file").open()
    assert len(follower.poll()) == 2
    log.write_text(kmsg_line(3, "c"))  # truncated and rewritten, shorter
    assert [r.message for r in follower.poll()] == ["c"]
    with open(log, "a") as fh:
        fh.write(kmsg_line(4, "d"))
    os.rename(log, tmp_path / "kmsg.1")
    log.write_text(kmsg_line(5, "e"))
    assert [r.message for r in follower.poll()] == ["d", "e"]


def test_a_file_that_appears_later_is_read(tmp_path):
    log = tmp_path / "kmsg"
    follower = KmsgFollower(log, boot_id_path=make_boot(tmp_path, "b"), mode="file").open()
    assert follower.poll() == []
    log.write_text(kmsg_line(1, "late"))
    assert [r.message for r in follower.poll()] == ["late"]


def test_xid48_ten_thousand_times_is_one_finding(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text("".join(kmsg_line(n, XID48) for n in range(1, 10_001)))
    source = KmsgSource("n1", KmsgFollower(log, boot_id_path=make_boot(tmp_path, "b"),
                                           mode="file")).open()
    found = []
    for _ in range(5):
        found += source.poll(100.0)
    assert [(f.signal, f.code) for f in found] == [("xid", "48")]
    (bucket,) = source.coalescer.buckets()
    assert bucket.count == 10_000 and len(bucket.samples) <= 5


@pytest.mark.parametrize("block_scan", [True, False], ids=["block-scan", "per-line"])
def test_garbage_megabyte_lines_and_binary_do_not_break_the_source(tmp_path, block_scan):
    log = tmp_path / "kmsg"
    with open(log, "wb") as fh:
        fh.write(b"\x00\xff\xfe" * 1000 + b"\n")
        fh.write(b"6,1,2,-;" + b"y" * 3_000_000 + b"\n")
        fh.write(os.urandom(100_000).replace(b"\n", b"") + b"\n")
        fh.write(b"6,1,x;broken\n\n")
        fh.write(kmsg_line(2, XID79).encode())
    source = KmsgSource("n1", KmsgFollower(log, boot_id_path=make_boot(tmp_path, "b"), mode="file"))
    if not block_scan:
        source.follower.scanner = None
    source.open()
    found = []
    for _ in range(3):
        found += source.poll(1.0)
    assert [(f.signal, f.code) for f in found] == [("xid", "79")]
    stats = source.follower.stats
    if block_scan:  # lines that hold no pattern's literal are only counted
        assert stats.passed_over == 5 and not stats.skipped
    else:
        assert stats.skipped["binary"] >= 1 and stats.skipped["malformed_header"] >= 1
    assert source.follower._tailer.stats.truncated_lines >= 1


def test_a_corrupt_cursor_starts_the_boot_over(tmp_path, caplog):
    cursor = tmp_path / "cursor.json"
    cursor.write_text("{not json")
    assert KmsgCursor.load(cursor) == KmsgCursor()
    cursor.write_text('{"version": 1, "seq": "x"}')
    assert KmsgCursor.load(cursor) == KmsgCursor()
    assert "kmsg cursor" in caplog.text


def test_real_dev_kmsg_through_the_follower_on_an_event_loop(tmp_path):
    import asyncio

    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("/dev/kmsg not readable here; needs root or dmesg_restrict=0")
    follower = KmsgFollower("/dev/kmsg", cursor_path=tmp_path / "cursor.json")
    try:
        follower.open()
    except OSError as err:
        pytest.skip(f"/dev/kmsg cannot be opened ({err.strerror})")
    assert follower.mode == "device" and follower.fileno() is not None

    async def first_batch():
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()

        def on_readable():
            try:
                items = follower.poll()
            except OSError as err:  # a container's /dev/kmsg may refuse reads
                ready.set_exception(err)
            else:
                if items and not ready.done():
                    ready.set_result(items)

        loop.add_reader(follower.fileno(), on_readable)
        try:
            return await asyncio.wait_for(ready, timeout=5)
        finally:
            loop.remove_reader(follower.fileno())

    try:
        items = asyncio.run(first_batch())
    except asyncio.TimeoutError:
        pytest.skip("/dev/kmsg had no records to read")
    except OSError as err:
        pytest.skip(f"/dev/kmsg refused a read ({err.strerror})")
    finally:
        follower.commit()
        follower.close()
    assert any(isinstance(i, KmsgRecord) for i in items)
    saved = KmsgCursor.load(tmp_path / "cursor.json")
    assert saved.seq is not None and saved.boot_id == follower.boot_id


def test_commit_writes_only_when_the_cursor_moved(tmp_path):
    log, cursor = tmp_path / "kmsg", tmp_path / "cursor.json"
    log.write_text(kmsg_line(1, "a"))
    follower = KmsgFollower(log, cursor_path=cursor, boot_id_path=make_boot(tmp_path, "b"),
                            mode="file").open()
    follower.poll()
    follower.commit()
    first = cursor.stat().st_mtime_ns
    cursor.unlink()
    follower.poll()
    follower.commit()
    assert not cursor.exists()  # nothing new: no write
    with open(log, "a") as fh:
        fh.write(kmsg_line(2, "b"))
    follower.poll()
    follower.commit()
    assert KmsgCursor.load(cursor).seq == 2 and first


def test_an_unreadable_boot_id_keeps_the_boot(tmp_path):
    log = tmp_path / "kmsg"
    boot = make_boot(tmp_path, "boot-a")
    follower = KmsgFollower(log, boot_id_path=boot, mode="file").open()
    boot.unlink()
    assert not follower.check_boot() and follower.boot_id == "boot-a"
