"""`pitstop hooks install` / `uninstall`: put pitstop on a node, and take it all back.

What goes in: the agent's systemd unit, a default agent and hooks configuration (only
where none exists), three small wrapper programs that Slurm runs (Slurm's Prolog,
Epilog and HealthCheckProgram take a path, not a command line, and run with no PATH),
and the slurm.conf lines that name them. Every change is recorded in a manifest: a file
we created is removed on uninstall, a slurm.conf line we replaced is commented out with
a marker (and restored), a copy of slurm.conf as it was is kept beside it. So an
install followed by an uninstall leaves the prefix byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pitstop.fsutil import write_atomic, write_json_atomic
from pitstop.systemd import render_unit

UNIT_NAME = "pitstop-agent.service"
MANIFEST = Path("var/lib/pitstop/install-manifest.json")
BLOCK_BEGIN = "# BEGIN pitstop hooks (pitstop hooks install; removed by pitstop hooks uninstall)"
BLOCK_END = "# END pitstop hooks"
REPLACED_MARK = "#pitstop-replaced# "
BACKUP_SUFFIX = ".pitstop-backup"
HEALTHCHECK_INTERVAL_S = 300
WATCHDOG_S = 60
HOOK_NAMES = ("prolog", "epilog", "healthcheck")

DEFAULT_AGENT_CONFIG = """\
# pitstop agent settings (written by `pitstop hooks install`; every key is also a flag
# of `pitstop agent run`). See `pitstop agent run --help`.
state_dir: /var/lib/pitstop
port: 9464
dry_run: false
"""

DEFAULT_HOOKS_CONFIG = """\
# pitstop hooks settings: what a healthy node has (`pitstop check list` shows them all).
# expected_gpus: 8
# min_free: {/scratch: 10%, /checkpoints: 50GiB}
# mounts: [/fsx]
agent_port: 9464
"""


@dataclass(frozen=True)
class InstallPlan:
    prefix: Path
    python: str = sys.executable
    slurm_conf: Path | None = None  # default <prefix>/etc/slurm/slurm.conf
    healthcheck_interval: int = HEALTHCHECK_INTERVAL_S
    reboot_program: str = "/usr/sbin/reboot"
    hooks_config: str = "/etc/pitstop/hooks.yaml"  # as the node sees it

    def path(self, relative: str) -> Path:
        return self.prefix / relative.lstrip("/")

    @property
    def conf(self) -> Path:
        return self.slurm_conf or self.path("etc/slurm/slurm.conf")

    @property
    def hook_dir(self) -> Path:
        return self.path("usr/local/libexec/pitstop")

    def installed(self, path: Path) -> str:
        """The path as the node will see it (the prefix is where it is staged)."""
        return "/" + str(path.relative_to(self.prefix)) if self.prefix != Path("/") else str(path)

    def unit(self) -> str:
        return render_unit({
            "Unit": [("Description", "pitstop node agent: watch, decide, fence"),
                     ("After", "network-online.target slurmd.service"),
                     ("Wants", "network-online.target")],
            "Service": [("Type", "notify"),
                        ("ExecStart", f"{self.python} -m pitstop agent run --config /etc/pitstop/agent.yaml"),
                        ("Restart", "always"), ("RestartSec", "5"), ("WatchdogSec", str(WATCHDOG_S)),
                        ("NotifyAccess", "main")],
            "Install": [("WantedBy", "multi-user.target")],
        })

    def wrapper(self, hook: str) -> str:
        conf = self.installed(self.conf)
        return (f"#!/bin/sh\n# pitstop's Slurm {hook} (pitstop hooks install). Slurm runs it with no PATH.\n"
                f"export SLURM_CONF=\"${{SLURM_CONF:-{conf}}}\"\n"
                f"exec {self.python} -m pitstop hooks {hook} --config {self.hooks_config}\n")

    def files(self) -> list[tuple[Path, str, int, bool]]:
        """(path, text, mode, keep an existing one)"""
        out = [(self.path(f"etc/systemd/system/{UNIT_NAME}"), self.unit(), 0o644, False),
               (self.path("etc/pitstop/agent.yaml"), DEFAULT_AGENT_CONFIG, 0o644, True),
               (self.path("etc/pitstop/hooks.yaml"), DEFAULT_HOOKS_CONFIG, 0o644, True)]
        out += [(self.hook_dir / hook, self.wrapper(hook), 0o755, False) for hook in HOOK_NAMES]
        return out

    def conf_settings(self, current: dict[str, str]) -> dict[str, str]:
        """The slurm.conf keys and values pitstop sets, given the file's current ones."""
        hook = lambda name: self.installed(self.hook_dir / name)
        scheduler = current.get("schedulerparameters", "")
        params = [p for p in scheduler.split(",") if p]
        # A prolog failure requeues unheld; a job may grow back onto a free node after
        # using its spare (pitstop.recipes.allocation).
        for wanted in ("nohold_on_prolog_fail", "permit_job_expansion"):
            if wanted not in params:
                params.append(wanted)
        flags = [f for f in current.get("prologflags", "").split(",") if f]
        if "Alloc" not in flags:
            flags.append("Alloc")
        settings = {"Prolog": hook("prolog"), "Epilog": hook("epilog"), "PrologFlags": ",".join(flags),
                    "SchedulerParameters": ",".join(params), "HealthCheckProgram": hook("healthcheck"),
                    "HealthCheckInterval": str(self.healthcheck_interval)}
        if "rebootprogram" not in current:
            settings["RebootProgram"] = self.reboot_program  # an existing one is kept
        return settings


