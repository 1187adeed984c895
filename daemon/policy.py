"""The policy: what a finding means for this node, decided from rules that are data.

Sources report; this module decides. The rules (the shipped `policy.yaml`, an
operator's override merged over it) map a finding's (signal, code) to a class:
`ignore | watch | app | drain | down | reboot | replace`. `Policy.decide(finding, now,
history)` is pure: no I/O, no clock (the time is passed in), and the past it needs is
handed in as a `History` (which the agent keeps in the node's state file and updates
with `History.record(decision, now)` after each decision). What it does:

- watch: counts the finding's key (signal, code, device) in a window; at `count` it acts
  as the rule's `escalate` class. An `app` rule may escalate on repeats the same way.
- fence classes (drain, down, reboot, replace) act once per boot per key: a repeat is a
  `duplicate` decision (reported, not acted on). The node fenced for the same cause
  (signal, code) `refence.count` times within `refence.window_s` escalates (to replace,
  instead of yet another reboot).
- a collective timeout (`correlate: true`) shows on every rank and never fences alone:
  it is an `app` decision (requeue the job). The node is fenced (`correlation.fence`)
  only when a hardware finding of this node falls inside the correlation window:
  before the timeout (the fault that hung the collective) or just after it. The agent
  feeds every finding of its own node through `decide` and `record`, so the history
  holds this node's recent hardware findings and collective timeouts; whichever comes
  second finds the other. Each agent decides only about its own node.
- `breaker_open(fenced_count, total_nodes, max_share)`: the blast-radius breaker; the
  agent counts the fenced nodes from Slurm and stops fencing while it is open.

A `Decision` carries all a report needs (class, the `pitstop:` reason for Slurm, the
finding, the correlated finding, what escalated, whether it is a duplicate); dry-run is
the agent's concern. Loading errors name the file, the line and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pitstop.yamlfile import DataFileError, MarkedDict, line_of, load_yaml
from pitstop.model import ACTION_CLASSES, CLASS_SEVERITY, FENCE_CLASSES, PITSTOP_REASON_PREFIX, Finding

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
POLICY_VERSION = 1

CLASSES = ACTION_CLASSES
SEVERITY = CLASS_SEVERITY
REASON_MAX = 120

RULE_KEYS = {"class", "count", "window_s", "escalate", "when", "above", "correlate",
             "refence", "note"}
ESCALATION_KEYS = {"count", "window_s", "escalate"}
CORRELATION_KEYS = {"before_s", "after_s", "fence", "hardware_signals"}
SETTINGS_KEYS = {"unknown_signal", "watch", "refence", "correlation", "app_dedup_window_s",
                 "breaker_max_share", "breaker_window_s"}
TOP_KEYS = {"version", "settings", "rules"}
CODED_SIGNAL_KEYS = {"codes", "default"}


# ---------------------------------------------------------------- the compiled rules

@dataclass(frozen=True)
class Escalation:
    """`count` of a kind within `window_s` → act as `to` (None: never, report only)."""

    count: int
    window_s: float
    to: str | None


@dataclass(frozen=True)
class Rule:
    name: str  # "xid:79", "xid:144-150", "xid:default", "disk_low"
    klass: str
    escalation: Escalation | None = None  # watch (and app) on repeats of the key
    when: tuple[tuple[re.Pattern[str], str], ...] = ()
    above: float | None = None
    correlate: bool = False
    refence: Escalation | None = None
    where: str = ""  # file:line

    def class_for(self, finding: Finding) -> str:
        """The class for this finding: the message may decide, a threshold may ignore."""
        if self.above is not None:
            value = finding_value(finding)
            if value is not None and value <= self.above:
                return "ignore"
        for pattern, klass in self.when:
            if pattern.search(finding.message):
                return klass
        return self.klass


@dataclass(frozen=True)
class Correlation:
    before_s: float
    after_s: float
    fence: str
    hardware_signals: frozenset[str]


@dataclass(frozen=True)
class Settings:
    unknown_signal: Rule
    watch: Escalation
    refence: Escalation
    correlation: Correlation
    app_dedup_window_s: float
    breaker_max_share: float
    breaker_window_s: float


@dataclass
class SignalRules:
    """The rules of one signal: exact codes, code lists and ranges, a default."""

    rule: Rule | None = None  # a signal without codes
    exact: dict[str, Rule] = field(default_factory=dict)
    spans: list[tuple[int, int, Rule]] = field(default_factory=list)
    default: Rule | None = None

    def find(self, code: str) -> Rule | None:
        if code in self.exact:
            return self.exact[code]
        if code.isdigit():
            number = int(code)
            for low, high, rule in self.spans:
                if low <= number <= high:
                    return rule
        return self.default or self.rule


_VALUE = re.compile(r"(?:^|[\s,;(])(?:value|count)\s*[=:]\s*(-?\d+(?:\.\d+)?)")


def finding_value(finding: Finding) -> float | None:
    """A counter finding's number: `value=N` / `count=N` in its evidence or message, or
    an evidence that is just a number; None when it has none (then no threshold holds)."""
    for text in (finding.evidence, finding.message):
        text = (text or "").strip()
        try:
            return float(text)
        except ValueError:
            pass
        match = _VALUE.search(text)
        if match:
            return float(match.group(1))
    return None


# ---------------------------------------------------------------- the decision

@dataclass(frozen=True)
class Decision:
    """What to do about one finding, and all that a report of it needs."""

    action_class: str  # ignore | watch | app | drain | down | reboot | replace
    reason: str  # for Slurm: "pitstop: xid 79 gpu2 GPU has fallen off the bus"
    finding: Finding
    rule: str  # the rule that decided: "xid:79"
    node: str
    job_id: str = ""  # the job to requeue (app), or the job the finding came from
    base_class: str = ""  # the rule's class before any escalation or correlation
    escalated_from: str = ""  # the class that escalated into action_class ("" if none)
    correlated_with: Finding | None = None  # the finding that implicated this node
    duplicate: bool = False  # already acted on (this boot / this window): report only
    count: int = 1  # findings of this key inside the rule's window, this one included
    hardware: bool = False  # counts as hardware evidence for correlation
    correlate: bool = False  # a job-level symptom (collective timeout)
    detail: str = ""  # one line for logs and dry-run reports

    @property
    def fences(self) -> bool:
        """Fence the node now (drain, down, reboot or replace; not a duplicate)."""
        return self.action_class in FENCE_CLASSES and not self.duplicate

    @property
    def requeues(self) -> bool:
        """Requeue the finding's job now (an app decision that is not a duplicate)."""
        return self.action_class == "app" and not self.duplicate and bool(self.job_id)

    @property
    def acts(self) -> bool:
        return self.fences or (self.action_class == "app" and not self.duplicate)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return (self.finding,) + ((self.correlated_with,) if self.correlated_with else ())

    def to_dict(self) -> dict[str, Any]:
        return {"action_class": self.action_class, "reason": self.reason, "rule": self.rule,
                "node": self.node, "job_id": self.job_id, "base_class": self.base_class,
                "escalated_from": self.escalated_from, "duplicate": self.duplicate,
                "count": self.count, "detail": self.detail,
                "finding": self.finding.to_dict(),
                "correlated_with": self.correlated_with.to_dict() if self.correlated_with else None}


