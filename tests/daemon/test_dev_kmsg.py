"""The real /dev/kmsg: a line written to it reaches the agent's follower and source."""

import os
import time
import uuid

import pytest

from pitstop.daemon.kmsg import KmsgFollower, KmsgRecord, KmsgSource
from pitstop.waiting import wait_until


def _writable_kmsg():
    if not os.path.exists("/dev/kmsg"):
        pytest.skip("no /dev/kmsg on this machine")
    if not (os.access("/dev/kmsg", os.W_OK) and os.access("/dev/kmsg", os.R_OK)):
        pytest.skip("/dev/kmsg is not readable and writable here (needs root)")


def _write(line: str) -> None:
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, line.encode())
    except OSError as err:
        pytest.skip(f"/dev/kmsg refused a write ({err.strerror})")
    finally:
        os.close(fd)


def test_follower_sees_a_line_written_to_dev_kmsg(tmp_path):
    _writable_kmsg()
    follower = KmsgFollower("/dev/kmsg", cursor_path=tmp_path / "cursor.json")
    try:
        follower.open()
    except OSError as err:
        pytest.skip(f"/dev/kmsg cannot be opened ({err.strerror})")
    try:
        follower.poll()  # what the ring buffer already holds
        follower.commit()
        token = f"pitstop-test-{uuid.uuid4()}"
        _write(f"<6>{token}\n")
        seen = wait_until(lambda: [i for i in follower.poll() if isinstance(i, KmsgRecord) and token in i.message],
                          5, what="the written line to come back from /dev/kmsg")
        assert seen[0].priority is not None and seen[0].seq > 0
    finally:
        follower.close()


def test_source_turns_a_dev_kmsg_xid_into_a_finding(tmp_path):
    _writable_kmsg()
    source = KmsgSource("node1", KmsgFollower("/dev/kmsg", cursor_path=tmp_path / "cursor.json"))
    try:
        source.open()
    except OSError as err:
        pytest.skip(f"/dev/kmsg cannot be opened ({err.strerror})")
    try:
        source.poll(time.time())
        # An XID for a bus id of this run's own (earlier runs' lines stay in the ring buffer,
        # and the same key within a minute is the same storm).
        bus = f"{uuid.uuid4().int % 0xffff:04x}:{uuid.uuid4().int % 0xff:02x}:00"
        _write(f"<4>NVRM: Xid (PCI:{bus}): 79, pid=1, name=pitstop-test, GPU has fallen off the bus.\n")
        found = wait_until(lambda: [f for f in source.poll(time.time()) if f.signal == "xid"], 5,
                           what="an xid finding from /dev/kmsg")
        assert found[0].code == "79" and found[0].device == bus
    finally:
        source.close()