_CONF_LINE = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")


def conf_values(text: str) -> dict[str, str]:
    """Top-level key=value settings of slurm.conf (keys lower-cased; node lines skipped)."""
    values = {}
    for line in text.splitlines():
        match = _CONF_LINE.match(line.split("#", 1)[0])
        if match and match.group(1).lower() not in ("nodename", "partitionname"):
            values[match.group(1).lower()] = match.group(2)
    return values


def edit_conf(text: str, settings: dict[str, str]) -> str:
    """slurm.conf with our keys' old lines commented out (marked) and our block appended."""
    wanted = {k.lower() for k in settings}
    lines = []
    for line in text.splitlines(keepends=True):
        match = _CONF_LINE.match(line.split("#", 1)[0])
        if match and match.group(1).lower() in wanted:
            line = REPLACED_MARK + line
        lines.append(line)
    body = "".join(lines)
    if body and not body.endswith("\n"):
        body += "\n"
    block = [BLOCK_BEGIN, *(f"{k}={v}" for k, v in settings.items()), BLOCK_END]
    return body + "\n".join(block) + "\n"


def revert_conf(text: str) -> str:
    """The inverse of `edit_conf`."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if stripped == BLOCK_BEGIN:
            inside = True
            continue
        if stripped == BLOCK_END:
            inside = False
            continue
        if inside:
            continue
        out.append(line[len(REPLACED_MARK):] if line.startswith(REPLACED_MARK) else line)
    return "".join(out)


@dataclass
class Step:
    """One change: `write` a file, `edit` slurm.conf, `keep` an existing file, `mkdir`."""

    kind: str
    path: Path
    text: str = ""
    mode: int = 0o644
    detail: str = ""


@dataclass
class Manifest:
    created_files: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    edited: dict[str, str] = field(default_factory=dict)  # file -> backup

    def to_dict(self) -> dict:
        return {"created_files": self.created_files, "created_dirs": self.created_dirs, "edited": self.edited}


def plan_steps(plan: InstallPlan) -> list[Step]:
    steps = []
    for path, text, mode, keep_existing in plan.files():
        if keep_existing and path.exists():
            steps.append(Step("keep", path, detail="exists; left as it is"))
        else:
            steps.append(Step("write", path, text, mode))
    conf = plan.conf
    if conf.exists():
        current = conf.read_text()
        if BLOCK_BEGIN in current:
            steps.append(Step("keep", conf, detail="already has pitstop's block"))
        else:
            steps.append(Step("edit", conf, edit_conf(current, plan.conf_settings(conf_values(current))),
                              detail=f"backup {conf}{BACKUP_SUFFIX}"))
    else:
        settings = plan.conf_settings({})
        steps.append(Step("missing", conf, "\n".join(f"{k}={v}" for k, v in settings.items()) + "\n",
                          detail="no slurm.conf here: add these lines where yours is"))
    return steps


def describe(plan: InstallPlan, steps: list[Step]) -> str:
    """What install would do, text and all (the dry run; golden-tested)."""
    out = [f"pitstop hooks install --prefix {plan.prefix} (dry run: nothing written)"]
    for step in steps:
        if step.kind == "write":
            out.append(f"\n== write {step.path} (mode {step.mode:o})")
            out.append(step.text.rstrip("\n"))
        elif step.kind == "edit":
            before = step.path.read_text().splitlines()
            after = step.text.splitlines()
            out.append(f"\n== edit {step.path} ({step.detail})")
            out += [f"- {line}" for line in before if line not in after]
            out += [f"+ {line}" for line in after if line not in before]
        else:
            out.append(f"\n== {step.kind} {step.path}: {step.detail}")
            if step.text:
                out.append(step.text.rstrip("\n"))
    return "\n".join(out) + "\n"


def _make_dirs(path: Path, manifest: Manifest) -> None:
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        directory.mkdir()
        manifest.created_dirs.append(str(directory))


def install(plan: InstallPlan) -> tuple[list[Step], Manifest]:
    manifest_path = plan.path(str(MANIFEST))
    if manifest_path.exists():
        raise FileExistsError(f"pitstop is already installed under {plan.prefix} ({manifest_path}); "
                              "run `pitstop hooks uninstall` first")
    steps = plan_steps(plan)
    manifest = Manifest()
    for step in steps:
        if step.kind == "write":
            _make_dirs(step.path.parent, manifest)
            write_atomic(step.path, step.text, mode=step.mode)
            os.chmod(step.path, step.mode)
            manifest.created_files.append(str(step.path))
        elif step.kind == "edit":
            backup = Path(f"{step.path}{BACKUP_SUFFIX}")
            original = step.path.read_bytes()
            write_atomic(backup, original, mode=step.path.stat().st_mode & 0o777)
            mode = step.path.stat().st_mode & 0o777
            write_atomic(step.path, step.text, mode=mode)
            os.chmod(step.path, mode)
            manifest.edited[str(step.path)] = str(backup)
    _make_dirs(manifest_path.parent, manifest)
    write_json_atomic(manifest_path, manifest.to_dict(), indent=2)
    return steps, manifest


def uninstall(prefix: Path) -> list[str]:
    """Undo what the manifest records; returns what was done."""
    manifest_path = prefix / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"no pitstop install under {prefix} ({manifest_path} is missing)")
    data = json.loads(manifest_path.read_text())
    done = []
    for conf, backup in data.get("edited", {}).items():
        conf_path, backup_path = Path(conf), Path(backup)
        if conf_path.exists():
            reverted = revert_conf(conf_path.read_text())
            mode = conf_path.stat().st_mode & 0o777
            write_atomic(conf_path, reverted, mode=mode)
            os.chmod(conf_path, mode)
            done.append(f"reverted {conf_path}")
        if backup_path.exists():
            backup_path.unlink()
            done.append(f"removed {backup_path}")
    for file in data.get("created_files", []):
        Path(file).unlink(missing_ok=True)
        done.append(f"removed {file}")
    manifest_path.unlink()
    for directory in reversed(data.get("created_dirs", [])):
        try:
            Path(directory).rmdir()
            done.append(f"removed {directory}/")
        except OSError:
            done.append(f"kept {directory}/ (not empty)")
    return done


# --- node setup: install, then enable (what cloud-init or a lifecycle script calls) -----

def enable_commands(prefix: Path) -> list[list[str]]:
    if prefix != Path("/"):
        return []  # a staged prefix is not this machine's systemd
    return [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]]