def breaker_open(fenced_count: int, total_nodes: int, max_share: float) -> bool:
    """True when more than `max_share` of the nodes is fenced: stop fencing, call a person.

    An unknown cluster size (0 nodes) keeps the breaker open: no fencing blind.
    """
    if total_nodes <= 0:
        return True
    return fenced_count / total_nodes > max_share


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


def reason_text(finding: Finding, action_class: str, *, correlated: Finding | None = None,
                note: str = "", limit: int = REASON_MAX) -> str:
    """`pitstop: xid 79 gpu2 GPU has fallen off the bus`: short, one line, for Slurm.

    `finding` leads (the cause); a `correlated` finding (the job symptom) follows it.
    """
    lead, other = finding, correlated
    head = [PITSTOP_REASON_PREFIX]
    if action_class == "replace":
        head.append("Action:Replace")
    head += [p for p in dict.fromkeys((lead.signal, lead.code, lead.device)) if p]
    tail = []
    if other is not None:
        tail.append(f"(with {other.code or other.signal}" +
                    (f" job {other.job_id})" if other.job_id else ")"))
    elif lead.job_id:
        tail.append(f"job {lead.job_id}")
    if note:
        tail.append(f"({note})")
    message = _clean(lead.message).rstrip(". ")
    fixed = " ".join(head + tail)
    room = limit - len(fixed) - 1
    if room > 8 and message:
        if len(message) > room:
            message = message[:room - 1].rstrip() + "…"
        text = " ".join(head + [message] + tail)
    else:
        text = fixed
    return _clean(text)[:limit]


