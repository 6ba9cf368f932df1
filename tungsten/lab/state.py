"""A lab's state on disk: ``<labs dir>/<name>/lab.json``.

Everything ``up`` makes is written here *before* it is made (namespaces, the lab directory)
or right after it exists (process ids; the processes are also recognisable by their command
line, which names the lab directory), so ``down`` can remove all of it after any crash.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "lab.json"


def labs_dir() -> Path:
    """$TUNGSTEN_STATE_DIR/labs (alias $CONTRAIL_STATE_DIR) if set, else /run/tungsten/labs
    (a tmpfs, emptied at boot like the namespaces themselves)."""
    for name in ("TUNGSTEN_STATE_DIR", "CONTRAIL_STATE_DIR"):
        if os.environ.get(name):
            return Path(os.environ[name]) / "labs"
    return Path("/run/tungsten/labs")


@dataclass
class Proc:
    role: str  # controller | agent:<node>
    pid: int
    create_time: float  # psutil's, to never signal a recycled pid


@dataclass
class LabState:
    name: str
    labdir: str
    phase: str = "creating"  # creating | up | failed
    source: str = ""
    up_pid: int = 0
    up_create_time: float = 0.0
    namespaces: list[str] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)
    controller: str = ""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.labdir) / STATE_FILE

    def save(self) -> None:
        """Write atomically and durably (a crash leaves the old or the new file)."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, labdir: Path) -> LabState | None:
        try:
            data = json.loads((labdir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        procs = [Proc(**p) for p in data.pop("processes", [])]
        return cls(**data, processes=procs)

    def status(self) -> dict[str, Any]:
        """What ``tungsten lab status --json`` prints."""
        return {"name": self.name, "phase": self.phase, "state_dir": self.labdir,
                "controller": self.controller, "nodes": self.nodes,
                "workloads": self.workloads}


def lab_names() -> list[str]:
    d = labs_dir()
    try:
        return sorted(p.name for p in d.iterdir() if p.is_dir())
    except OSError:
        return []
