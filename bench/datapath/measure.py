"""Traffic between two namespaces: iperf3 TCP and UDP, an RFC 2544-style zero-loss search, ping.

Every tool runs under ``ip netns exec`` in namespaces the benchmark made; iperf3 servers are
started and stopped here by their pid.

UDP uses ``iperf3 -u -l 18``: 18 bytes of payload + 8 UDP + 20 IPv4 = a 46-byte IP packet, the
Ethernet minimum, i.e. a 64-byte frame on the wire with its 14-byte header and 4-byte FCS (60
bytes on a veth, which has no FCS).  iperf3's ``-b`` counts payload bits, so an offered rate
of *r* packets/s is ``-b`` *r* × 18 × 8.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PORT = 5201
UDP_PAYLOAD = 18  # bytes: a 64-byte Ethernet frame (see the module docstring)
# socket buffers (capped by net.core.rmem_max): with the default, a receiving iperf3 that waits
# a few ms for a CPU overflows its buffer, and the search would measure the scheduler
UDP_BUFFER = "4M"


class MeasureError(RuntimeError):
    pass


def in_ns(netns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


class Server:
    """``iperf3 -s`` in a namespace, for as long as the ``with`` block runs."""

    def __init__(self, netns: str, ip: str) -> None:
        self.netns, self.ip = netns, ip
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(in_ns(self.netns, "iperf3", "-s", "-B", self.ip, "-p",
                                           str(PORT)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        try:
            while not self._listening():
                if self.proc.poll() is not None:
                    raise MeasureError(f"iperf3 server in {self.netns} exited "
                                       f"({self.proc.returncode})")
                if time.monotonic() > deadline:
                    raise MeasureError(f"iperf3 server in {self.netns} not listening "
                                       "after 20 s")
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _listening(self) -> bool:
        out = subprocess.run(in_ns(self.netns, "ss", "-Htln", f"sport = :{PORT}"),
                             capture_output=True, text=True, check=False).stdout
        return bool(out.strip())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def iperf3(netns: str, dst: str, args: list[str], seconds: float) -> dict[str, Any]:
    """One iperf3 client run (JSON); retried while the server is still busy with the last."""
    cmd = in_ns(netns, "iperf3", "-c", dst, "-p", str(PORT), "-J", "-i", "0",
                "-t", f"{seconds:g}", *args)
    last = ""
    for _ in range(5):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            last = f"no answer after {seconds + 30:g} s"
            continue
        try:
            data: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            last = (proc.stderr or proc.stdout).strip()[-300:]
            time.sleep(1)
            continue
        if "error" in data:
            last = str(data["error"])
            time.sleep(1)  # "the server is busy": the previous test is still closing
            continue
        return data
    raise MeasureError(f"iperf3 {' '.join(args)} to {dst} from {netns}: {last}")


def tcp(netns: str, dst: str, streams: int, seconds: float) -> float:
    """TCP goodput in Gbit/s as the receiver counted it."""
    data = iperf3(netns, dst, ["-P", str(streams)], seconds)
    return round(float(data["end"]["sum_received"]["bits_per_second"]) / 1e9, 3)


@dataclass(frozen=True)
class UdpTrial:
    offered_pps: float  # 0: unlimited (-b 0)
    sent_pps: float
    received_pps: float
    lost: int
    loss_pct: float

    def as_dict(self) -> dict[str, Any]:
        return {"offered_pps": round(self.offered_pps), "sent_pps": round(self.sent_pps),
                "received_pps": round(self.received_pps), "lost": self.lost,
                "loss_pct": round(self.loss_pct, 3)}


def udp_trial(netns: str, dst: str, pps: float, seconds: float) -> UdpTrial:
    bps = 0 if pps <= 0 else max(1, round(pps * UDP_PAYLOAD * 8))
    data = iperf3(netns, dst, ["-u", "-l", str(UDP_PAYLOAD), "-w", UDP_BUFFER, "-b", str(bps)],
                  seconds)
    sent, got = data["end"]["sum_sent"], data["end"]["sum_received"]
    secs = float(got["seconds"]) or seconds
    lost = max(0, int(got["lost_packets"]))
    received = max(0, int(got["packets"]) - lost)
    return UdpTrial(pps, int(sent["packets"]) / (float(sent["seconds"]) or seconds),
                    received / secs, lost, float(got.get("lost_percent") or 0))


def zero_loss(netns: str, dst: str, seconds: float, steps: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    """RFC 2544-style throughput: the highest offered rate that loses no packet.

    First an unlimited trial (``-b 0``) gives the ceiling (what the sender and path manage,
    with whatever loss); if it lost nothing, that is the result.  Otherwise ``steps`` rounds
    of binary search between 0 and that ceiling, loss threshold 0.  The result is the
    received rate of the best lossless trial.
    """
    top = udp_trial(netns, dst, 0, seconds)
    log(f"udp max: {top.received_pps:,.0f} pps received, {top.lost} lost")
    lo, hi = 0.0, max(top.sent_pps, 1.0)
    best: UdpTrial | None = top if top.lost == 0 else None  # the sender's ceiling, lossless
    trials = [top.as_dict()]
    for _ in range(steps if best is None else 0):
        mid = (lo + hi) / 2
        t = udp_trial(netns, dst, mid, seconds)
        trials.append(t.as_dict())
        log(f"udp {mid:,.0f} pps offered: {t.received_pps:,.0f} received, {t.lost} lost")
        if t.lost == 0:
            lo = mid
            if best is None or t.received_pps > best.received_pps:
                best = t
        else:
            hi = mid
    while best is None and hi > top.sent_pps / 100:
        # nothing lossless yet (a noisy machine): keep halving, as RFC 2544 would keep going
        hi /= 2
        t = udp_trial(netns, dst, hi, seconds)
        trials.append(t.as_dict())
        log(f"udp {hi:,.0f} pps offered: {t.received_pps:,.0f} received, {t.lost} lost")
        if t.lost == 0:
            best = t
    return {"zero_loss_pps": round(best.received_pps) if best else 0,
            "max_pps": round(top.received_pps),
            "max_loss_pct": round(top.loss_pct, 2),
            "trials": trials}


def ping(netns: str, dst: str, count: int, interval: float) -> dict[str, Any]:
    """Round-trip times of ``count`` pings ``interval`` s apart: p50/p99 in ms."""
    proc = subprocess.run(in_ns(netns, "ping", "-n", "-c", str(count), "-i", f"{interval:g}",
                                "-W", "1", dst),
                          capture_output=True, text=True, check=False,
                          timeout=count * interval + 30)
    rtts = [float(part.split("=", 1)[1]) for line in proc.stdout.splitlines()
            for part in line.split() if part.startswith("time=")]
    if not rtts:
        raise MeasureError(f"ping {dst} from {netns}: no reply ({proc.stderr.strip()[-200:]})")
    return {"p50_ms": round(quantile(rtts, 0.50), 3), "p99_ms": round(quantile(rtts, 0.99), 3),
            "sent": count, "received": len(rtts)}


def new_flow_ping(netns: str, dst: str, count: int) -> dict[str, Any]:
    """Round-trip time of the first packet of a flow: ``count`` separate one-packet pings,
    each with its own ICMP identifier, so each request is a new conntrack entry that meets
    the policy (its reply is already established)."""
    rtts: list[float] = []
    for _ in range(count):
        proc = subprocess.run(in_ns(netns, "ping", "-n", "-c", "1", "-W", "1", dst),
                              capture_output=True, text=True, check=False, timeout=30)
        rtts += [float(part.split("=", 1)[1]) for line in proc.stdout.splitlines()
                 for part in line.split() if part.startswith("time=")]
    if not rtts:
        raise MeasureError(f"ping {dst} from {netns}: no reply")
    return {"p50_ms": round(quantile(rtts, 0.50), 3), "sent": count, "received": len(rtts)}


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def spread(values: list[float]) -> float:
    """(max - min) / median, in %; 0 for fewer than two values."""
    if len(values) < 2 or statistics.median(values) == 0:
        return 0.0
    return round(100 * (max(values) - min(values)) / statistics.median(values), 1)
