"""Content checks of security rules (network-policy and security-group rules, firewall
rules and services, address-group prefixes) that the schema's types cannot express.

The schema already checks types, enums (direction, ethertype) and the port range
[-1, 65535]; this module refuses what would otherwise reach the datapaths as a rule that can
never match: unknown protocols, inverted port ranges, prefixes that do not parse, and
subnets of the other address family than the rule's ethertype.  Every check raises
``bad_request`` (400) naming the rule and the field, before anything is written.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tungsten.api.errors import bad_request

# names accepted wherever a protocol is a string (TF accepts these names or a number)
PROTOCOL_NAMES = frozenset({"any", "icmp", "igmp", "tcp", "udp", "icmp6", "sctp"})


def check_protocol(value: Any, where: str) -> None:
    text = str(value if value is not None else "any").strip().lower()
    if text in PROTOCOL_NAMES:
        return
    if text.isdigit() and 0 <= int(text) <= 255:
        return
    raise bad_request(f"Bad Request: {where}: invalid protocol {value!r} (give any, icmp, "
                      f"tcp, udp, icmp6, sctp, igmp or a number 0-255)")


def check_ports(ports: Any, where: str) -> None:
    """A PortType (or a list of them): -1 stands for 'any' on either end; otherwise
    start <= end."""
    for p in ports if isinstance(ports, list) else [ports]:
        if not isinstance(p, dict):
            continue
        start, end = p.get("start_port"), p.get("end_port")
        if not isinstance(start, int) or not isinstance(end, int):
            continue  # a missing end means "any": the schema checks the types
        if start == -1 or end == -1:
            if start != end:
                raise bad_request(f"Bad Request: {where}: port range {start}-{end} mixes -1 "
                                  "(any) with a port number; use -1-(-1) or 0-65535 for any")
            continue
        if start > end:
            raise bad_request(f"Bad Request: {where}: port range {start}-{end} is inverted "
                              "(start_port must not exceed end_port)")


def check_subnet(subnet: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A SubnetType: ip_prefix must be an address and ip_prefix_len fit its family."""
    if not isinstance(subnet, dict) or subnet.get("ip_prefix") in (None, ""):
        return None
    prefix, length = subnet.get("ip_prefix"), subnet.get("ip_prefix_len")
    try:
        addr = ipaddress.ip_address(str(prefix))
    except ValueError:
        raise bad_request(f"Bad Request: {where}: ip_prefix {prefix!r} is not an IP "
                          "address") from None
    if length is None:
        length = addr.max_prefixlen
    if not isinstance(length, int) or not 0 <= length <= addr.max_prefixlen:
        raise bad_request(f"Bad Request: {where}: ip_prefix_len {length!r} is out of range for "
                          f"{prefix} (0-{addr.max_prefixlen})")
    return ipaddress.ip_network(f"{addr}/{length}", strict=False)


def check_policy_rules(rules: list[dict[str, Any]], *, sg: bool, ctx_name: str) -> None:
    """PolicyRuleType entries of a network policy or a security group."""
    for i, rule in enumerate(rules):
        where = f"{ctx_name} rule {i + 1}"
        check_protocol(rule.get("protocol"), where)
        check_ports(rule.get("src_ports") or [], f"{where} src_ports")
        check_ports(rule.get("dst_ports") or [], f"{where} dst_ports")
        ethertype = rule.get("ethertype") or "IPv4"
        for side in ("src_addresses", "dst_addresses"):
            for addr in rule.get(side) or []:
                if not isinstance(addr, dict):
                    continue
                nets = [check_subnet(addr.get("subnet"), f"{where} {side}")]
                nets += [check_subnet(s, f"{where} {side}")
                         for s in addr.get("subnet_list") or []]
                for net in nets:
                    if sg and net is not None and f"IPv{net.version}" != ethertype:
                        raise bad_request(
                            f"Bad Request: {where}: subnet {net} does not match the rule's "
                            f"ethertype {ethertype}")


def check_firewall_rule(props: dict[str, Any]) -> None:
    service = props.get("service")
    if isinstance(service, dict):
        check_ports(service.get("src_ports"), "firewall rule service src_ports")
        check_ports(service.get("dst_ports"), "firewall rule service dst_ports")
    for ep_name in ("endpoint_1", "endpoint_2"):
        ep = props.get(ep_name)
        if isinstance(ep, dict):
            check_subnet(ep.get("subnet"), f"firewall rule {ep_name} subnet")


def check_service_group(services: list[Any]) -> None:
    """The FirewallServiceType elements of a service group."""
    for i, svc in enumerate(services):
        if not isinstance(svc, dict):
            continue
        where = f"service group service {i + 1}"
        check_protocol(svc.get("protocol"), where)
        check_ports(svc.get("src_ports"), f"{where} src_ports")
        check_ports(svc.get("dst_ports"), f"{where} dst_ports")


def check_address_group(prefixes: list[Any]) -> None:
    """The SubnetType elements of an address group."""
    for i, subnet in enumerate(prefixes):
        check_subnet(subnet, f"address group prefix {i + 1}")
