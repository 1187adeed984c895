"""Parsers for what sinfo, squeue and scontrol print: pure functions from text to model.

The portable route is `-O` (`--Format`) output with a unit separator after every field
and a record separator after every row: neither can be typed into a reason, a job name
or a comment, so values pass through whole, newlines included. `--json` is parsed too,
for versions that have it; its shape changed across releases (numbers became
`{"set", "infinite", "number"}` objects, states became lists), and both shapes are read.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from pitstop.model import Job, Node, Reservation
from pitstop.slurm.hostlist import expand

FIELD_SEP = "\x1f"
RECORD_SEP = "\x1e"

NODE_FIELDS = ["NodeList", "StateComplete", "CPUs", "CPUsState", "Gres", "GresUsed",
               "Partition", "Memory", "AllocMem", "NodeAddr", "UserLong", "TimeStamp",
               "Reason"]
JOB_FIELDS = ["JobID", "UserName", "State", "NodeList", "NumNodes", "Partition",
              "SubmitTime", "StartTime", "EndTime", "TimeLimit", "RestartCnt", "Requeue",
              "BatchHost", "exit_code", "tres-per-node", "Reservation", "WorkDir",
              "STDOUT", "STDERR", "Reason", "Name", "Comment"]


def format_arg(fields: list[str]) -> str:
    """The `-O` argument: every field unpadded, each followed by the unit separator,
    the last by the record separator."""
    parts = [f"{name}:0{FIELD_SEP}" for name in fields[:-1]]
    parts.append(f"{fields[-1]}:0{RECORD_SEP}")
    return ",".join(parts)


def split_records(text: str, fields: list[str]) -> list[dict[str, str]]:
    """Rows of `-O` output as dicts. A value that somehow holds a separator folds the
    extra pieces into the last (free-text) field, so columns never shift."""
    rows = []
    for record in text.split(RECORD_SEP):
        record = record.lstrip("\n")
        if not record.strip():
            continue
        values = record.split(FIELD_SEP)
        if len(values) > len(fields):
            values = values[: len(fields) - 1] + [FIELD_SEP.join(values[len(fields) - 1:])]
        if len(values) < len(fields):
            raise ValueError(f"expected {len(fields)} fields, got {len(values)}: {record[:200]!r}")
        rows.append(dict(zip(fields, values)))
    return rows


# --- scalar values -------------------------------------------------------------------

_EMPTY = {"", "N/A", "n/a", "Unknown", "None", "(null)", "none"}


def text(value: str) -> str:
    return "" if value.strip() in _EMPTY else value.strip()


def parse_time(value: str) -> float | None:
    """Slurm's `2026-12-01T08:31:32` (the controller's local time) as epoch seconds."""
    value = value.strip()
    if value in _EMPTY:
        return None
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(?:(\d+):)?(\d+)$")


def parse_duration(value: str) -> int | None:
    """Slurm's `[days-]hours:minutes:seconds` forms as seconds; unlimited is None.

    `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S` are all Slurm's; a bare number is
    minutes, as in `sbatch --time`.
    """
    value = value.strip()
    if value.upper() in {"UNLIMITED", "INFINITE", "INVALID", "NOT_SET", "N/A", ""}:
        return None
    days, _, rest = value.rpartition("-") if "-" in value else ("", "", value)
    parts = rest.split(":")
    try:
        numbers = [int(p) for p in parts]
        day_count = int(days) if days else 0
    except ValueError:
        return None
    if days:
        hours, minutes, seconds = (numbers + [0, 0, 0])[:3]
    elif len(numbers) == 1:
        hours, minutes, seconds = 0, numbers[0], 0
    elif len(numbers) == 2:
        hours, minutes, seconds = 0, numbers[0], numbers[1]
    else:
        hours, minutes, seconds = numbers[-3:]
    return ((day_count * 24 + hours) * 60 + minutes) * 60 + seconds


def format_duration(seconds: int | None) -> str:
    """Seconds as Slurm's `D-HH:MM:SS` (or `UNLIMITED`)."""
    if seconds is None:
        return "UNLIMITED"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, dict):  # newer --json: {"set": true, "infinite": false, "number": 5}
        if not value.get("set", True) or value.get("infinite"):
            return default
        value = value.get("number", default)
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _user(value: str) -> str:
    """`root(0)` -> `root`."""
    value = text(value)
    return value.split("(", 1)[0]


# --- nodes ---------------------------------------------------------------------------

# The one-character suffixes of `sinfo %t` and their flags.
_STATE_SUFFIX = {"*": "NOT_RESPONDING", "~": "POWERED_DOWN", "#": "POWERING_UP",
                 "!": "POWERING_DOWN", "%": "POWERING_DOWN", "$": "MAINTENANCE",
                 "@": "REBOOT_REQUESTED", "^": "REBOOT_ISSUED", "-": "PLANNED"}
