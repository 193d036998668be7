"""A network partition between processes on one machine, made with network namespaces.

Three places, joined by two veth pairs:

    root namespace           router namespace            worker namespace
    (master, spare worker,   (forwards between the two;  (the worker that is cut off)
     the test)               the cut is made here)
    10.213.N.1/30  <-veth->  10.213.N.2/30
                             10.213.N.5/30  <-veth->     10.213.N.6/30

The cut is a DROP policy on the router's FORWARD chain: both ends still send every packet
without an error, and the packets vanish in between, as when a switch or a route fails. No
RST, no ICMP error, no interface going down: TCP connections stay open and retransmit, and a
new connection's SYN times out. (Dropping on the sender's own output chain would instead fail
its send with EPERM, and a link set down makes the kernel answer "network unreachable": each
a fast error that a real partition does not give.) `check_silent_drop` verifies this.

Every name is unique to one LinkedNamespaces, and its addresses are a /29 nothing on the
machine uses. On exit, whatever happened, both veth pairs and both namespaces are deleted by
name (the root namespace's route goes with its veth end); nothing is added to the root
namespace's firewall. Needs root, `ip` and `iptables`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

SUBNET = ipaddress.ip_network("10.213.0.0/16")  # one /29 of it per LinkedNamespaces


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=10)


def in_namespace(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], check=True, capture_output=True,
                          text=True, timeout=10)


@dataclass
class LinkedNamespaces:
    """The two namespaces and the addresses on each side of the cut."""

    router: str
    worker: str
    master_ip: str  # in the root namespace: where the master listens
    worker_ip: str  # in the worker namespace
    root_device: str  # the veth end in the root namespace
    cut_now: bool = False

    def leftovers(self) -> list[str]:
        """What of this link still exists (after the context has exited: nothing)."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
        names = {line.split()[0] for line in listed.splitlines() if line.strip()}
        left = [f"namespace {n}" for n in (self.router, self.worker) if n in names]
        device = subprocess.run(["ip", "link", "show", "dev", self.root_device], capture_output=True,
                                check=False)
        return left + ([f"device {self.root_device}"] if device.returncode == 0 else [])

    @property
    def prefix(self) -> tuple[str, ...]:
        """The argv prefix that runs a command inside the worker namespace."""
        return ("ip", "netns", "exec", self.worker)

    def cut(self) -> None:
        """Every packet between the worker namespace and the rest is dropped from now on."""
        in_namespace(self.router, "iptables", "-P", "FORWARD", "DROP")
        self.cut_now = True

    def restore(self) -> None:
        in_namespace(self.router, "iptables", "-P", "FORWARD", "ACCEPT")
        self.cut_now = False


