"""Benchmarks of the node agent (issue #3): fence latency, CPU and memory, scan speed.

Prints figures beside their targets; never passes or fails on time. Needs root (it
brings up testbeds in private directories under /tmp and always stops them again).

    .venv/bin/python bench/agent.py [--only latency|soak|scan] [--injections 50]
                                    [--soak-seconds 60] [--scan-mb 64]

- latency: a 4-node testbed with one agent per node (`--kmsg-poll 0.05`). Each injection
  appends one drain-class XID record to a node's kernel-log file and polls `sinfo`
  (through pitstop.slurm) every 10 ms until the node carries a `pitstop:` reason. The
  (code, GPU) key changes every time, so neither the per-boot dedup nor the 60 s storm
  coalescing swallows a line; between injections the node is resumed in Slurm and the
  bench waits until its agent has reconciled the resume (state file back to OK).
- soak: one agent with 8 replayed H100s polled every second, while 1,000 unrelated
  kernel records a second are appended (100 every 0.1 s); first the same agent idle as a
  baseline. CPU is the agent process's own user+system time over the window divided by
  the wall time (its finished children, the squeue calls, shown apart); RSS sampled.
- scan: a generated file of realistic kernel records (mostly noise, some faults) run
  through pitstop's matcher (PatternSet.match per line, what findings_from_lines calls
  for every line the kmsg source reads) beside `grep -E -c -f` of the same patterns.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from pitstop.daemon.kmsg import KmsgFollower, KmsgSource
from pitstop.daemon.tail import LineTailer
from pitstop.daemon.patterns import (KMSG_PATTERNS, Coalescer, GpuMap, PatternSet,
                                     findings_from_lines)
from pitstop.testbed import faults
from pitstop.testbed.cluster import Testbed
from pitstop.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
NVML_RECORDING = REPO / "daemon" / "data" / "nvml-recorded-8xh100.jsonl"

# XIDs the default policy fences with `drain` (daemon/policy.yaml), each without a
# refence escalation, so every injection is one plain drain.
DRAIN_XIDS = [48, 95, 62, 46, 74, 109, 110, 136, 140, 143, 155, 156, 158, 171, 172]

TARGET_LATENCY_P99_MS = 1000.0
TARGET_CPU_PCT = 1.0
TARGET_RSS_MIB = 80.0
TARGET_SCAN_RATIO = 0.5


def _on_term(*_args) -> None:
    raise KeyboardInterrupt


def shielded(func, *args):
    """Run a clean-up step that a second Ctrl-C or SIGTERM must not cut short."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return func(*args)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def private_dir(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"pitstop-bench-{tag}-", dir="/tmp"))


# --- 1. kernel-log line -> node drained ----------------------------------------------------

