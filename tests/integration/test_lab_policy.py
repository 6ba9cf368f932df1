"""A network policy in a real lab (root): ``red → blue tcp/5432``, direction ``>``.

The allowed port passes, another port and ICMP drop, and the reverse direction of the ``>``
rule drops.  Servers run in the workloads' namespaces through ``lab exec`` and are killed in
``finally``; the lab is taken down and anything left of it removed.  Documentation ranges
only; every probe has a bounded timeout and nothing is timed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.labkit import (
    NEEDS_ROOT,
    RED_BLUE_POLICY,
    Lab,
    assert_nothing_left,
    lab_session,
)

pytestmark = NEEDS_ROOT


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_session(tmp_path, RED_BLUE_POLICY, "p", Lab, up=True, port=5432) as lab:
        yield lab


def test_policy_exactness(lab: Lab) -> None:
    ip = lab.ips()
    with lab.serving({"db1": (5432, 5433), "web1": (5432,)}):
        # the allowed port passes (and its replies come back: the connection completes)
        assert lab.tcp("web1", ip["db1"], 5432)
        # another port of the same workload drops
        assert not lab.tcp("web1", ip["db1"], 5433)
        # ICMP is not in the rule: dropped
        assert not lab.ping("web1", ip["db1"])
        # the reverse direction of a `>` rule drops
        assert not lab.tcp("db1", ip["web1"], 5432)
        assert not lab.ping("db1", ip["web1"])
        # and the allowed one still passes afterwards
        assert lab.tcp("web1", ip["db1"], 5432)
    r = lab.run("down", lab.name)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(lab)
