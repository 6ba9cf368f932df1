"""What every benchmark report needs: the machine it ran on and a generated docs section."""

from __future__ import annotations

import os
import platform
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }


def update_docs_section(title: str, begin: str, end: str, section: str,
                        png: Path, img_name: str) -> Path:
    """Replace the text between ``begin`` and ``end`` in docs/performance.md with ``section``
    (which includes both markers), appending it under ``title`` the first time; copy the plot
    to docs/img/``img_name``."""
    doc = REPO / "docs" / "performance.md"
    img = REPO / "docs" / "img" / img_name
    img.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, img)
    text = doc.read_text() if doc.exists() else "# Performance\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + section + "\n"
    doc.write_text(text)
    return doc
