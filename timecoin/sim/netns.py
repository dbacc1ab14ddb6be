"""Multi-host networks on one Linux machine: one network namespace per host, veth pairs on a bridge.

Every network test on 127.0.0.1 meets the loopback exemptions (per-IP limits and IP bans never apply
to loopback, :mod:`timecoin.p2p.peers`). A :class:`Lab` gives each node a real, non-loopback address
of its own so those rules meet real addresses, and lets a test cut a host's cable (:meth:`Lab.link_down`).

Layout of one lab (root only; ``ip`` from iproute2)::

    root namespace:  bridge  tcn<tag>br  198.18.K.1/24      (K: a /24 of 198.18.0.0/15 free on this machine)
                       |- tcn<tag>v0  <veth>  eth0  198.18.K.2/24   in namespace tcn-<pid>-<tag>-<host0>
                       |- tcn<tag>v1  <veth>  eth0  198.18.K.3/24   in namespace tcn-<pid>-<tag>-<host1>
                       ...

198.18.0.0/15 is RFC 2544's benchmarking range: never routed on the internet, so nothing a lab does can
reach or be reached from elsewhere. Namespaces get ``lo`` up and **no default route**: they reach each
other and the bridge's address (the root namespace, where a test runs), nothing else.

Names: ``<tag>`` is 6 random hex digits, so parallel runs never collide; interface names stay within the
kernel's 15 characters; namespace names carry the creating PID. Every bridge and root-side veth carries
the alias ``timecoin-netns pid=<pid>``. :func:`sweep` removes what a dead process left behind (a test
killed by SIGKILL cannot run its finalizer); :meth:`Lab.destroy` runs from ``__exit__`` whatever happened.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from timecoin.errors import TimecoinError

PREFIX = "tcn"                                  # every interface and namespace a lab makes starts with this
ALIAS = "timecoin-netns pid="                   # the alias of a lab's bridge and root-side veths
RANGE = ipaddress.IPv4Network("198.18.0.0/15")   # RFC 2544 benchmarking range
HOST_IFACE = "eth0"                             # the veth end inside each namespace
CLONE_NEWNET = 0x40000000
_NS_NAME = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]{{6}})-")
_IP_TIMEOUT = 30.0


class NetnsError(TimecoinError):
    """A namespace or link operation failed; one line saying which and why."""


@dataclass(frozen=True)
class Host:
    """One host of a lab: its namespace, its address, and the bridge-side end of its cable."""

    name: str
    netns: str
    address: str
    veth: str                                   # root-namespace end (on the bridge)
    extra: list[str] = field(default_factory=list, compare=False)   # addresses added by add_addresses


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; NetnsError with ip's own message when it fails (and ``check``)."""
    try:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from None
    if check and res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        raise NetnsError(f"ip {' '.join(args)}: {why[-1] if why else f'exit code {res.returncode}'}")
    return res


def netns_permitted() -> tuple[bool, str]:
    """(True, "") when this process may make namespaces, veths and bridges; else (False, why not).

    Checks root, the ``ip`` command, and then makes and removes one trial namespace (containers without
    CAP_SYS_ADMIN, or with /run/netns not writable, fail only there).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "network namespaces need root (run as root, e.g. in CI)"
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is not installed"
    trial = f"{PREFIX}-{os.getpid()}-{random.SystemRandom().randrange(1 << 24):06x}-trial"
    try:
        _ip("netns", "add", trial)
    except NetnsError as exc:
        return False, f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", trial, "link", "set", "lo", "up")
    except NetnsError as exc:
        return False, f"cannot configure a network namespace: {exc}"
    finally:
        _ip("netns", "delete", trial, check=False)
    return True, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    """Names of every network namespace on this machine (``ip netns list``)."""
    res = _ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _links() -> list[dict[str, str]]:
    res = _ip("-j", "link", "show", check=False)
    try:
        links = json.loads(res.stdout or "[]")
    except ValueError:
        return []
    return [{"name": str(link.get("ifname", "")), "alias": str(link.get("ifalias", ""))} for link in links]


def leftovers(tag: str | None = None) -> list[str]:
    """Namespaces and root-namespace links of our prefix (of one lab's ``tag`` if given) that still exist."""
    ns_mark = f"-{tag}-" if tag else ""
    found = [f"netns {n}" for n in namespaces() if n.startswith(PREFIX + "-") and ns_mark in n]
    found += [f"link {link['name']}" for link in _links()
              if link["name"].startswith(PREFIX + (tag or "")) and link["alias"].startswith(ALIAS)]
    return found


def sweep() -> list[str]:
    """Remove namespaces, bridges and veths of our prefix whose creating process is gone; what was removed."""
    removed = []
    for ns in namespaces():
        m = _NS_NAME.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _ip("netns", "delete", ns, check=False)
            removed.append(f"netns {ns}")
    for link in _links():
        if link["name"].startswith(PREFIX) and link["alias"].startswith(ALIAS):
            try:
                pid = int(link["alias"][len(ALIAS):])
            except ValueError:
                continue
            if not _pid_alive(pid):
                _ip("link", "delete", link["name"], check=False)
                removed.append(f"link {link['name']}")
    return removed


def _used_subnets() -> set[ipaddress.IPv4Network]:
    res = _ip("-4", "-o", "addr", "show", check=False)
    used = set()
    for match in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+)/", res.stdout):
        addr = ipaddress.IPv4Address(match.group(1))
        if addr in RANGE:
            used.add(ipaddress.IPv4Network(f"{addr}/24", strict=False))
    return used


