"""Log-line patterns as data, and the storm-proof bucketing of what they match.

The kernel log and the jobs' output say what broke in lines whose shape changes with
each driver and library version. The shapes live in data files
(`data/kmsg_patterns.yaml`, `data/joblog_patterns.yaml`), each regex beside the real
lines it must match, so a new driver's line is a data change with its test built in
(`PatternSet.check_examples`). This module only compiles and applies them:

- `PatternSet.match(line)` is pure: a line in, a `Match` (signal, code, device, message)
  or None out. One combined prefilter (every pattern's literal `contains` text in one
  regex alternation) rejects the ordinary line before any pattern regex runs.
- `GpuMap` turns a PCI bus id into `gpuN` (from the operator's or the testbed's
  bus → index map, or through the `GPU at PCI:…: GPU-uuid` lines and a uuid → index map).
- `Coalescer` makes a storm one finding: the first line of a (signal, code, device) key
  becomes a finding, repeats only raise the key's count and keep a few sample lines,
  until the key has been quiet for `quiet_s` (then the next line is a new episode).
  `reset()` starts a new boot.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pitstop.yamlfile import DataFileError, MarkedDict, line_of, load_yaml
from pitstop.daemon.scan import LiteralScanner
from pitstop.model import Finding

DATA_DIR = Path(__file__).parent / "data"
KMSG_PATTERNS = DATA_DIR / "kmsg_patterns.yaml"
JOBLOG_PATTERNS = DATA_DIR / "joblog_patterns.yaml"

EVIDENCE_CAP = 512
EMITS = ("finding", "gpu_map")
DEVICE_KINDS = ("plain", "gpu")
PATTERN_KEYS = {"id", "signal", "contains", "regex", "code", "device", "device_kind",
                "message", "emit", "examples", "note"}
EXAMPLE_KEYS = {"line", "signal", "code", "device", "message", "uuid", "none"}

_BUS_ID = re.compile(r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):"
                     r"(?P<dev>[0-9a-f]{1,2})(?:\.(?P<fn>[0-7]))?$")


def normalize_bus_id(bus: str) -> str:
    """`0000:3b:00`: the form findings name a GPU by when no index is known.

    Accepts the kernel's `0000:3b:00.0`, NVML's `00000000:3B:00.0` and a bare `3b:00`.
    """
    match = _BUS_ID.match(bus.strip().lower())
    if not match:
        return bus.strip().lower()
    domain = (match.group("domain") or "0").rjust(4, "0")[-4:]
    return f"{domain}:{match.group('bus').rjust(2, '0')}:{match.group('dev').rjust(2, '0')}"


@dataclass
class GpuMap:
    """What the agent knows about this node's GPUs: bus id → index, bus id → uuid."""

    bus_index: dict[str, int] = field(default_factory=dict)
    uuid_index: dict[str, int] = field(default_factory=dict)
    bus_uuid: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bus_index = {normalize_bus_id(b): int(i) for b, i in self.bus_index.items()}
        self.uuid_index = {u.lower(): int(i) for u, i in self.uuid_index.items()}

    def learn_uuid(self, bus: str, uuid: str) -> None:
        self.bus_uuid[normalize_bus_id(bus)] = uuid

    def index_of(self, bus: str) -> int | None:
        bus = normalize_bus_id(bus)
        if bus in self.bus_index:
            return self.bus_index[bus]
        uuid = self.bus_uuid.get(bus)
        return self.uuid_index.get(uuid.lower()) if uuid else None

    def device(self, bus: str) -> str:
        """`gpuN` when the bus id is mapped, else the normalized bus id."""
        index = self.index_of(bus)
        return f"gpu{index}" if index is not None else normalize_bus_id(bus)


@dataclass(frozen=True)
class Match:
    """What one line said, before it is tied to a node and a time."""

    pattern_id: str
    emit: str  # finding | gpu_map
    signal: str
    code: str
    device: str
    message: str
    groups: dict[str, str]


@dataclass(frozen=True)
class Pattern:
    id: str
    signal: str
    contains: tuple[str, ...]
    regex: re.Pattern[str]
    code: str
    device: str
    device_kind: str
    message: str
    emit: str
    examples: tuple[dict[str, Any], ...]
    line: int | None

    def apply(self, line: str, gpus: GpuMap | None) -> Match | None:
        found = self.regex.search(line)
        if found is None:
            return None
        groups = {k: v for k, v in found.groupdict().items() if v is not None}
        device = _fill(self.device, groups)
        if self.device_kind == "gpu" and device:
            device = (gpus or GpuMap()).device(device)
        return Match(pattern_id=self.id, emit=self.emit, signal=self.signal,
                     code=_fill(self.code, groups), device=device,
                     message=_fill(self.message, groups).strip(), groups=groups)


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _fill(template: str, groups: dict[str, str]) -> str:
    """The template with the regex groups in; "" when a group it names did not match."""
    names = _fields(template)
    if any(not groups.get(name) for name in names):
        return ""
    return template.format_map(groups)


