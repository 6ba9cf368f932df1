"""The smallest end-to-end check: TF's client creates and reads a network."""

from __future__ import annotations

from typing import Any


def test_create_and_read_network(vnc: Any) -> None:
    from vnc_api import vnc_api as v

    proj = vnc.project_read(fq_name=["default-domain", "default-project"])
    vn = v.VirtualNetwork("smoke-vn", proj)
    vn.add_network_ipam(
        vnc.network_ipam_read(fq_name=["default-domain", "default-project",
                                       "default-network-ipam"]),
        v.VnSubnetsType([v.IpamSubnetType(subnet=v.SubnetType("192.0.2.0", 24))]),
    )
    uuid = vnc.virtual_network_create(vn)
    got = vnc.virtual_network_read(id=uuid)
    subnet = got.get_network_ipam_refs()[0]["attr"].ipam_subnets[0]
    assert subnet.default_gateway == "192.0.2.254"
    assert subnet.dns_server_address == "192.0.2.253"
    assert got.virtual_network_network_id >= 1
