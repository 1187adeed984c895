"""The job-log source: tail the output of this node's Slurm jobs for collective failures.

A hung or broken collective is said only in the job's own output: PyTorch's NCCL
watchdog, the heartbeat monitor, NCCL's InfiniBand errors, gloo's timeouts. Every rank
prints them, so these findings carry the job id and the policy treats them as the job's
fault unless a hardware finding of this node falls in the same window.

A run that restarts its steps in its allocation (`pitstop.rundir`) keeps its job id, so
the batch script's line as it starts a step (`pitstop: attempt N of job J: …`) marks a
new attempt: the findings after it carry that attempt, its episodes start afresh (the
same fault in the next attempt is a new finding), and `new_attempts` tells the agent.

The lines' shapes are data (data/joblog_patterns.yaml, applied by
`patterns.PatternSet`). Each job's file is followed by a `tail.LineTailer`: appended
bytes in chunks, lines cut at a cap (a megabyte progress bar costs one capped line), a
file that appears after the job starts, or is truncated, is handled. The repeats of one
(job, code) within `quiet_s` are one finding (`patterns.Coalescer`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pitstop.daemon.patterns import JOBLOG_PATTERNS, Coalescer, PatternSet, findings_from_lines
from pitstop.daemon.tail import MAX_LINE_BYTES, LineTailer, TailPosition
from pitstop.model import Finding
from pitstop.rundir import ATTEMPT_LINE


@dataclass
class WatchedJob:
    job_id: str
    path: Path
    tailer: LineTailer


class JobLogWatcher:
    """Follows the output files of the jobs on this node; `poll` gives findings.

    The agent calls `watch` for each job it sees start on the node (Slurm's StdOut and
    StdErr paths) and `unwatch` when it ends. A file that exists at `watch` is read from
    its end (lines from before, e.g. of a requeued run appending to the same file, are
    not this run's), unless `from_start`; a file that appears later is read whole.
    """

    def __init__(self, node: str, *, patterns: PatternSet | None = None,
                 quiet_s: float | None = 300.0, max_line: int = MAX_LINE_BYTES) -> None:
        self.node = node
        self.patterns = patterns or PatternSet.load(JOBLOG_PATTERNS)
        self.coalescer = Coalescer(quiet_s=quiet_s)
        self.max_line = max_line
        self._jobs: dict[tuple[str, str], WatchedJob] = {}
        self._attempts: dict[str, int] = {}  # job -> the attempt its output is at
        self.new_attempts: list[tuple[str, int]] = []  # (job, attempt) seen starting; the agent takes them

    def watch(self, job_id: str, path: Path | str, *, from_start: bool = False,
              attempt: int | None = None) -> None:
        """Follow `path` for the job. `attempt`: the attempt the run is at now, for a file
        read from its end (its output's last attempt line is behind the reading point)."""
        path = Path(path)
        if attempt is not None:
            self._attempts.setdefault(str(job_id), attempt)
        key = (str(job_id), str(path))
        if key in self._jobs:
            return
        position = TailPosition()
        if not from_start:
            try:
                st = os.stat(path)
                position = TailPosition(inode=st.st_ino, offset=st.st_size)
            except FileNotFoundError:
                pass
        self._jobs[key] = WatchedJob(str(job_id), path,
                                     LineTailer(path, position=position, max_line=self.max_line))

    def unwatch(self, job_id: str) -> None:
        for key in [k for k in self._jobs if k[0] == str(job_id)]:
            self._jobs.pop(key).tailer.close()
        self._attempts.pop(str(job_id), None)

    def close(self) -> None:
        for job in self._jobs.values():
            job.tailer.close()
        self._jobs.clear()

    def jobs(self) -> list[str]:
        return sorted({job.job_id for job in self._jobs.values()})

    def poll(self, now: float) -> list[Finding]:
        """The findings in what every watched file gained since the last poll."""
        found: list[Finding] = []
        for job in list(self._jobs.values()):
            found.extend(self.findings(job.job_id, job.tailer.poll(), now))
        return found

    def findings(self, job_id: str, lines: Iterable[str], now: float) -> list[Finding]:
        """The pure part: one job's lines in, the findings that start an episode out,
        each stamped with the attempt whose output it was in."""
        job_id = str(job_id)
        found: list[Finding] = []
        batch: list[str] = []
        for line in lines:
            started = ATTEMPT_LINE.match(line)
            if started is None or started.group(2) != job_id:
                batch.append(line)
                continue
            found += self._match(job_id, batch, now)
            batch = []
            self._attempts[job_id] = int(started.group(1))
            self.coalescer.forget(job_id)
            self.new_attempts.append((job_id, int(started.group(1))))
        return found + self._match(job_id, batch, now)

    def _match(self, job_id: str, lines: list[str], now: float) -> list[Finding]:
        found = findings_from_lines(lines, self.patterns, node=self.node, source="joblogs",
                                    now=now, coalescer=self.coalescer, job_id=job_id)
        for finding in found:
            finding.attempt = self._attempts.get(job_id)
        return found

    def stats(self) -> dict[str, dict[str, int]]:
        return {f"{job.job_id}:{job.path}": job.tailer.stats.to_dict() for job in self._jobs.values()}