class PatternSet:
    """The patterns of one data file, compiled, with a shared prefilter."""

    def __init__(self, patterns: list[Pattern], file: str = "<patterns>") -> None:
        self.patterns = patterns
        self.file = file
        literals = sorted({lit for p in patterns for lit in p.contains}, key=len, reverse=True)
        self._prefilter = re.compile("|".join(re.escape(lit) for lit in literals)) if literals else None
        self.scanner = LiteralScanner(literals)  # the same literals, a whole block at a time

    @classmethod
    def load(cls, path: Path | str) -> "PatternSet":
        return cls.from_data(load_yaml(path), str(path))

    @classmethod
    def from_data(cls, doc: Any, file: str) -> "PatternSet":
        if not isinstance(doc, dict) or not isinstance(doc.get("patterns"), list):
            raise DataFileError(file, line_of(doc), "patterns", "expected a list of patterns")
        patterns, seen = [], {}
        for index, raw in enumerate(doc["patterns"]):
            pattern = _compile_pattern(raw, file, f"patterns[{index}]")
            if pattern.id in seen:
                raise DataFileError(file, pattern.line, f"patterns[{index}].id",
                                    f"duplicate id {pattern.id!r} (first on line {seen[pattern.id]})")
            seen[pattern.id] = pattern.line
            patterns.append(pattern)
        return cls(patterns, file)

    def may_match(self, line: str) -> bool:
        """The cheap test: False when no pattern can match `line` (most lines)."""
        return self._prefilter is not None and self._prefilter.search(line) is not None

    def match(self, line: str, gpus: GpuMap | None = None) -> Match | None:
        """The first pattern (in file order) that matches `line`, or None."""
        if self._prefilter is None:
            return None
        if self._prefilter.search(line) is None:
            return None
        candidates = [p for p in self.patterns if any(lit in line for lit in p.contains)]
        for pattern in candidates:
            found = pattern.apply(line, gpus)
            if found is not None:
                return found
        return None

    def check_examples(self, gpus: GpuMap | None = None) -> list[str]:
        """Every example line that does not give what it promises (empty when all do)."""
        problems = []
        for pattern in self.patterns:
            for example in pattern.examples:
                line = example["line"]
                found = self.match(line, gpus)
                if example.get("none"):
                    if found is not None:
                        problems.append(f"{pattern.id}: {line!r} should match nothing, "
                                        f"matched {found.pattern_id}")
                    continue
                if found is None or found.pattern_id != pattern.id:
                    got = found.pattern_id if found else "nothing"
                    problems.append(f"{pattern.id}: {line!r} matched {got}")
                    continue
                for key in ("signal", "code", "device", "message"):
                    if key in example and str(example[key]) != getattr(found, key):
                        problems.append(f"{pattern.id}: {line!r}: {key} is "
                                        f"{getattr(found, key)!r}, expected {example[key]!r}")
                if "uuid" in example and found.groups.get("uuid") != example["uuid"]:
                    problems.append(f"{pattern.id}: {line!r}: uuid {found.groups.get('uuid')!r}")
        return problems


