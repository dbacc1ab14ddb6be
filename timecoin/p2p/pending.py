"""Inbound connections not yet through TLS: few slots per address and prefix, oldest first out (SPEC §5).

A sans-I/O table (no sockets, no clock): the service adds each accepted TCP connection before any TLS
work and removes it when TLS completes or the socket closes. Before TLS nothing is known of the peer but
its address, and an idle socket costs an attacker nothing, so the table must not let one party fill it:

* **caps**: at most ``total`` entries, ``per_ip`` from one address (an IPv6 /64 counts as one address:
  ``peers.ip_key``) and ``per_prefix`` from one /24 (IPv4) or /64 (IPv6) (``peers.ip_prefix``);
* **oldest-first eviction**: a newcomer over a cap does not wait for a slot and is not refused: the
  oldest entry it competes with is evicted (the caller aborts it). Over the per-address cap that is the
  oldest from the same address, over the per-prefix cap the oldest from the same prefix, and over the
  table cap the oldest of the most crowded prefix -- so a flood evicts itself first, and a lone honest
  newcomer from another network takes a slot from the flood, never from another lone honest peer;
* **room kept for validators**: before TLS the key is unknown, so the caller marks a newcomer
  *reserved* when its address is one where validator peers are known to be (the service's design:
  validator peers connected now or earlier, and peer-store entries whose PeerID is in the validator
  set). Entries not reserved may hold at most ``total - reserved`` slots, and a newcomer that is not
  reserved never evicts a reserved entry (it is refused if nothing else can go). So however fast an
  attacker reconnects, a validator's pending connection is only pushed out by newer ones from its own
  address, and a reserved newcomer always finds room. After TLS, ``validator_slots`` in
  ``PeerManager.admit`` keep inbound slots for validators proved by their key.

The table holds at most ``total`` entries and every decision scans them once (O(total)).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Entry:
    ip: str             # peers.ip_key of the address
    prefix: str         # peers.ip_prefix of the address
    reserved: bool      # from an address where validator peers are known to be


class PendingTable:
    """Connections not yet through TLS, oldest first (module docstring). Keys are the connections."""

    def __init__(self, total: int, per_ip: int, per_prefix: int, reserved: int) -> None:
        if not 0 < per_ip <= per_prefix <= total or not 0 <= reserved < total:
            raise ValueError("pending caps must satisfy 0 < per_ip <= per_prefix <= total and 0 <= reserved < total")
        self.total = total
        self.per_ip = per_ip
        self.per_prefix = per_prefix
        self.reserved = reserved
        self._entries: dict[Hashable, _Entry] = {}          # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def count(self, ip: str | None = None, prefix: str | None = None, reserved: bool | None = None) -> int:
        """Entries matching every given field (all entries when none is given)."""
        return sum(1 for e in self._entries.values()
                   if (ip is None or e.ip == ip) and (prefix is None or e.prefix == prefix)
                   and (reserved is None or e.reserved == reserved))

    def make_room(self, ip: str, prefix: str, reserved: bool,
                  ip_room: int | None = None) -> tuple[bool, Hashable | None]:
        """May a newcomer from ``ip`` (in ``prefix``) be added, and which entry must go first?

        (False, None): refuse it; (True, None): add it; (True, key): evict ``key``, then add it. One
        eviction always suffices: the victim shares the cap the newcomer would pass. ``ip_room`` lowers the
        per-address cap (the slots ``max_per_ip`` leaves its address); 0 or less refuses.
        """
        per_ip = self.per_ip if ip_room is None else min(self.per_ip, ip_room)
        if per_ip <= 0:
            return False, None
        if self.count(ip=ip) >= per_ip:
            victim = self._oldest(lambda e: e.ip == ip, reserved)
        elif self.count(prefix=prefix) >= self.per_prefix:
            victim = self._oldest(lambda e: e.prefix == prefix, reserved)
        elif len(self._entries) >= self.total or (
                not reserved and self.count(reserved=False) >= self.total - self.reserved):
            victim = self._oldest_of_most_crowded(reserved)
        else:
            return True, None
        return victim is not None, victim

    def add(self, key: Hashable, ip: str, prefix: str, reserved: bool) -> None:
        """Count ``key`` as pending (the newest); call :meth:`make_room` first and evict what it names."""
        self._entries.pop(key, None)
        self._entries[key] = _Entry(ip, prefix, reserved)

    def remove(self, key: Hashable) -> bool:
        """The connection finished TLS, closed or was evicted; True if it was pending."""
        return self._entries.pop(key, None) is not None

    # -- victims -----------------------------------------------------------------------------------
    def _evictable(self, reserved: bool) -> list[tuple[Hashable, _Entry]]:
        """What a newcomer may evict: anything if it is reserved (others first), else unreserved entries."""
        plain = [(k, e) for k, e in self._entries.items() if not e.reserved]
        if plain or not reserved:
            return plain
        return list(self._entries.items())

    def _oldest(self, match: Callable[[_Entry], bool], reserved: bool) -> Hashable | None:
        """The oldest matching entry the newcomer may evict (unreserved ones first)."""
        same = [(k, e) for k, e in self._entries.items() if match(e)]
        plain = [k for k, e in same if not e.reserved]
        if plain:
            return plain[0]
        return same[0][0] if reserved and same else None

    def _oldest_of_most_crowded(self, reserved: bool) -> Hashable | None:
        """The oldest entry of the prefix with the most evictable entries (ties: the prefix with the oldest)."""
        crowd: dict[str, list[Hashable]] = {}
        for key, entry in self._evictable(reserved):
            crowd.setdefault(entry.prefix, []).append(key)
        if not crowd:
            return None
        return max(crowd.values(), key=len)[0]      # max keeps the first of equals: dicts keep insertion order
