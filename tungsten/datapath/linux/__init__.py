"""The ``linux`` datapath: stock-kernel forwarding through netlink (pyroute2).

``plan`` is pure (desired kernel objects and the diff); ``netlink`` is the adapter;
``datapath`` is the ``Datapath`` backend; ``plumb`` wires workload namespaces to a node.
"""

from tungsten.datapath.linux.datapath import LinuxDatapath
from tungsten.datapath.linux.plan import Owner

__all__ = ["LinuxDatapath", "Owner"]