def _free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    used = _used_subnets()
    candidates = [net for net in RANGE.subnets(new_prefix=24) if net not in used]
    if not candidates:
        raise NetnsError(f"every /24 of {RANGE} is in use on this machine (leftover labs? see netns.sweep)")
    return rng.choice(candidates[1:] or candidates)     # 198.18.0.0/24 left to people who type it by hand


class Lab:
    """A bridge and one namespace per host (see the module docstring). A context manager: leaving it
    (normally or by an exception) removes everything it made.

    ``hosts``: names of the hosts (letters, digits, ``-``; used in namespace names and by the helpers).
    """

    def __init__(self, hosts: Sequence[str], rng: random.Random | None = None) -> None:
        if not hosts or len(set(hosts)) != len(hosts):
            raise NetnsError(f"a lab needs distinct host names, not {list(hosts)}")
        if len(hosts) > 200:
            raise NetnsError(f"a lab has at most 200 hosts (one /24), not {len(hosts)}")
        for name in hosts:
            if not re.match(r"^[A-Za-z0-9-]{1,32}$", name):
                raise NetnsError(f"host name {name!r}: 1 to 32 characters of A-Z a-z 0-9 - are required")
        self._rng = rng or random.Random(random.SystemRandom().getrandbits(64))
        self.tag = f"{self._rng.getrandbits(24):06x}"
        self.pid = os.getpid()
        self.bridge = f"{PREFIX}{self.tag}br"
        self.names = list(hosts)
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self._next_extra = 0
        self._made = False

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def bridge_address(self) -> str:
        return str(self._subnet()[1])

    def _subnet(self) -> ipaddress.IPv4Network:
        if self.subnet is None:
            raise NetnsError("the lab is not created yet (use `with Lab(...) as lab:` or lab.create())")
        return self.subnet

    def create(self) -> Lab:
        """Make the bridge, then each host's namespace and cable. On any failure, undo all and raise."""
        sweep()
        self._made = True
        try:
            self.subnet = _free_subnet(self._rng)
            prefix = self.subnet.prefixlen
            # nf_call_*: frames crossing this bridge skip the host's iptables (br_netfilter), so a host
            # firewall with a FORWARD DROP policy (as Docker installs) cannot silently cut the lab.
            _ip("link", "add", self.bridge, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0",
                "nf_call_arptables", "0")
            _ip("link", "set", self.bridge, "alias", f"{ALIAS}{self.pid}")
            _ip("addr", "add", f"{self.bridge_address}/{prefix}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(self.names):
                host = Host(name, f"{PREFIX}-{self.pid}-{self.tag}-{name}", str(self.subnet[2 + i]),
                            f"{PREFIX}{self.tag}v{i}")
                self.hosts[name] = host
                peer = host.veth + "p"
                _ip("netns", "add", host.netns)
                _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
                _ip("link", "set", host.veth, "alias", f"{ALIAS}{self.pid}")
                _ip("link", "set", peer, "netns", host.netns)
                _ip("-n", host.netns, "link", "set", peer, "name", HOST_IFACE)
                _ip("-n", host.netns, "addr", "add", f"{host.address}/{prefix}", "dev", HOST_IFACE)
                _ip("-n", host.netns, "link", "set", HOST_IFACE, "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
                _ip("link", "set", host.veth, "master", self.bridge)
                _ip("link", "set", host.veth, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> list[str]:
        """Remove every namespace, veth and the bridge of this lab (idempotent); what is left (should be [])."""
        if not self._made:
            return []
        for host in self.hosts.values():
            _ip("netns", "delete", host.netns, check=False)       # takes the namespace end of the veth along
            _ip("link", "delete", host.veth, check=False)         # ... and with it this end (already gone)
        _ip("link", "delete", self.bridge, check=False)
        return leftovers(self.tag)

    def __enter__(self) -> Lab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- helpers ---------------------------------------------------------------------------------
    def address(self, name: str) -> str:
        return self.host(name).address

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise NetnsError(f"no host {name!r} in this lab (hosts: {', '.join(self.names)})") from None

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``name``'s namespace (``ip netns exec``; it execs, so the PID is argv's)."""
        return ["ip", "netns", "exec", self.host(name).netns, *argv]

    def run(self, name: str, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in host ``name``'s namespace to completion; its output as text."""
        return subprocess.run(self.exec_argv(name, argv), capture_output=True, text=True, timeout=timeout)

    def link_down(self, name: str) -> None:
        """Unplug host ``name``'s cable (its bridge port goes down): it hears and reaches no one."""
        _ip("link", "set", self.host(name).veth, "down")

    def link_up(self, name: str) -> None:
        """Plug the cable back in."""
        _ip("link", "set", self.host(name).veth, "up")

    def add_addresses(self, name: str, count: int) -> list[str]:
        """Give host ``name`` ``count`` more addresses of the lab's /24 (many attackers from one namespace)."""
        subnet, host = self._subnet(), self.host(name)
        first = 2 + len(self.names) + self._next_extra
        if first + count > subnet.num_addresses - 1:
            raise NetnsError(f"the lab's {subnet} has no room for {count} more address(es)")
        added = [str(subnet[first + i]) for i in range(count)]
        for addr in added:
            _ip("-n", host.netns, "addr", "add", f"{addr}/{subnet.prefixlen}", "dev", HOST_IFACE)
        self._next_extra += count
        host.extra.extend(added)
        return added


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body with the *calling thread* in namespace ``netns`` (sockets made inside stay there).

    For a process that must open sockets in several namespaces; ``ip netns exec`` is simpler otherwise.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"cannot enter namespace {netns}: {os.strerror(err) or errno.errorcode.get(err)}")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)