def _clean(text: str) -> str:
    return " ".join(_UNPRINTABLE.sub(" ", text or "").split())


# ---------------------------------------------------------------- the history

def _app_key(finding: Finding, job_id: str) -> str:
    """What an app action was about: the symptom in this job, in this attempt of it when
    the finding says (a restart in the allocation is a new attempt: the same symptom in
    it is new, even when an older attempt's finding arrived after the restart)."""
    attempt = f"@{finding.attempt}" if finding.attempt is not None else ""
    return f"{_key(finding)}|{job_id}{attempt}"


def _key(finding: Finding) -> str:
    return "|".join((finding.signal, finding.code, finding.device))


def _cause(finding: Finding) -> str:
    return "|".join((finding.signal, finding.code))


SEEN_PER_KEY = 64
SEEN_KEYS = 512
RECENT_CAP = 128
HISTORY_HORIZON_S = 30 * 86400.0


@dataclass
class History:
    """What the policy remembers of this node, as plain JSON-able data.

    The agent keeps it in the node's state file (`to_dict` / `from_dict`), calls
    `start_boot(boot_id)` when it starts (per-boot deduplication resets on a new boot;
    fence counts do not), `record(decision, now)` after every decision,
    `back_in_service(now)` when the node returns to service without a reboot (so a
    recurrence fences again), and `forget_fence(decision)` when a fence decision was not
    carried out (the breaker was open, Slurm refused), so it neither blocks the next
    fence nor counts towards `refence`.
    """

    boot_id: str = ""
    in_service_since: float = 0.0  # fences before this (this boot) no longer hold
    seen: dict[str, list[float]] = field(default_factory=dict)  # key -> times
    fenced_keys: dict[str, float] = field(default_factory=dict)  # this boot: key -> when
    app_acted: dict[str, float] = field(default_factory=dict)  # key|job[@attempt] -> when
    hardware: list[dict[str, Any]] = field(default_factory=list)  # recent hardware findings
    collectives: list[dict[str, Any]] = field(default_factory=list)  # recent job symptoms
    fences: list[dict[str, Any]] = field(default_factory=list)  # every boot: {time, cause, class}

    def job_started(self, job_id: str) -> None:
        """A job (again) running here is a new run: what was done about its last run (a
        requeue for a stalled step, a collective timeout) must not hide the same symptom in
        this one, however soon it comes."""
        self.app_acted = {k: t for k, t in self.app_acted.items() if k.split("|")[-1].split("@")[0] != job_id}

    def start_boot(self, boot_id: str) -> bool:
        """A new boot forgets what was fenced this boot; True when the boot changed."""
        if boot_id == self.boot_id:
            return False
        self.boot_id = boot_id
        self.fenced_keys.clear()
        return True

    def back_in_service(self, now: float) -> None:
        self.fenced_keys.clear()
        self.in_service_since = now

    def forget_fence(self, decision: Decision) -> None:
        keys = {_key(f) for f in decision.findings}
        for key in keys:
            self.fenced_keys.pop(key, None)
        for index in range(len(self.fences) - 1, -1, -1):
            if self.fences[index].get("key") in keys:
                del self.fences[index]
                break

    def current_fence(self) -> str:
        """The worst fence that holds on this node now ("" when none)."""
        held = [f.get("class", "") for f in self.fences
                if f.get("boot_id") == self.boot_id and f.get("time", 0) >= self.in_service_since
                and f.get("key") in self.fenced_keys and f.get("class") in FENCE_CLASSES]
        return max(held, key=SEVERITY.__getitem__, default="")

    def count(self, key: str, since: float) -> int:
        return sum(1 for t in self.seen.get(key, ()) if t >= since)

    def fence_count(self, cause: str, since: float) -> int:
        return sum(1 for f in self.fences if f.get("cause") == cause and f.get("time", 0) >= since)

    def near(self, entries: list[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
        return [e for e in reversed(entries) if since <= e.get("time", 0) <= until]

    def record(self, decision: Decision, now: float, horizon_s: float = HISTORY_HORIZON_S) -> None:
        finding = decision.finding
        key = _key(finding)
        if decision.action_class != "ignore":
            times = self.seen.setdefault(key, [])
            times.append(now)
            del times[:-SEEN_PER_KEY]
        if decision.fences:
            self.fenced_keys[key] = now
            lead = decision.finding
            if decision.correlated_with is not None and decision.correlate:
                lead = decision.correlated_with
                self.fenced_keys[_key(lead)] = now
            self.fences.append({"time": now, "cause": _cause(lead), "key": _key(lead),
                                "class": decision.action_class, "boot_id": self.boot_id})
        if decision.action_class == "app" and not decision.duplicate:
            self.app_acted[_app_key(finding, decision.job_id)] = now
        entry = {"time": now, **{k: getattr(finding, k) for k in
                                 ("signal", "code", "device", "message", "job_id", "source")}}
        if decision.hardware:
            self.hardware.append(entry)
        if decision.correlate:
            self.collectives.append(entry)
        self._prune(now - horizon_s)

    def _prune(self, before: float) -> None:
        for key in list(self.seen):
            self.seen[key] = [t for t in self.seen[key] if t >= before]
            if not self.seen[key]:
                del self.seen[key]
        if len(self.seen) > SEEN_KEYS:
            newest = sorted(self.seen, key=lambda k: self.seen[k][-1], reverse=True)
            self.seen = {k: self.seen[k] for k in newest[:SEEN_KEYS]}
        self.app_acted = {k: t for k, t in self.app_acted.items() if t >= before}
        for name in ("hardware", "collectives", "fences"):
            kept = [e for e in getattr(self, name) if e.get("time", 0) >= before]
            setattr(self, name, kept[-RECENT_CAP:])

    def to_dict(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "in_service_since": self.in_service_since,
                "seen": self.seen, "fenced_keys": self.fenced_keys,
                "app_acted": self.app_acted, "hardware": self.hardware,
                "collectives": self.collectives, "fences": self.fences}

    @classmethod
    def from_dict(cls, data: Any) -> "History":
        """A history from a state file; whatever is malformed in it is dropped."""
        if not isinstance(data, dict):
            return cls()
        since = data.get("in_service_since", 0.0)
        history = cls(boot_id=str(data.get("boot_id", "")),
                      in_service_since=float(since) if _is_number(since) else 0.0)
        for key, times in _mapping(data.get("seen")).items():
            clean = [float(t) for t in times if _is_number(t)] if isinstance(times, list) else []
            if clean:
                history.seen[str(key)] = clean[-SEEN_PER_KEY:]
        for name in ("fenced_keys", "app_acted"):
            setattr(history, name, {str(k): float(v) for k, v in _mapping(data.get(name)).items()
                                    if _is_number(v)})
        for name in ("hardware", "collectives", "fences"):
            entries = data.get(name)
            setattr(history, name, [e for e in entries if isinstance(e, dict)
                                    and _is_number(e.get("time"))][-RECENT_CAP:]
                    if isinstance(entries, list) else [])
        return history


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finding_from_entry(entry: dict[str, Any], node: str) -> Finding:
    return Finding(node=node, signal=str(entry.get("signal", "")), code=str(entry.get("code", "")),
                   device=str(entry.get("device", "")), message=str(entry.get("message", "")),
                   time=float(entry.get("time", 0)), source=str(entry.get("source", "")),
                   job_id=str(entry.get("job_id", "")))


# ---------------------------------------------------------------- the policy

class Policy:
    """The merged rules, compiled; `decide` applies them."""

    def __init__(self, settings: Settings, signals: dict[str, SignalRules],
                 merged: dict[str, Any], files: list[str]) -> None:
        self.settings = settings
        self.signals = signals
        self.merged = merged
        self.files = files

    @classmethod
    def load(cls, override: Path | str | None = None,
             default: Path | str = DEFAULT_POLICY) -> "Policy":
        """The default policy with `override` (an operator's file) merged over it."""
        docs = [(str(default), load_yaml(default))]
        if override is not None:
            docs.append((str(override), load_yaml(override)))
        return cls.from_docs(docs)

    @classmethod
    def from_docs(cls, docs: list[tuple[str, Any]]) -> "Policy":
        merged: MarkedDict | None = None
        for file, doc in docs:
            if doc is None:
                doc = MarkedDict()
                doc.file, doc.line = file, 1
            if not isinstance(doc, MarkedDict):
                raise DataFileError(file, line_of(doc) or 1, "", "a policy file is a mapping")
            _check_top(doc)
            merged = doc if merged is None else _merge_policy(merged, doc)
        if merged is None:
            raise ValueError("no policy documents")
        settings = _compile_settings(merged)
        signals = _compile_rules(merged.get("rules", MarkedDict()), settings)
        return cls(settings, signals, merged, [file for file, _ in docs])

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.merged), sort_keys=False, default_flow_style=None,
                              width=100, allow_unicode=True)

    def rule_for(self, finding: Finding) -> Rule:
        rules = self.signals.get(finding.signal)
        found = rules.find(finding.code) if rules is not None else None
        return found or self.settings.unknown_signal

    def decide(self, finding: Finding, now: float, history: History) -> Decision:
        """What to do about `finding` at `now`, given what this node's history holds."""
        rule = self.rule_for(finding)
        base = rule.class_for(finding)
        corr = self.settings.correlation
        common = dict(finding=finding, rule=rule.name, node=finding.node, job_id=finding.job_id,
                      base_class=base)
        if base == "ignore":
            return Decision("ignore", reason_text(finding, "ignore"), detail=f"{rule.name}: ignore",
                            **common)
        if rule.correlate:
            return self._decide_correlated(finding, rule, now, history, common)
        hardware = finding.signal in corr.hardware_signals and base not in ("app",)
        key = _key(finding)
        klass, escalated_from, count, notes = base, "", 1, []
        if rule.escalation is not None:
            count = history.count(key, now - rule.escalation.window_s) + 1
            if rule.escalation.to and count >= rule.escalation.count:
                klass, escalated_from = rule.escalation.to, base
                notes.append(f"{count}x in {_span(rule.escalation.window_s)}")
        correlated = None
        if hardware and klass not in FENCE_CLASSES:
            recent = history.near(history.collectives, max(now - corr.after_s, history.in_service_since),
                                  now + corr.before_s)
            if recent:
                correlated = _finding_from_entry(recent[0], finding.node)
                klass, escalated_from = corr.fence, escalated_from or klass
        return self._fence_or_report(klass, now, history, common, rule=rule, cause=finding,
                                     escalated_from=escalated_from, count=count,
                                     correlated=correlated, hardware=hardware, notes=notes)

    def _decide_correlated(self, finding: Finding, rule: Rule, now: float, history: History,
                           common: dict[str, Any]) -> Decision:
        corr = self.settings.correlation
        # Hardware seen before the node last went back into service was dealt with then.
        since = max(now - corr.before_s, history.in_service_since)
        recent = history.near(history.hardware, since, now + corr.after_s)
        fresh = [e for e in recent if _key(_finding_from_entry(e, finding.node))
                 not in history.fenced_keys]
        if fresh and not history.current_fence():
            hardware = _finding_from_entry(fresh[0], finding.node)
            return self._fence_or_report(corr.fence, now, history, common,
                                         rule=self.rule_for(hardware), cause=hardware,
                                         escalated_from="app", correlated=hardware,
                                         correlate=True)
        last = history.app_acted.get(_app_key(finding, finding.job_id))
        duplicate = last is not None and now - last < self.settings.app_dedup_window_s
        held = history.current_fence()
        why = (f"node already fenced ({held})" if held else
               "already fenced for " + _key(_finding_from_entry(recent[0], finding.node))
               if recent else "no hardware finding of this node in the window")
        return Decision("app", reason_text(finding, "app"), duplicate=duplicate, correlate=True,
                        detail=f"{rule.name}: app (requeue job {finding.job_id or '?'}; {why})",
                        **common)

    def _fence_or_report(self, klass: str, now: float, history: History, common: dict[str, Any],
                         *, rule: Rule, cause: Finding, escalated_from: str = "", count: int = 1,
                         correlated: Finding | None = None, hardware: bool = False,
                         correlate: bool = False, notes: list[str] | None = None) -> Decision:
        """The decision for `klass`: fence dedup and refence escalation on `cause` (the
        finding that names the node's fault; `rule` is its rule), app dedup on the
        trigger (`common["finding"]`)."""
        notes = list(notes or [])
        trigger: Finding = common["finding"]
        duplicate, held = False, ""
        if klass in FENCE_CLASSES:
            duplicate = _key(cause) in history.fenced_keys
            refence = rule.refence or self.settings.refence
            if not duplicate and refence.to and SEVERITY[refence.to] > SEVERITY[klass]:
                fenced = history.fence_count(_cause(cause), now - refence.window_s) + 1
                if fenced >= refence.count:
                    escalated_from, klass = escalated_from or klass, refence.to
                    notes.append(f"{fenced}x in {_span(refence.window_s)}")
            held = history.current_fence()
            if not duplicate and held and SEVERITY[held] >= SEVERITY[klass]:
                duplicate = True  # fenced as badly already this boot: one Slurm action is enough
        elif klass == "app":
            last = history.app_acted.get(f"{_key(trigger)}|{trigger.job_id}")
            duplicate = last is not None and now - last < self.settings.app_dedup_window_s
        symptom = trigger if trigger is not cause else correlated
        reason = reason_text(cause, klass, correlated=symptom, note=", ".join(notes))
        detail = f"{common['rule']}: {klass}"
        if escalated_from:
            detail += f" (from {escalated_from})"
        if correlated is not None:
            detail += f", correlated with {_key(correlated)}"
        if duplicate:
            detail += f", node already fenced ({held})" if held else ", already acted on"
        fields = dict(common)
        if not fields["job_id"] and correlated is not None:
            fields["job_id"] = correlated.job_id
        return Decision(klass, reason, escalated_from=escalated_from, correlated_with=correlated,
                        duplicate=duplicate, count=count, hardware=hardware, correlate=correlate,
                        detail=detail, **fields)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ---------------------------------------------------------------- loading

