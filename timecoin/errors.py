"""Typed failures and the one table of reject reasons shared by wire, peers and RPC.

Errors are raised at the edge (decoding, validation) and mapped once to a reject code
(and, later, a reputation delta). Bad input never escapes as anything else.
"""
from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    """Reject reason codes. Wire value is the int; RPC shows the name."""

    OK = 0
    MALFORMED = 1            # bytes that do not decode
    FRAME_TOO_LARGE = 2
    BAD_SIGNATURE = 3
    WRONG_CHAIN = 4          # chain id differs
    WRONG_GENESIS = 5
    BAD_NONCE = 6
    FEE_TOO_LOW = 7
    INSUFFICIENT_FUNDS = 8
    INSUFFICIENT_STAKE = 9
    BAD_AMOUNT = 10
    UNKNOWN_ACCOUNT = 11
    MEMPOOL_FULL = 12
    DUPLICATE = 13
    BAD_BLOCK = 14
    BAD_CERTIFICATE = 15
    NOT_VALIDATOR = 16
    WRONG_HEIGHT = 17
    WRONG_ROUND = 18
    BAD_EVIDENCE = 19
    RATE_LIMITED = 20
    BANNED = 21
    TOO_MANY_CONNECTIONS = 22
    PROTOCOL_VERSION = 23
    TIMEOUT = 24
    BLOCK_TOO_LARGE = 25
    BAD_TIMESTAMP = 26
    REPLACEMENT_UNDERPRICED = 27
    SHUTTING_DOWN = 28
    INTERNAL = 99


class TimecoinError(Exception):
    """Base of every error we raise on purpose."""


class DecodeError(TimecoinError):
    """Bytes that are not a canonical encoding of any known message or value."""

    reason = Reason.MALFORMED


class FrameTooLarge(DecodeError):
    """A length prefix above the configured maximum (refused before buffering)."""

    reason = Reason.FRAME_TOO_LARGE


class InvalidSignature(TimecoinError):
    """A signature that does not verify (including high-S signatures)."""

    reason = Reason.BAD_SIGNATURE


class ValidationError(TimecoinError):
    """Input that decodes but breaks a rule; carries the reject reason."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.name.lower()}: {detail}" if detail else reason.name.lower())
        self.reason = reason
        self.detail = detail


class ConfigError(TimecoinError):
    """A bad configuration value: one line naming the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class StoreError(TimecoinError):
    """The store is missing, of another schema, or of another chain."""