_BASE_ALIASES = {"DRAINED": ("IDLE", "DRAIN"), "DRAINING": ("MIXED", "DRAIN"),
                 "DRAIN": ("IDLE", "DRAIN"), "ALLOC": ("ALLOCATED", None),
                 "COMP": ("COMPLETING", None), "DRNG": ("MIXED", "DRAIN"),
                 "DRAIN*": ("IDLE", "DRAIN")}


def parse_state(value: str) -> tuple[str, list[str]]:
    """`idle+drain`, `down*+drain`, `drained`, `mixed#` -> (base, flags)."""
    words = [w for w in value.strip().upper().split("+") if w]
    if not words:
        return "UNKNOWN", []
    flags: list[str] = []
    cleaned = []
    for word in words:
        while word and word[-1] in _STATE_SUFFIX:
            flags.append(_STATE_SUFFIX[word[-1]])
            word = word[:-1]
        cleaned.append(word)
    base, *rest = cleaned
    if base in _BASE_ALIASES:
        base, extra = _BASE_ALIASES[base]
        if extra:
            flags.insert(0, extra)
    flags = [*rest, *flags]
    seen: list[str] = []
    for flag in flags:
        if flag and flag not in seen:
            seen.append(flag)
    return base, seen


def nodes_from_format(output: str) -> list[Node]:
    """`sinfo -N -h -O …` rows as nodes; a node listed once per partition is merged."""
    by_name: dict[str, Node] = {}
    for row in split_records(output, NODE_FIELDS):
        name = row["NodeList"].strip()
        partition = row["Partition"].strip().rstrip("*")
        if name in by_name:
            if partition and partition not in by_name[name].partitions:
                by_name[name].partitions.append(partition)
            continue
        base, flags = parse_state(row["StateComplete"])
        alloc = row["CPUsState"].split("/")
        reason = text(row["Reason"])
        by_name[name] = Node(
            name=name, state=base, flags=flags, reason=reason,
            reason_user=_user(row["UserLong"]) if reason else "",
            reason_time=parse_time(row["TimeStamp"]) if reason else None,
            cpus=_int(row["CPUs"]), cpus_alloc=_int(alloc[0]) if alloc else 0,
            gres=text(row["Gres"]), gres_used=text(row["GresUsed"]),
            memory_mb=_int(row["Memory"]), memory_alloc_mb=_int(row["AllocMem"]),
            partitions=[partition] if partition else [], address=text(row["NodeAddr"]),
        )
    return list(by_name.values())


def nodes_from_json(output: str) -> list[Node]:
    """`sinfo --json` (22.05 to current) as nodes."""
    data = json.loads(output)
    nodes = []
    for item in data.get("nodes", []):
        state = item.get("state", "UNKNOWN")
        if isinstance(state, list):  # 23.02+: ["IDLE", "DRAIN"]
            base, flags = (state[0] if state else "UNKNOWN").upper(), [s.upper() for s in state[1:]]
        else:
            base, flags = parse_state(str(state))
            flags += [str(f).upper() for f in item.get("state_flags", []) if str(f).upper() not in flags]
        reason = item.get("reason") or ""
        changed = _int(item.get("reason_changed_at"), 0)
        gres_used = item.get("gres_used") or ""
        nodes.append(Node(
            name=item.get("name", ""), state=base, flags=flags, reason=reason,
            reason_user=(item.get("reason_set_by_user") or "") if reason else "",
            reason_time=float(changed) if reason and changed else None,
            cpus=_int(item.get("cpus")),
            cpus_alloc=_int(item.get("alloc_cpus", item.get("alloc_cpu"))),
            gres=text(item.get("gres") or ""), gres_used=text(gres_used),
            memory_mb=_int(item.get("real_memory")),
            memory_alloc_mb=_int(item.get("alloc_memory")),
            partitions=list(item.get("partitions") or []),
            address=item.get("address") or "",
        ))
    return nodes


# --- jobs ----------------------------------------------------------------------------

def expand_output_pattern(pattern: str, job: Job) -> str:
    """A job's `--output` pattern (`%j`, `%x`, `%u`, `%N`, `%A`, `%a`, `%%`) as the path
    of its batch output, as slurmd writes it. squeue prints the pattern unexpanded."""
    if "%" not in pattern:
        return pattern
    array_id, _, task_id = job.job_id.partition("_")
    table = {"j": job.job_id.split("_")[0], "J": job.job_id, "x": job.name, "u": job.user,
             "N": job.batch_host or (job.nodes[0] if job.nodes else ""), "A": array_id,
             "a": task_id or "4294967294", "n": "0", "t": "0", "s": "batch", "%": "%"}

    def substitute(match: re.Match[str]) -> str:
        width, letter = match.group(1), match.group(2)
        value = table.get(letter, match.group(0))
        if width and value.isdigit():
            value = value.zfill(int(width))
        return value

    return re.sub(r"%(\d*)([jJxuNAantsS%])", substitute, pattern)