@contextlib.contextmanager
def linked_namespaces() -> Iterator[LinkedNamespaces]:
    """A router and a worker namespace, joined to the root namespace as drawn above; both are
    deleted at exit, even when setting them up failed half way."""
    token = secrets.token_hex(3)  # names: "cq<token>r" (13 characters at most, as interfaces must)
    router, worker = f"cq{token}r", f"cq{token}w"
    base = _free_subnet()
    hosts = [str(base.network_address + i) for i in range(8)]
    root_side, router_west, router_east, worker_side = (f"cq{token}{end}"
                                                        for end in ("a0", "a1", "b1", "b0"))
    made: list[str] = []
    try:
        for namespace in (router, worker):
            ip("netns", "add", namespace)
            made.append(namespace)
        ip("link", "add", root_side, "type", "veth", "peer", "name", router_west, "netns", router)
        ip("-n", router, "link", "add", router_east, "type", "veth", "peer", "name", worker_side,
           "netns", worker)
        ip("addr", "add", f"{hosts[1]}/30", "dev", root_side)
        ip("link", "set", root_side, "up")
        ip("-n", router, "addr", "add", f"{hosts[2]}/30", "dev", router_west)
        ip("-n", router, "addr", "add", f"{hosts[5]}/30", "dev", router_east)
        ip("-n", worker, "addr", "add", f"{hosts[6]}/30", "dev", worker_side)
        for namespace, device in ((router, router_west), (router, router_east), (router, "lo"),
                                  (worker, worker_side), (worker, "lo")):
            ip("-n", namespace, "link", "set", device, "up")
        in_namespace(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ip("route", "add", f"{hosts[4]}/30", "via", hosts[2], "dev", root_side)
        ip("-n", worker, "route", "add", "default", "via", hosts[5])
        yield LinkedNamespaces(router, worker, master_ip=hosts[1], worker_ip=hosts[6],
                               root_device=root_side)
    finally:
        # The pairs first, by name: a deleted namespace takes its veth ends (and their peers)
        # along only once the kernel gets round to destroying it, which is not at once.
        _quietly("link", "del", root_side)
        if made:
            _quietly("-n", router, "link", "del", router_east)
        for namespace in reversed(made):
            _quietly("netns", "del", namespace)


def _quietly(*argv: str) -> None:
    """`ip argv` for clean-up: what is already gone is fine."""
    subprocess.run(["ip", *argv], check=False, capture_output=True, timeout=10)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /29 of SUBNET that no address or route on this machine overlaps. Wider routes (a
    default route, a 10.0.0.0/8) do not count: the /30 routes made here are more specific."""
    shown = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                           check=True).stdout
    shown += subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout
    taken = []
    for word in shown.split():
        try:
            network = ipaddress.ip_network(word, strict=False)
        except ValueError:
            continue
        if network.version == 4 and network.prefixlen >= SUBNET.prefixlen:
            taken.append(network)
    candidates = list(SUBNET.subnets(new_prefix=29))
    random.shuffle(candidates)
    for candidate in candidates:
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise RuntimeError(f"no free /29 left in {SUBNET}")


# The probe inside the worker namespace: one connection made before the cut, then told on
# stdin when the cut and the restore have happened; it says on stdout what it saw.
_PROBE = textwrap.dedent("""
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    conn = socket.create_connection((host, port), timeout=5)
    print("connected", flush=True)
    sys.stdin.readline()  # cut
    conn.sendall(b"w")  # must not fail: the packet leaves, then vanishes
    conn.settimeout(1.0)
    try:
        print("received during the cut", conn.recv(1), flush=True)
    except TimeoutError:
        print("silent", flush=True)
    except OSError as err:
        print("error during the cut", err, flush=True)
    try:
        socket.create_connection((host, port), timeout=1.0)
        print("connected during the cut", flush=True)
    except TimeoutError:
        print("connect timed out", flush=True)
    except OSError as err:
        print("connect failed fast", err, flush=True)
    sys.stdin.readline()  # restored
    conn.settimeout(10)
    print("after", conn.recv(1).decode(), flush=True)
""")


def check_silent_drop(link: LinkedNamespaces) -> list[str]:
    """Cuts and restores `link` around one TCP connection from the worker namespace; returns
    what went unlike a real partition (empty when the cut dropped silently: no error on either
    side, a connect that times out, and the connection carrying data again after the
    restore)."""
    import socket

    problems: list[str] = []
    with socket.create_server((link.master_ip, 0)) as server:
        port = server.getsockname()[1]
        probe = subprocess.Popen(
            [*link.prefix, sys.executable, "-c", _PROBE, link.master_ip, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert probe.stdin is not None and probe.stdout is not None
        try:
            server.settimeout(10)
            conn, _ = server.accept()
            assert probe.stdout.readline().strip() == "connected"
            with conn:
                link.cut()
                try:
                    conn.sendall(b"m")  # must not fail either
                except OSError as err:
                    problems.append(f"the master's side failed to send during the cut: {err}")
                probe.stdin.write("cut\n")
                probe.stdin.flush()
                for expected in ("silent", "connect timed out"):
                    seen = probe.stdout.readline().strip()
                    if seen != expected:
                        problems.append(f"during the cut: {seen!r}, not {expected!r}")
                time.sleep(0.5)  # retransmissions are dropped too, and still no reset comes of it
                link.restore()
                probe.stdin.write("restored\n")
                probe.stdin.flush()
                conn.settimeout(10)
                try:
                    if conn.recv(1) != b"w":
                        problems.append("the worker side's byte sent during the cut never arrived")
                except OSError as err:
                    problems.append(f"the connection did not survive the cut: {err}")
                seen = probe.stdout.readline().strip()
                if seen != "after m":
                    problems.append(f"after the restore the worker side saw {seen!r}, not 'after m'")
        finally:
            link.restore()
            probe.stdin.close()
            try:
                probe.wait(timeout=15)
            except subprocess.TimeoutExpired:
                probe.kill()
                probe.wait()
    return problems
