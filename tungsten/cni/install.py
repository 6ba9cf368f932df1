"""``tungsten-cni --install DIR``: write a fast launcher for the plugin into a CNI plugin
directory.

The console script pip writes starts a full interpreter: ``site`` runs every ``.pth`` file
of the environment (an editable install's import finder alone costs ~9 ms) before the plugin
imports anything.  The plugin needs only the standard library and its own package, so the
launcher runs the same interpreter isolated and without ``site`` (``python -IS``: no
``.pth`` files, no user site, no ``PYTHON*`` variables) with the package's directory put on
the path by hand.  A plugin is executed once per container operation, and twenty at once
share the node's cores: its start-up is most of its cost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

NAME = "tungsten-cni"
USAGE = f"usage: {NAME} --install DIR   (write the plugin's launcher into DIR)"


def launcher(python: str, root: str) -> str:
    """The launcher's text: ``python`` runs it isolated, importing ``tungsten`` from
    ``root``."""
    if any(c.isspace() for c in python):
        raise ValueError(f"the interpreter path {python!r} has blanks: a shebang cannot")
    return (f"#!{python} -IS\n"
            f"# written by `{NAME} --install`: isolated, no site (see tungsten/cni/install.py)\n"
            "import sys\n"
            f"sys.path.insert(0, {root!r})\n"
            "from tungsten.cni.plugin import main\n"
            "main()\n")


def package_root() -> str:
    """The directory holding the ``tungsten`` package this code runs from."""
    import tungsten

    return str(Path(tungsten.__file__).resolve().parent.parent)


def install(directory: Path, python: str | None = None) -> Path:
    """Write ``directory/tungsten-cni`` (atomically, mode 0755); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / NAME
    text = launcher(python or sys.executable, package_root())
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{NAME}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def cli(args: list[str]) -> int:
    """``--install DIR``; anything else is a usage error (runtimes pass no arguments)."""
    if len(args) != 2 or args[0] != "--install":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        path = install(Path(args[1]))
    except (OSError, ValueError) as e:
        print(f"{NAME}: cannot install into {args[1]}: {e}", file=sys.stderr)
        return 1
    print(f"{NAME}: wrote {path}", file=sys.stderr)
    return 0