def latency(injections: int, poll_s: float = 0.01, timeout_s: float = 30.0) -> dict:
    directory = private_dir("latency")
    bed = Testbed(directory)
    try:
        layout = bed.up(nodes=4, gpus_per_node=2, agents=True, agent_args=["--kmsg-poll", "0.05"],
                        timeout=120)
        slurm = bed.slurm(timeout=10)
        names = layout.node_names
        gpus = layout.gpus_per_node
        state_file = {n: layout.agent_state_dir(n) / f"{n}.json" for n in names}

        def agents_ready() -> bool:
            states = [read_state(state_file[n]) for n in names]
            return all(s and s.get("health") == "OK" and (s.get("telemetry") or {}).get("port")
                       for s in states)

        wait_until(agents_ready, 60, "the 4 agents to start")
        # Every (code, GPU) pair once per node before any repeats: 15 codes x 2 GPUs.
        keys = [(DRAIN_XIDS[i % len(DRAIN_XIDS)], i % gpus) for i in range(len(DRAIN_XIDS) * gpus)]
        used = {n: 0 for n in names}
        rows: list[dict] = []
        for number in range(injections):
            node = names[number % len(names)]
            k = used[node]
            used[node] += 1
            if k and k % len(keys) == 0:  # every key used this boot: give the node a new boot
                bed.new_boot(layout, node)
                boot = (layout.kmsg_dir / f"{node}.boot_id").read_text().strip()
                wait_until(lambda: (read_state(state_file[node]) or {}).get("boot_id") == boot, 15,
                           f"the agent on {node} to see its new boot")
            code, gpu = keys[k % len(keys)]
            messages = faults.kernel_messages(f"xid:{code}:{gpu}", gpus)
            wall0 = time.time()
            t0 = time.perf_counter()
            faults.append_kernel_records(layout.kmsg_file(node), messages)
            deadline = t0 + timeout_s
            polls, call_s, fenced = 0, [], False
            while True:
                started = time.perf_counter()
                current = slurm.node(node)
                ended = time.perf_counter()
                polls += 1
                call_s.append(ended - started)
                if current is not None and current.fenced_by_pitstop:
                    fenced = True
                    break
                if ended > deadline:
                    break
                time.sleep(poll_s)
            row = {"node": node, "xid": code, "gpu": gpu, "fenced": fenced,
                   "ms": 1000 * (ended - t0), "polls": polls,
                   "sinfo_ms": 1000 * statistics.median(call_s),
                   # the sinfo call that first showed the drain started here: a lower bound
                   "ms_lower": 1000 * (started - t0) if fenced else None}
            state = read_state(state_file[node]) or {}
            seen = [f for f in state.get("open_findings", [])
                    if f.get("signal") == "xid" and f.get("code") == str(code) and f.get("device") == f"gpu{gpu}"]
            if seen:  # the agent's tick that read the line: time.time() of that pass
                row["read_ms"] = 1000 * (float(seen[-1].get("first_seen", wall0)) - wall0)
            rows.append(row)
            status = f"{row['ms']:7.1f} ms" if fenced else "NOT FENCED"
            print(f"  injection {number + 1:3d}/{injections} {node} xid {code:3d} gpu{gpu}: {status} "
                  f"({polls} sinfo polls)", flush=True)
            # Put the node back and wait until its agent took the resume as an operator's.
            slurm.resume(node)

            def back_in_service() -> bool:
                s = read_state(state_file[node]) or {}
                return s.get("health") == "OK"

            try:
                wait_until(back_in_service, timeout_s, f"the agent on {node} to reconcile the resume")
                wait_until(lambda: not getattr(slurm.node(node), "drained", True), 10, f"{node} to be resumed")
            except TimeoutError as exc:
                state = read_state(state_file[node]) or {}
                print(f"  ! {exc}; state {state.get('health')} {state.get('reason')!r}; "
                      "giving the node a new boot", flush=True)
                bed.new_boot(layout, node)
                slurm.resume(node)
                wait_until(back_in_service, timeout_s, f"the agent on {node} to be OK after a new boot")
        return {"rows": rows, "nodes": len(names)}
    finally:
        shielded(bed.down)
        shutil.rmtree(directory, ignore_errors=True)


# --- 2. CPU share and RSS under a stream of unrelated kernel lines ---------------------------

