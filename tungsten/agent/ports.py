"""The local port registry: which ports this node has, persisted so that a restarted agent
re-adopts them (and never flushes the datapath in the meantime)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

FILE_NAME = "ports.json"


@dataclass
class PortRecord:
    uuid: str
    name: str = ""
    created: bool = False  # the agent created the VMI and instance-ip (and deletes them)


@dataclass
class PortRegistry:
    """Ports by uuid, plus VMIs whose deletion through the config API is still owed."""

    path: Path | None = None
    ports: dict[str, PortRecord] = field(default_factory=dict)
    pending_deletes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path | None) -> PortRegistry:
        if state_dir is None:
            return cls()
        path = state_dir / FILE_NAME
        reg = cls(path=path)
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return reg
        except (OSError, orjson.JSONDecodeError) as e:
            raise ValueError(f"cannot read the port registry {path}: {e}") from None
        for p in data.get("ports", []):
            rec = PortRecord(uuid=str(p["uuid"]), name=str(p.get("name", "")),
                             created=bool(p.get("created", False)))
            reg.ports[rec.uuid] = rec
        reg.pending_deletes = [str(u) for u in data.get("pending_deletes", [])]
        return reg

    def save(self) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({"ports": [asdict(p) for p in self.ports.values()],
                             "pending_deletes": self.pending_deletes},
                            option=orjson.OPT_INDENT_2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(body)
        with contextlib.suppress(OSError), open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