def _check_top(doc: MarkedDict) -> None:
    for key in doc:
        if key not in TOP_KEYS:
            raise doc.error(key, str(key), f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    if "version" in doc and doc["version"] != POLICY_VERSION:
        raise doc.error("version", "version", f"must be {POLICY_VERSION}")
    for key in ("settings", "rules"):
        if key in doc and not isinstance(doc[key], MarkedDict):
            raise doc.error(key, key, "expected a mapping")


def _merged_copy(base: MarkedDict) -> MarkedDict:
    out = MarkedDict(base)
    out.file, out.line = base.file, base.line
    out.key_lines = dict(base.key_lines)
    out.key_files = {k: base.file_of(k) for k in base}
    return out


def _merge_keys(base: MarkedDict, over: MarkedDict, nested: set[str] | None = None) -> MarkedDict:
    """`over`'s keys over `base`'s; keys in `nested` merge one level deeper."""
    out = _merged_copy(base)
    for key, value in over.items():
        if nested and key in nested and isinstance(value, MarkedDict) and \
                isinstance(out.get(key), MarkedDict):
            value = _merge_keys(out[key], value)
        out[key] = value
        out.key_lines[key] = over.line_of(key)
        out.key_files[key] = over.file_of(key)
    return out


def _merge_policy(base: MarkedDict, over: MarkedDict) -> MarkedDict:
    out = _merge_keys(base, over)
    if isinstance(base.get("settings"), MarkedDict) and isinstance(over.get("settings"), MarkedDict):
        out["settings"] = _merge_keys(base["settings"], over["settings"],
                                      nested={"correlation", "watch", "refence"})
    base_rules, over_rules = base.get("rules"), over.get("rules")
    if isinstance(base_rules, MarkedDict) and isinstance(over_rules, MarkedDict):
        rules = _merge_keys(base_rules, over_rules)
        for signal, rule in over_rules.items():
            old = base_rules.get(signal)
            if _is_coded(old) and _is_coded(rule):
                merged = _merge_keys(old, rule)
                if isinstance(old.get("codes"), MarkedDict) and isinstance(rule.get("codes"), MarkedDict):
                    merged["codes"] = _merge_keys(old["codes"], rule["codes"])
                rules[signal] = merged
        out["rules"] = rules
    return out


def _is_coded(value: Any) -> bool:
    return isinstance(value, MarkedDict) and bool(CODED_SIGNAL_KEYS & set(value)) \
        and not (set(value) & RULE_KEYS)


def _number(container: MarkedDict, key: str, path: str, *, minimum: float = 0,
            maximum: float | None = None, integer: bool = False) -> float:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not isinstance(value, int)):
        raise container.error(key, path, f"expected {'an integer' if integer else 'a number'}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise container.error(key, path, f"must be {bound}")
    return value


def _class_name(container: MarkedDict, key: Any, path: str, *, allow_none: bool = False) -> str | None:
    value = container[key]
    if value is None and allow_none:
        return None
    if value not in CLASSES:
        raise container.error(key, path, f"{value!r} is not a class ({' | '.join(CLASSES)})")
    return value


def _escalation(raw: Any, parent: MarkedDict, key: str, path: str,
                defaults: Escalation | None) -> Escalation:
    if not isinstance(raw, MarkedDict):
        raise parent.error(key, path, "expected a mapping with count, window_s, escalate")
    for name in raw:
        if name not in ESCALATION_KEYS:
            raise raw.error(name, f"{path}.{name}",
                            f"unknown key (known: {', '.join(sorted(ESCALATION_KEYS))})")
    if defaults is None:
        missing = ESCALATION_KEYS - set(raw)
        if missing:
            raise parent.error(key, path, f"missing {', '.join(sorted(missing))}")
    count = int(_number(raw, "count", f"{path}.count", minimum=1, integer=True)) \
        if "count" in raw else defaults.count
    window = _number(raw, "window_s", f"{path}.window_s", minimum=1) \
        if "window_s" in raw else defaults.window_s
    to = _class_name(raw, "escalate", f"{path}.escalate", allow_none=True) \
        if "escalate" in raw else defaults.to
    return Escalation(count, float(window), to)


def _compile_rule(raw: Any, parent: MarkedDict, key: Any, path: str, name: str,
                  watch_defaults: Escalation | None) -> Rule:
    where = f"{parent.file_of(key)}:{parent.line_of(key)}"
    if isinstance(raw, str) or raw is None:
        klass = _class_name(parent, key, path)
        escalation = watch_defaults if klass == "watch" else None
        return Rule(name, klass, escalation=escalation, where=where)
    if not isinstance(raw, MarkedDict):
        raise parent.error(key, path, "expected a class name or a mapping with a class")
    for field_name in raw:
        if field_name not in RULE_KEYS:
            raise raw.error(field_name, f"{path}.{field_name}",
                            f"unknown key (known: {', '.join(sorted(RULE_KEYS))})")
    if "class" not in raw:
        raise parent.error(key, f"{path}.class", "missing")
    klass = _class_name(raw, "class", f"{path}.class")
    counted = set(raw) & ESCALATION_KEYS
    if counted and klass not in ("watch", "app"):
        first = sorted(counted)[0]
        raise raw.error(first, f"{path}.{first}",
                        "count/window_s/escalate apply to watch and app rules only")
    escalation = None
    if klass == "watch" or counted:
        escalation = _escalation(_sub(raw, counted), parent, key, path, watch_defaults)
    when = []
    if "when" in raw:
        items = raw["when"]
        if not isinstance(items, list):
            raise raw.error("when", f"{path}.when", "expected a list of {match, class}")
        for index, item in enumerate(items):
            item_path = f"{path}.when[{index}]"
            if not isinstance(item, MarkedDict) or set(item) != {"match", "class"}:
                raise DataFileError(raw.file_of("when"), line_of(item) or raw.line_of("when"),
                                    item_path, "expected a mapping with match and class")
            try:
                pattern = re.compile(str(item["match"]))
            except re.error as err:
                raise item.error("match", f"{item_path}.match", f"invalid regex: {err}") from None
            when.append((pattern, _class_name(item, "class", f"{item_path}.class")))
    above = _number(raw, "above", f"{path}.above", minimum=float("-inf")) if "above" in raw else None
    correlate = raw.get("correlate", False)
    if not isinstance(correlate, bool):
        raise raw.error("correlate", f"{path}.correlate", "expected true or false")
    refence = _escalation(raw["refence"], raw, "refence", f"{path}.refence", None) \
        if "refence" in raw else None
    return Rule(name, klass, escalation=escalation, when=tuple(when), above=above,
                correlate=correlate, refence=refence, where=where)


def _sub(raw: MarkedDict, keys: set[str]) -> MarkedDict:
    sub = MarkedDict({k: raw[k] for k in keys})
    sub.file, sub.line = raw.file, raw.line
    sub.key_lines = {k: raw.line_of(k) for k in keys}
    sub.key_files = {k: raw.file_of(k) for k in keys}
    return sub


_CODE_SPAN = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def _compile_rules(rules: Any, settings: Settings) -> dict[str, SignalRules]:
    if not isinstance(rules, MarkedDict):
        raise ValueError("rules must be a mapping")
    compiled: dict[str, SignalRules] = {}
    for signal, raw in rules.items():
        path = f"rules.{signal}"
        if not isinstance(signal, str) or not signal:
            raise rules.error(signal, path, "a signal name is a non-empty string")
        entry = SignalRules()
        if _is_coded(raw):
            for name in raw:
                if name not in CODED_SIGNAL_KEYS:
                    raise raw.error(name, f"{path}.{name}", "unknown key (known: codes, default)")
            if "default" in raw:
                entry.default = _compile_rule(raw["default"], raw, "default", f"{path}.default",
                                              f"{signal}:default", settings.watch)
            codes = raw.get("codes", MarkedDict())
            if not isinstance(codes, MarkedDict):
                raise raw.error("codes", f"{path}.codes", "expected a mapping of code -> rule")
            covered: dict[str, tuple[str, int | None]] = {}
            for code_key, code_raw in codes.items():
                code_path = f"{path}.codes.{code_key}"
                rule = _compile_rule(code_raw, codes, code_key, code_path,
                                     f"{signal}:{code_key}", settings.watch)
                for part in str(code_key).split(","):
                    part = part.strip()
                    if not part:
                        raise codes.error(code_key, code_path, "empty code in a list")
                    span = _CODE_SPAN.match(part)
                    if span:
                        low, high = int(span.group(1)), int(span.group(2))
                        if low > high:
                            raise codes.error(code_key, code_path, f"range {part} runs backwards")
                        names = [str(n) for n in range(low, high + 1)]
                        entry.spans.insert(0, (low, high, rule))
                    else:
                        names = [part]
                        entry.exact[part] = rule
                    for name in names:
                        earlier = covered.get(name)
                        if earlier and earlier[0] == codes.file_of(code_key):
                            raise codes.error(code_key, code_path,
                                              f"code {name} already has a rule (line {earlier[1]})")
                        covered[name] = (codes.file_of(code_key), codes.line_of(code_key))
        else:
            entry.rule = _compile_rule(raw, rules, signal, path, signal, settings.watch)
        compiled[signal] = entry
    return compiled


def _compile_settings(doc: MarkedDict) -> Settings:
    raw = doc.get("settings")
    if not isinstance(raw, MarkedDict):
        raise DataFileError(doc.file, doc.line, "settings", "missing (the default policy has them)")
    for key in raw:
        if key not in SETTINGS_KEYS:
            raise raw.error(key, f"settings.{key}",
                            f"unknown key (known: {', '.join(sorted(SETTINGS_KEYS))})")
    missing = SETTINGS_KEYS - set(raw)
    if missing:
        raise DataFileError(raw.file, raw.line, "settings", f"missing {', '.join(sorted(missing))}")
    watch = _escalation(raw["watch"], raw, "watch", "settings.watch", None)
    refence = _escalation(raw["refence"], raw, "refence", "settings.refence", None)
    unknown = _compile_rule(raw["unknown_signal"], raw, "unknown_signal",
                            "settings.unknown_signal", "unknown_signal", watch)
    corr = raw["correlation"]
    if not isinstance(corr, MarkedDict):
        raise raw.error("correlation", "settings.correlation", "expected a mapping")
    for key in corr:
        if key not in CORRELATION_KEYS:
            raise corr.error(key, f"settings.correlation.{key}",
                             f"unknown key (known: {', '.join(sorted(CORRELATION_KEYS))})")
    missing = CORRELATION_KEYS - set(corr)
    if missing:
        raise raw.error("correlation", "settings.correlation", f"missing {', '.join(sorted(missing))}")
    fence = _class_name(corr, "fence", "settings.correlation.fence")
    if fence not in FENCE_CLASSES:
        raise corr.error("fence", "settings.correlation.fence", "must be drain, down, reboot or replace")
    signals = corr["hardware_signals"]
    if not isinstance(signals, list) or not all(isinstance(s, str) for s in signals):
        raise corr.error("hardware_signals", "settings.correlation.hardware_signals",
                         "expected a list of signal names")
    correlation = Correlation(
        before_s=float(_number(corr, "before_s", "settings.correlation.before_s")),
        after_s=float(_number(corr, "after_s", "settings.correlation.after_s")),
        fence=fence, hardware_signals=frozenset(signals))
    return Settings(
        unknown_signal=unknown, watch=watch, refence=refence, correlation=correlation,
        app_dedup_window_s=float(_number(raw, "app_dedup_window_s", "settings.app_dedup_window_s")),
        breaker_max_share=float(_number(raw, "breaker_max_share", "settings.breaker_max_share",
                                        maximum=1)),
        breaker_window_s=float(_number(raw, "breaker_window_s", "settings.breaker_window_s")))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {(str(k) if not isinstance(k, (str, int, float, bool)) else k): _plain(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