def _compile_pattern(raw: Any, file: str, where: str) -> Pattern:
    if not isinstance(raw, MarkedDict):
        raise DataFileError(file, line_of(raw), where, "expected a mapping")
    line = raw.line

    def fail(key: str, message: str) -> DataFileError:
        return DataFileError(file, raw.line_of(key), f"{where}.{key}", message)

    for key in raw:
        if key not in PATTERN_KEYS:
            raise fail(key, f"unknown key (known: {', '.join(sorted(PATTERN_KEYS))})")
    for key in ("id", "regex", "contains"):
        if key not in raw:
            raise DataFileError(file, line, f"{where}.{key}", "missing")
    emit = raw.get("emit", "finding")
    if emit not in EMITS:
        raise fail("emit", f"must be one of {', '.join(EMITS)}")
    if emit == "finding" and not isinstance(raw.get("signal"), str):
        raise fail("signal", "a finding pattern needs a signal name")
    contains = raw["contains"]
    contains = (contains,) if isinstance(contains, str) else contains
    if not isinstance(contains, (list, tuple)) or not contains or \
            not all(isinstance(c, str) and c for c in contains):
        raise fail("contains", "expected a non-empty string or list of strings")
    try:
        regex = re.compile(str(raw["regex"]))
    except re.error as err:
        raise fail("regex", f"invalid regex: {err}") from None
    groups = set(regex.groupindex)
    templates = {k: str(raw.get(k, "")) for k in ("code", "device", "message")}
    for key, template in templates.items():
        try:
            names = _fields(template)
        except ValueError as err:
            raise fail(key, f"invalid template: {err}") from None
        unknown = [n for n in names if n not in groups]
        if unknown:
            raise fail(key, f"names regex groups that do not exist: {', '.join(unknown)}")
    device_kind = raw.get("device_kind", "plain")
    if device_kind not in DEVICE_KINDS:
        raise fail("device_kind", f"must be one of {', '.join(DEVICE_KINDS)}")
    examples = raw.get("examples", [])
    if not isinstance(examples, list):
        raise fail("examples", "expected a list")
    for number, example in enumerate(examples):
        if not isinstance(example, dict) or not isinstance(example.get("line"), str):
            raise DataFileError(file, line_of(example) or raw.line_of("examples"),
                                f"{where}.examples[{number}]", "expected a mapping with a line")
        extra = set(example) - EXAMPLE_KEYS
        if extra:
            raise DataFileError(file, line_of(example), f"{where}.examples[{number}]",
                                f"unknown keys: {', '.join(sorted(map(str, extra)))}")
    return Pattern(id=str(raw["id"]), signal=str(raw.get("signal") or ""),
                   contains=tuple(contains), regex=regex, code=templates["code"],
                   device=templates["device"], device_kind=device_kind,
                   message=templates["message"], emit=emit, examples=tuple(examples), line=line)


@dataclass
class Bucket:
    """Every line of one (signal, code, device) key this boot: counted, a few kept."""

    finding: Finding  # the first finding of the key
    count: int = 0
    episodes: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.finding.to_dict(), "count": self.count,
                "episodes": self.episodes, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "samples": list(self.samples)}


class Coalescer:
    """Collapses repeats of a finding key into one finding per episode.

    `offer` returns True when the finding starts an episode (the caller emits it): the
    first time the key is seen since `reset()`, or when it was quiet for `quiet_s`
    (None: never again until reset, i.e. strictly once per boot). Memory is bounded:
    `max_samples` lines per key, `max_keys` keys (further new keys are still emitted,
    only not bucketed, and counted in `unbucketed`).
    """

    def __init__(self, quiet_s: float | None = 60.0, max_samples: int = 5,
                 max_keys: int = 1024) -> None:
        self.quiet_s = quiet_s
        self.max_samples = max_samples
        self.max_keys = max_keys
        self.unbucketed = 0
        self._buckets: dict[tuple[str, ...], Bucket] = {}

    def reset(self) -> None:
        self._buckets.clear()
        self.unbucketed = 0

    def forget(self, first: str) -> None:
        """Drop the keys whose first part is `first` (a job's, when it starts a new attempt)."""
        self._buckets = {k: b for k, b in self._buckets.items() if not k or k[0] != first}

    def offer(self, finding: Finding, now: float, key: tuple[str, ...] | None = None) -> bool:
        key = key or finding.key
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.unbucketed += 1
                return True
            bucket = self._buckets[key] = Bucket(finding=finding, first_seen=now)
        new_episode = bucket.count == 0 or (
            self.quiet_s is not None and now - bucket.last_seen >= self.quiet_s)
        bucket.count += 1
        bucket.last_seen = now
        if new_episode:
            bucket.episodes += 1
        if len(bucket.samples) < self.max_samples:
            bucket.samples.append(finding.evidence[:EVIDENCE_CAP])
        return new_episode

    def buckets(self) -> list[Bucket]:
        return list(self._buckets.values())

    def count(self, key: tuple[str, ...]) -> int:
        bucket = self._buckets.get(key)
        return bucket.count if bucket else 0


def findings_from_lines(lines: Iterable[str], patterns: PatternSet, *, node: str, source: str,
                        now: float, coalescer: Coalescer, gpus: GpuMap | None = None,
                        job_id: str = "") -> list[Finding]:
    """The findings that start an episode among `lines` (the pure core of a log source)."""
    found: list[Finding] = []
    for line in lines:
        match = patterns.match(line, gpus)
        if match is None:
            continue
        if match.emit == "gpu_map":
            if gpus is not None and match.groups.get("bus") and match.groups.get("uuid"):
                gpus.learn_uuid(match.groups["bus"], match.groups["uuid"])
            continue
        finding = Finding(node=node, signal=match.signal, code=match.code, device=match.device,
                          message=match.message, evidence=line[:EVIDENCE_CAP], time=now,
                          source=source, job_id=job_id)
        key = (job_id, *finding.key)
        if coalescer.offer(finding, now, key):
            found.append(finding)
    return found