def jobs_from_format(output: str) -> list[Job]:
    jobs = []
    for row in split_records(output, JOB_FIELDS):
        nodes_text = text(row["NodeList"])
        job = Job(
            job_id=row["JobID"].strip(), name=row["Name"], user=row["UserName"].strip(),
            state=row["State"].strip().upper(), reason=text(row["Reason"]),
            nodes=expand(nodes_text) if nodes_text else [],
            num_nodes=_int(row["NumNodes"]), partition=text(row["Partition"]),
            submit_time=parse_time(row["SubmitTime"]), start_time=parse_time(row["StartTime"]),
            end_time=parse_time(row["EndTime"]), time_limit=parse_duration(row["TimeLimit"]),
            restart_count=_int(row["RestartCnt"]), requeue=row["Requeue"].strip() == "1",
            batch_host=text(row["BatchHost"]), exit_code=text(row["exit_code"]),
            reservation=text(row["Reservation"]), tres_per_node=text(row["tres-per-node"]),
            work_dir=text(row["WorkDir"]), comment=text(row["Comment"]),
        )
        job.stdout = expand_output_pattern(text(row["STDOUT"]), job)
        job.stderr = expand_output_pattern(text(row["STDERR"]), job)
        jobs.append(job)
    return jobs


def jobs_from_json(output: str) -> list[Job]:
    """`squeue --json` (22.05 to current) as jobs."""
    data = json.loads(output)
    jobs = []
    for item in data.get("jobs", []):
        state = item.get("job_state", "")
        if isinstance(state, list):
            state = state[0] if state else ""
        nodes_text = item.get("nodes") or ""
        limit = item.get("time_limit")
        limit_minutes = _int(limit, -1)
        infinite = isinstance(limit, dict) and limit.get("infinite")
        job = Job(
            job_id=str(item.get("job_id", "")), name=item.get("name", ""),
            user=item.get("user_name", ""), state=str(state).upper(),
            reason=text(item.get("state_reason", "") or ""),
            nodes=expand(nodes_text) if nodes_text else [],
            num_nodes=_int(item.get("node_count")), partition=item.get("partition", ""),
            submit_time=_epoch(item.get("submit_time")), start_time=_epoch(item.get("start_time")),
            end_time=_epoch(item.get("end_time")),
            time_limit=None if infinite or limit_minutes < 0 else limit_minutes * 60,
            restart_count=_int(item.get("restart_cnt")), requeue=bool(item.get("requeue")),
            batch_host=item.get("batch_host", "") or "",
            reservation=item.get("resv_name", item.get("reservation", "")) or "",
            tres_per_node=item.get("tres_per_node", "") or "",
            work_dir=item.get("current_working_directory", "") or "",
            comment=item.get("comment", "") or "",
        )
        job.stdout = expand_output_pattern(item.get("standard_output", "") or "", job)
        job.stderr = expand_output_pattern(item.get("standard_error", "") or "", job)
        jobs.append(job)
    return jobs


def _epoch(value: Any) -> float | None:
    number = _int(value, 0)
    return float(number) if number > 0 else None


# --- scontrol key=value output ---------------------------------------------------------

_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_key_values(line: str) -> dict[str, str]:
    """One `scontrol show … -o` line as a dict. Keys are words followed by `=`; a value
    runs to the next key, so values with spaces (reasons, names) are kept whole."""
    matches = list(_KEY.finditer(line))
    result: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        result[match.group(1)] = line[match.end():end].strip()
    return result


def reservations_from_scontrol(output: str) -> list[Reservation]:
    """`scontrol show reservation -o` as reservations ("No reservations" is none)."""
    found = []
    for line in output.splitlines():
        if not line.startswith("ReservationName="):
            continue
        kv = parse_key_values(line)
        nodes_text = text(kv.get("Nodes", ""))
        found.append(Reservation(
            name=kv.get("ReservationName", ""), state=kv.get("State", ""),
            start_time=parse_time(kv.get("StartTime", "")), end_time=parse_time(kv.get("EndTime", "")),
            nodes=expand(nodes_text) if nodes_text else [], node_count=_int(kv.get("NodeCnt")),
            partition=text(kv.get("PartitionName", "")),
            flags=[f for f in text(kv.get("Flags", "")).split(",") if f],
            users=[u for u in text(kv.get("Users", "")).split(",") if u],
        ))
    return found


def job_from_scontrol(output: str) -> dict[str, str]:
    """`scontrol show job -o ID` as a dict of Slurm's own keys (for the detail view)."""
    line = next((l for l in output.splitlines() if l.startswith("JobId=")), "")
    return parse_key_values(line)


def format_time(epoch: float) -> str:
    """Epoch seconds as Slurm's `2026-12-01T08:31:32`, in local time (the controller's, as
    `parse_time` assumes): the inverse of `parse_time`, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(epoch)))


_TEST_ONLY_START = re.compile(r"to start at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")


def test_only_start(output: str) -> float | None:
    """When `sbatch --test-only` says a job would start ("Job 12 to start at
    2026-12-01T11:48:21 using …"), as epoch seconds; None when it says no such thing."""
    match = _TEST_ONLY_START.search(output)
    return parse_time(match.group(1)) if match else None
