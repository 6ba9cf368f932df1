"""``tungsten-cni --install DIR`` writes a launcher that runs the plugin isolated and
without ``site``; it answers like the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tungsten.cni import install


def test_launcher_runs_the_plugin_isolated(tmp_path: Path) -> None:
    path = install.install(tmp_path / "bin")
    text = path.read_text()
    assert text.startswith(f"#!{sys.executable} -IS\n")
    assert path.stat().st_mode & 0o777 == 0o755
    r = subprocess.run([str(path)], input=b'{"cniVersion": "1.0.0"}',
                       env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                       capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]
    # isolated: a PYTHONPATH pointing elsewhere changes nothing
    r2 = subprocess.run([str(path)], input=b"{}", capture_output=True, timeout=60,
                        env={"CNI_COMMAND": "VERSION", "PYTHONPATH": str(tmp_path)},
                        check=False)
    assert r2.returncode == 0, r2.stderr
    assert list(tmp_path.glob("bin/.tungsten-cni.*")) == []  # no temporary file left


def test_install_is_idempotent_and_usage_is_checked(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert install.cli(["--install", str(tmp_path)]) == 0
    assert install.cli(["--install", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["tungsten-cni"]
    assert install.cli(["--bogus"]) == 2
    assert "usage" in capsys.readouterr().err


def test_a_blank_in_the_interpreter_path_is_refused() -> None:
    with pytest.raises(ValueError, match="blanks"):
        install.launcher("/opt/my python/bin/python3", "/x")