def soak(seconds: float, rate: int = 1000, batches_per_s: int = 10, profile: Path | None = None) -> dict:
    directory = private_dir("soak")
    bed = Testbed(directory)
    proc: subprocess.Popen | None = None
    try:
        layout = bed.up(nodes=1, timeout=60)
        node = layout.node_names[0]
        work = directory / "soak"
        (work / "dev").mkdir(parents=True)
        kmsg, boot_id, state_dir = work / "kmsg", work / "kmsg.boot_id", work / "state"
        boot_id.write_text(f"{os.urandom(16).hex()}\n")
        faults.append_kernel_records(kmsg, faults.boot_messages(8), priority=6, boot_time=time.time())
        for index in range(8):  # eight accelerator devices, as the testbed makes them
            os.mknod(work / "dev" / f"nvidia{index}", 0o666 | stat.S_IFCHR, os.makedev(195, index))
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
        args = [sys.executable, *profiler, "-m", "pitstop", "agent", "run", "--config", "/dev/null",
                "--node", node, "--kmsg", str(kmsg), "--boot-id-file", str(boot_id),
                "--state-dir", str(state_dir), "--port", "0", "--nvml", f"replay:{NVML_RECORDING}",
                "--interval", "1", "--jobs-interval", "5", "--expected-gpus", "8",
                "--accelerator-glob", str(work / "dev" / "nvidia[0-9]*")]
        log_path = work / "agent.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ, **layout.env(), PYTHONUNBUFFERED="1"))
        state_file = state_dir / f"{node}.json"

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited ({proc.returncode}); see {log_path}:\n"
                                   + log_path.read_text(errors="replace")[-2000:])
            s = read_state(state_file) or {}
            return (s.get("telemetry") or {}).get("pid") == proc.pid

        wait_until(started, 60, "the soak agent to start")
        agent = psutil.Process(proc.pid)
        time.sleep(5.0)  # past start-up (imports, first telemetry pass)
        idle = _measure(agent, seconds, kmsg, 0, batches_per_s)
        loaded = _measure(agent, seconds, kmsg, rate, batches_per_s)
        cursor = state_dir / f"{node}.kmsg-cursor.json"

        def caught_up() -> bool:
            return (read_state(cursor) or {}).get("offset", -1) >= kmsg.stat().st_size

        try:
            wait_until(caught_up, 10, "the agent to read the whole kernel log")
            lag = 0
        except TimeoutError:
            lag = kmsg.stat().st_size - int((read_state(cursor) or {}).get("offset", 0))
        state = read_state(state_file) or {}
        return {"idle": idle, "loaded": loaded, "lag_bytes": lag, "health": state.get("health"),
                "open_findings": [f"{f.get('signal')} {f.get('code')} {f.get('device')}".strip()
                                  for f in state.get("open_findings", [])],
                "alive": proc.poll() is None}
    finally:
        if proc is not None:
            shielded(_stop_process, proc)
        shielded(bed.down)
        shutil.rmtree(directory, ignore_errors=True)


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _measure(agent: psutil.Process, seconds: float, kmsg: Path, rate: int, batches_per_s: int) -> dict:
    """One window: the agent's CPU time and RSS while `rate` noise records/s are appended."""
    noise = faults.kernel_messages("noise")
    batch = max(1, rate // batches_per_s) if rate else 0
    step = 1.0 / batches_per_s
    rss: list[int] = []
    lines = 0
    before = agent.cpu_times()
    t0 = time.perf_counter()
    end = t0 + seconds
    next_write = next_sample = t0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if batch and now >= next_write:
            lines += faults.append_kernel_records(kmsg, noise, repeat=batch, priority=6)
            next_write += step
        if now >= next_sample:
            rss.append(agent.memory_info().rss)
            next_sample += 0.5
        wake = min(end, next_sample, next_write if batch else end)
        time.sleep(max(0.0, wake - time.perf_counter()))
    after = agent.cpu_times()
    wall = time.perf_counter() - t0
    rss.append(agent.memory_info().rss)
    own = (after.user - before.user) + (after.system - before.system)
    children = ((after.children_user - before.children_user)
                + (after.children_system - before.children_system))
    return {"wall_s": wall, "cpu_s": own, "children_cpu_s": children, "lines": lines,
            "cpu_pct": 100 * own / wall, "children_pct": 100 * children / wall,
            "rss_max_mib": max(rss) / 2**20, "rss_end_mib": rss[-1] / 2**20,
            "rss_start_mib": rss[0] / 2**20}


# --- 3. scan throughput beside grep -E -------------------------------------------------------

NOISE_TEMPLATES = [
    "e1000e 0000:00:1f.6 eno1: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: None",
    "audit: type=1400 audit({t}.{ms}:{n}): apparmor=\"DENIED\" operation=\"open\" profile=\"snap.lxd\" name=\"/proc/{n}/mounts\" pid={pid} comm=\"lxd\" requested_mask=\"r\" denied_mask=\"r\" fsuid=0 ouid=0",
    "IPv6: ADDRCONF(NETDEV_CHANGE): veth{hex}: link becomes ready",
    "docker0: port {port}(veth{hex}) entered forwarding state",
    "docker0: port {port}(veth{hex}) entered blocking state",
    "EXT4-fs (nvme0n1p{port}): mounted filesystem with ordered data mode. Quota mode: none.",
    "nvme nvme0: 32/0/0 default/read/poll queues",
    "mlx5_core 0000:{bus}:00.0: mlx5_fw_tracer_handle_traces:{n}: FWTracer: Events were lost",
    "mlx5_core 0000:{bus}:00.0 ibp{port}s0: Link up",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024",
    "nvidia-nvswitch{port}: open (major=0)",
    "nvidia-uvm: Loaded the UVM driver, major device number 509.",
    "perf: interrupt took too long ({n} > {pid}), lowering kernel.perf_event_max_sample_rate to {n}",
    "TCP: request_sock_TCP: Possible SYN flooding on port {pid}. Sending cookies.  Check SNMP counters.",
    "systemd-journald[{pid}]: Data hash table of /var/log/journal/{hex}/system.journal has a fill level at 75.0 ({n} of {pid} items), suggesting rotation.",
    "python[{pid}]: segfault at {hex} ip 00007f{hex} sp 00007ffd{hex} error 4 in libc.so.6[7f{hex}+{n}]",
    "NFS: state manager: check lease failed on NFSv4 server 10.0.{port}.{bus} with error 10008",
    "lustre: LustreError: 11-0: scratch-OST{hex}-osc-ffff9a{hex}: operation ost_connect to node 10.1.{port}.{bus}@o2ib failed: rc = -16",
    "INFO: NMI handler (perf_event_nmi_handler) took too long to run: {n}.{ms} msecs",
    "igb 0000:{bus}:00.1: DCA enabled",
    "usb 1-{port}: new high-speed USB device number {n} using xhci_hcd",
    "Memory cgroup out of memory: Killed process {pid} (python) total-vm:{n}kB, anon-rss:{n}kB, file-rss:0kB",
    "kauditd_printk_skb: {n} callbacks suppressed",
    "bond0: (slave ens{port}f0np0): link status definitely up, 100000 Mbps full duplex",
    "NVRM: GPU {busid}.0: RmInitAdapter succeeded",
]

FAULT_KINDS = [f"xid:{c}:{g}" for c in (13, 31, 43, 45, 48, 63, 79, 94, 95, 119) for g in (0, 3, 7)] + [
    "fallen-off-bus:2", "sxid:12028", "neuron:hbm", "mlx5-fatal", "hung-task", "io-error"]
EXTRA_FAULTS = [
    "Buffer I/O error on dev nvme1n1, logical block 123456, lost async page write",
    "EXT4-fs error (device nvme0n1p2): ext4_find_entry:1455: inode #2: comm python: reading directory lblock 0",
    "XFS (md0): metadata I/O error in \"xfs_imap_to_bp+0x5d/0xb0\" at daddr 0x3a8 len 32 error 5",
]


def build_corpus(path: Path, megabytes: float, fault_every: int = 500, seed: int = 3) -> dict:
    """Kernel records, `prio,seq,usec,-;message`, mostly noise; about one fault line in
    `fault_every`, plus the driver's GPU-uuid lines now and then."""
    rng = random.Random(seed)
    fault_lines = [m for kind in FAULT_KINDS for m in faults.kernel_messages(kind)] + EXTRA_FAULTS
    uuid_lines = faults.boot_messages(8)[1:]
    target = int(megabytes * 2**20)
    written = seq = injected = 0
    usec = 5_000_000
    with open(path, "w", encoding="utf-8") as out:
        chunk: list[str] = []
        while written < target:
            pick = rng.random()
            if pick < 1.0 / fault_every:
                message = rng.choice(fault_lines)
                injected += 1
            elif pick < 1.2 / fault_every:
                message = rng.choice(uuid_lines)
                injected += 1
            else:
                message = rng.choice(NOISE_TEMPLATES).format(
                    t=1796119200 + seq // 1000, ms=rng.randrange(1000), n=rng.randrange(1, 99999),
                    pid=rng.randrange(300, 4_000_000), hex=f"{rng.getrandbits(32):08x}",
                    port=rng.randrange(1, 9), bus=f"{rng.randrange(256):02x}",
                    busid=rng.choice(faults.GPU_BUS_IDS))
            usec += rng.randrange(1, 2000)
            line = f"{rng.choice((4, 6, 6, 6, 7))},{seq},{usec},-;{message}\n"
            chunk.append(line)
            written += len(line.encode())
            seq += 1
            if len(chunk) >= 10000:
                out.write("".join(chunk))
                chunk = []
        out.write("".join(chunk))
    return {"bytes": path.stat().st_size, "lines": seq, "fault_lines": injected}


def to_ere(regex: str) -> tuple[str | None, list[str]]:
    """A Python regex as a grep -E (GNU ERE) one, with notes; None when it has no ERE form."""
    out: list[str] = []
    notes: list[str] = []
    i, n = 0, len(regex)
    in_class = False
    while i < n:
        c = regex[i]
        if c == "\\" and i + 1 < n:
            nxt = regex[i + 1]
            if nxt == "d":
                out.append("0-9" if in_class else "[0-9]")
            elif nxt == "s":
                out.append("[:space:]" if in_class else "[[:space:]]")
            elif nxt == "w":
                out.append("[:alnum:]_" if in_class else "[[:alnum:]_]")
            elif nxt in "bB<>" and not in_class:
                out.append("\\" + nxt)  # GNU extensions
            elif nxt in ".()[]{}*+?|^$\\/-":
                out.append(nxt if in_class else "\\" + nxt)  # brackets take no escapes in ERE
            else:
                return None, [f"\\{nxt} has no ERE form"]
            i += 2
            continue
        if in_class:
            out.append(c)
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            j = i + 1
            if j < n and regex[j] == "^":
                j += 1
            if j < n and regex[j] == "]":  # a leading ] is a literal
                j += 1
            out.append(regex[i:j])
            i = j
            continue
        if c in "*+?}" and i + 1 < n and regex[i + 1] == "?":
            out.append(c)  # lazy -> greedy: the same lines match
            if "lazy quantifiers made greedy" not in notes:
                notes.append("lazy quantifiers made greedy")
            i += 2
            continue
        if regex.startswith("(?P<", i):
            out.append("(")
            i = regex.index(">", i) + 1
            continue
        if regex.startswith("(?:", i):
            out.append("(")
            i += 3
            continue
        if regex.startswith("(?=", i) or regex.startswith("(?!", i) or regex.startswith("(?<", i):
            end = _group_end(regex, i)
            body = regex[i + 3:end]
            inner = _group_end(regex, i + 3) if body.startswith("(") else -1
            if regex.startswith("(?=", i) and inner == end - 2 and regex[end - 1] in "?*":
                notes.append(f"lookahead {regex[i:end + 1]} dropped (it can match empty, so it "
                             "is always true: the same lines match)")
                i = end + 1
                continue
            return None, [f"lookaround {regex[i:end + 1]} has no ERE form"]
        if regex.startswith("(?", i):
            return None, [f"group {regex[i:i + 4]}… has no ERE form"]
        out.append(c)
        i += 1
    return "".join(out), notes


def _group_end(regex: str, start: int) -> int:
    """The index of the `)` that closes the group opened at `start`."""
    depth, i, in_class = 0, start, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if regex.startswith("[^]", i) or regex.startswith("[]", i):
                i += 2 if regex[i + 1] == "]" else 3
                continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced group at {start} in {regex!r}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def scan(megabytes: float, repeats: int) -> dict:
    directory = private_dir("scan")
    try:
        corpus = directory / "kmsg.log"
        built = build_corpus(corpus, megabytes)
        patterns = PatternSet.load(KMSG_PATTERNS)
        ere, notes, untranslated = [], [], []
        for pattern in patterns.patterns:
            translated, why = to_ere(pattern.regex.pattern)
            if translated is None:
                untranslated.append(f"{pattern.id}: {'; '.join(why)}")
                continue
            ere.append(translated)
            notes += [f"{pattern.id}: {w}" for w in why]
            _check_translation(directory, pattern, translated)
        pattern_file = directory / "patterns.ere"
        pattern_file.write_text("".join(f"{e}\n" for e in ere), encoding="utf-8")

        def pitstop_match_per_line() -> int:
            lines = corpus.read_bytes().decode("utf-8", errors="replace").splitlines()
            match = patterns.match
            return sum(1 for line in lines if match(line) is not None)

        def pitstop_match() -> int:
            """What the agent does with a plain file: the tailer's runs of lines, the
            multi-literal scan of each run, the full patterns on the lines it found."""
            tailer, match, spans = LineTailer(corpus), patterns.match, patterns.scanner.line_spans
            count = 0
            for block in _all_blocks(tailer):
                for start, end in spans(block):
                    if match(block[start:end].decode("utf-8", errors="replace")) is not None:
                        count += 1
            tailer.close()
            return count

        def pitstop_findings() -> int:
            lines = corpus.read_bytes().decode("utf-8", errors="replace").splitlines()
            return len(findings_from_lines(lines, patterns, node="bench", source="kmsg", now=0.0,
                                           coalescer=Coalescer(quiet_s=None), gpus=GpuMap()))

        def pitstop_source() -> int:
            boot = directory / "boot_id"
            boot.write_text("bench\n")
            source = KmsgSource("bench", KmsgFollower(corpus, boot_id_path=boot, mode="file"),
                                patterns=patterns, quiet_s=None)
            source.open()
            found, size, stuck = 0, corpus.stat().st_size, 0
            try:
                while source.follower.cursor().offset < size and stuck < 3:
                    before = source.follower.cursor().offset
                    found += len(source.poll(0.0))
                    stuck = stuck + 1 if source.follower.cursor().offset == before else 0
            finally:
                source.close()
            return found

        def grep(env: dict[str, str]):
            def run() -> int:
                proc = subprocess.run(["grep", "-E", "-c", "-f", str(pattern_file), str(corpus)],
                                      capture_output=True, text=True, timeout=300,
                                      env=dict(os.environ, **env) if env else None)
                if proc.returncode not in (0, 1):
                    raise RuntimeError(f"grep failed ({proc.returncode}): {proc.stderr.strip()}")
                return int(proc.stdout.strip() or 0)
            return run

        runners = [("pitstop match", pitstop_match), ("pitstop match, line by line", pitstop_match_per_line),
                   ("pitstop findings_from_lines", pitstop_findings),
                   ("pitstop KmsgSource (read+parse+match)", pitstop_source),
                   ("grep -E (C.UTF-8)", grep({})), ("grep -E (LC_ALL=C)", grep({"LC_ALL": "C"}))]
        results: dict[str, dict] = {name: {"s": float("inf"), "cpu_s": float("inf"), "count": 0}
                                    for name, _ in runners}
        for _ in range(repeats):  # interleaved, so a burst of other work hits every one alike
            for name, run in runners:
                gc.collect()
                wall0, cpu0, kids0 = time.perf_counter(), time.process_time(), _children_cpu()
                count = run()
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0 + _children_cpu() - kids0
                result = results[name]
                result["s"], result["cpu_s"], result["count"] = min(result["s"], wall), min(result["cpu_s"], cpu), count
        for result in results.values():
            result["mb_s"] = built["bytes"] / 2**20 / result["s"]
            result["cpu_mb_s"] = built["bytes"] / 2**20 / max(result["cpu_s"], 1e-6)
        return {"corpus": built, "results": results, "notes": notes, "untranslated": untranslated,
                "engine": patterns.scanner.engine,
                "ere_patterns": len(ere), "patterns": len(patterns.patterns)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _all_blocks(tailer: LineTailer):
    """Every run of lines of the file (a poll reads at most max_bytes_per_poll)."""
    while True:
        blocks = tailer.poll_blocks()
        if not blocks:
            return
        yield from blocks


def _check_translation(directory: Path, pattern, translated: str) -> None:
    """grep must take the same example lines as Python's regex does (where it has examples)."""
    lines = [e["line"] for e in pattern.examples]
    if not lines:
        return
    sample = directory / "examples.txt"
    sample.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    proc = subprocess.run(["grep", "-E", "-c", "-e", translated, str(sample)], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{pattern.id}: grep rejects {translated!r}: {proc.stderr.strip()}")
    python = sum(1 for line in lines if pattern.regex.search(line))
    if int(proc.stdout.strip() or 0) != python:
        raise RuntimeError(f"{pattern.id}: the ERE {translated!r} takes {proc.stdout.strip()} of the "
                           f"examples, Python's regex {python}")


# --- the report ----------------------------------------------------------------------------

def report_latency(result: dict) -> list[str]:
    rows = result["rows"]
    ok = [r["ms"] for r in rows if r["fenced"]]
    missed = len(rows) - len(ok)
    lines = ["", f"1. kernel-log line -> node drained in Slurm ({len(rows)} injections over "
                 f"{result['nodes']} nodes, agents at --kmsg-poll 0.05, sinfo polled every 10 ms)"]
    if not ok:
        return lines + ["   no injection was fenced"]
    lower = [r["ms_lower"] for r in rows if r["fenced"]]
    read = [r["read_ms"] for r in rows if r.get("read_ms") is not None]
    sinfo = [r["sinfo_ms"] for r in rows]
    p99 = percentile(ok, 0.99)
    lines += [f"   {'':28} {'p50':>8} {'p99':>8} {'max':>8} {'min':>8}",
              f"   {'line -> sinfo shows drain':28} {statistics.median(ok):8.1f} {p99:8.1f} "
              f"{max(ok):8.1f} {min(ok):8.1f}  ms   target p99 <= {TARGET_LATENCY_P99_MS:.0f} ms: "
              f"{'met' if p99 <= TARGET_LATENCY_P99_MS and not missed else 'MISSED'}",
              f"   {'  (start of that sinfo call)':28} {statistics.median(lower):8.1f} "
              f"{percentile(lower, 0.99):8.1f} {max(lower):8.1f} {min(lower):8.1f}  ms"]
    if read:
        lines.append(f"   {'  agent read the line':28} {statistics.median(read):8.1f} "
                     f"{percentile(read, 0.99):8.1f} {max(read):8.1f} {min(read):8.1f}  ms "
                     "(finding's first_seen, the start of the agent's pass that read it, - append time)")
    lines.append(f"   one sinfo call: median {statistics.median(sinfo):.1f} ms (the resolution of the "
                 f"measurement); {missed} injection(s) not fenced within 30 s")
    return lines


def report_soak(result: dict, seconds: float) -> list[str]:
    idle, loaded = result["idle"], result["loaded"]
    rate = loaded["lines"] / loaded["wall_s"]
    per_line_us = 1e6 * loaded["cpu_s"] / max(1, loaded["lines"])
    marginal_us = 1e6 * (loaded["cpu_s"] - idle["cpu_s"] / idle["wall_s"] * loaded["wall_s"]) / max(1, loaded["lines"])
    rss_max = max(idle["rss_max_mib"], loaded["rss_max_mib"])
    lines = ["", f"2. agent CPU and RSS, 8 replayed GPUs polled every 1 s, {seconds:.0f} s windows",
             f"   {'window':26} {'CPU % core':>10} {'+children':>10} {'RSS max':>9} {'RSS end':>9} {'lines/s':>8}",
             f"   {'idle (no kernel lines)':26} {idle['cpu_pct']:10.2f} {idle['children_pct']:10.2f} "
             f"{idle['rss_max_mib']:9.1f} {idle['rss_end_mib']:9.1f} {0:8.0f}",
             f"   {'1,000 noise lines/s':26} {loaded['cpu_pct']:10.2f} {loaded['children_pct']:10.2f} "
             f"{loaded['rss_max_mib']:9.1f} {loaded['rss_end_mib']:9.1f} {rate:8.0f}",
             f"   target <= {TARGET_CPU_PCT:.0f} % of a core under load: "
             f"{'met' if loaded['cpu_pct'] <= TARGET_CPU_PCT else 'MISSED'}; "
             f"RSS <= {TARGET_RSS_MIB:.0f} MiB: {'met' if rss_max <= TARGET_RSS_MIB else 'MISSED'}",
             f"   CPU per kernel line: {per_line_us:.1f} us all-in, {marginal_us:.1f} us above the idle "
             f"baseline ({loaded['lines']} lines); children = the agent's squeue calls",
             f"   agent afterwards: {'running' if result['alive'] else 'EXITED'}, health "
             f"{result['health']}, {result['lag_bytes']} bytes of the log unread, open findings: "
             f"{', '.join(result['open_findings']) or 'none'}"]
    return lines


def report_scan(result: dict) -> list[str]:
    corpus, res = result["corpus"], result["results"]
    lines = ["", f"3. scan throughput of the kernel-log patterns ({corpus['bytes'] / 2**20:.1f} MB, "
                 f"{corpus['lines']:,} records, {corpus['fault_lines']:,} fault/uuid lines; best of "
                 "interleaved runs; MB/s per wall second and per CPU second)",
             f"   {'':40} {'MB/s':>8} {'MB/cpu-s':>9} {'wall s':>7} {'lines matched':>14}"]
    for name, r in res.items():
        note = "   (findings: one per key, not lines)" if name.startswith("pitstop") and "match" not in name else ""
        lines.append(f"   {name:40} {r['mb_s']:8.1f} {r['cpu_mb_s']:9.1f} {r['s']:7.2f} {r['count']:14,}{note}")
    match = res["pitstop match"]
    lines.append(f"   pitstop match = the agent's plain-file path: runs of lines searched for the patterns' "
                 f"literals ({result['engine']}), the full patterns on the lines found")
    for grep_name in ("grep -E (C.UTF-8)", "grep -E (LC_ALL=C)"):
        ratio = match["mb_s"] / res[grep_name]["mb_s"]
        cpu_ratio = match["cpu_mb_s"] / res[grep_name]["cpu_mb_s"]
        lines.append(f"   ratio pitstop match / {grep_name}: {ratio:.2f} wall, {cpu_ratio:.2f} CPU   "
                     f"target >= {TARGET_SCAN_RATIO}: {'met' if min(ratio, cpu_ratio) >= TARGET_SCAN_RATIO else 'MISSED'}")
    same = match["count"] == res["grep -E (C.UTF-8)"]["count"]
    lines.append(f"   match counts: pitstop {match['count']:,}, grep {res['grep -E (C.UTF-8)']['count']:,} "
                 f"({'the same' if same else 'DIFFERENT'}); {result['ere_patterns']} of "
                 f"{result['patterns']} patterns translated to ERE")
    for note in result["notes"]:
        lines.append(f"   note: {note}")
    for item in result["untranslated"]:
        lines.append(f"   NOT translated (grep runs without it): {item}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["latency", "soak", "scan"])
    parser.add_argument("--injections", type=int, default=50)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--scan-mb", type=float, default=64.0)
    parser.add_argument("--scan-repeats", type=int, default=3)
    parser.add_argument("--soak-profile", type=Path, default=None,
                        help="run the soak agent under cProfile, write its stats here and print the "
                             "top entries (the CPU figures of such a run are inflated by the profiler)")
    args = parser.parse_args()
    if os.geteuid() != 0 and args.only != "scan":
        print("the latency and soak benchmarks bring up a Slurm testbed: run as root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    # Also where SIGINT came in ignored (a background job of a script): Ctrl-C cleans up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parts = [args.only] if args.only else ["latency", "soak", "scan"]
    report: list[str] = []
    print(f"pitstop agent benchmarks ({psutil.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; other work on this machine makes "
          "the figures noisy)", flush=True)
    try:
        for part in parts:
            started = time.perf_counter()
            print(f"\n== {part}", flush=True)
            try:
                if part == "latency":
                    report += report_latency(latency(args.injections))
                elif part == "soak":
                    report += report_soak(soak(args.soak_seconds, profile=args.soak_profile), args.soak_seconds)
                    if args.soak_profile:
                        import pstats
                        stats = pstats.Stats(str(args.soak_profile))
                        stats.sort_stats("tottime").print_stats(25)
                        stats.sort_stats("cumulative").print_stats(40)
                else:
                    report += report_scan(scan(args.scan_mb, args.scan_repeats))
            except (TimeoutError, RuntimeError, OSError) as exc:
                report += ["", f"{part}: FAILED: {exc}"]
                print(f"{part} failed: {exc}", file=sys.stderr, flush=True)
            print(f"   ({part} took {time.perf_counter() - started:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: testbeds and processes stopped", file=sys.stderr)
        report.append("\n(interrupted)")
    print("\n" + "=" * 100 + "\npitstop agent benchmarks: results" + "\n".join(report))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
