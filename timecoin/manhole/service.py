"""The manhole service: SSH (public keys, ``manhole_host``) and telnet (passwd file, loopback only).

Built like ``twisted/conch/manhole_tap.py``: a conch ``ColoredManhole`` behind a cred portal, except that
each connection gets its own namespace (:func:`timecoin.manhole.namespace.build_namespace`) and the SSH
checker accepts any user name with a listed key. Credentials are checked in the constructor (one
TimecoinError line before twistd daemonizes); a port that cannot be bound is one error line and the node
runs without that listener, like RPC. An exception typed at the prompt is printed in the session
(conch's ``ManholeInterpreter``) and never reaches the node.
"""
from __future__ import annotations

from typing import Any, cast

from twisted.application import service
from twisted.conch import interfaces as iconch
from twisted.conch import manhole, manhole_ssh, telnet
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.cred import portal
from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from zope.interface import implementer

from timecoin.manhole.auth import AnyUserKeyDB, PasswdChecker, check_passwd, host_key
from timecoin.manhole.namespace import build_namespace

TELNET_HOST = "127.0.0.1"       # telnet sends the password in clear: loopback only, by construction


class _SessionFactory:
    """``chainedProtocolFactory`` of conch's TerminalRealm: a terminal running a manhole on a fresh namespace."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def __call__(self) -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, build_namespace(self.node))


class _Session(manhole_ssh.TerminalSession):
    """conch's TerminalSession, completed: EOF from the client ends the session (as it ends a shell) and a
    resized window resizes the terminal (conch's own methods raise there: a traceback per ``ssh < file``)."""

    _proto: Any = None
    _terminal: Any = None

    def openShell(self, proto: Any) -> None:  # noqa: N802 - Twisted API
        self._proto = proto
        self._terminal = self.transportFactory(proto, self.chainedProtocolFactory(),
                                               iconch.IConchUser(self.original), self.width, self.height)

    def windowChanged(self, size: Any) -> None:  # noqa: N802 - Twisted API
        if self._terminal is not None:
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(size[1], size[0])

    def eofReceived(self) -> None:  # noqa: N802 - Twisted API
        if self._proto is not None:
            self._proto.loseConnection()


class UnsupportedAvatar(Exception):
    """A login asked the telnet realm for something other than a telnet terminal (the portal fails it)."""


@implementer(portal.IRealm)
class _TelnetRealm:
    """A logged-in telnet user gets a terminal running a manhole on a fresh namespace."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802 - Twisted API
        if telnet.ITelnetProtocol not in interfaces:
            raise UnsupportedAvatar("the manhole only serves telnet terminals")
        proto = telnet.TelnetBootstrapProtocol(insults.ServerProtocol, manhole.ColoredManhole,
                                               build_namespace(self.node))
        return telnet.ITelnetProtocol, proto, lambda: None


def ssh_factory(node: Any, authorized_keys: str, datadir: str) -> manhole_ssh.ConchFactory:
    """The SSH server: public-key auth only (no password method is even offered), the datadir's host key."""
    realm: Any = manhole_ssh.TerminalRealm()          # Any: zope interfaces are not visible to mypy
    realm.chainedProtocolFactory = _SessionFactory(node)
    realm.sessionFactory = _Session
    checker: Any = SSHPublicKeyChecker(cast(Any, AnyUserKeyDB(authorized_keys)))
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))
    key = host_key(datadir)
    keys: Any = factory                               # per instance: the class's dicts are shared
    keys.publicKeys = {key.sshType(): key.public()}
    keys.privateKeys = {key.sshType(): key}
    return factory


def telnet_factory(node: Any, passwd: str, reactor: Any) -> protocol.ServerFactory:
    """The telnet server: a login prompt checked against the passwd file (read at each login, compared in
    constant time, a wrong password answered after a delay: :class:`PasswdChecker`)."""
    check_passwd(passwd)
    checker: Any = PasswdChecker(passwd, reactor)
    realm: Any = _TelnetRealm(node)
    tportal = portal.Portal(realm, [checker])
    factory = protocol.ServerFactory()
    factory.protocol = lambda: telnet.TelnetTransport(telnet.AuthenticatingTelnetProtocol, tportal)
    return factory


class ManholeService(service.Service):
    """Both manhole listeners (port 0 means off, so tests pick free ports); ``ports`` maps "SSH"/"telnet" to the
    bound port once listening."""

    name = "manhole"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, node: Any, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        cfg = node.config
        self._factories: list[tuple[str, str, int, WrappingFactory]] = []
        if cfg.manhole_ssh_port:
            self._factories.append(("SSH", cfg.manhole_host, cfg.manhole_ssh_port, WrappingFactory(
                ssh_factory(node, cfg.manhole_authorized_keys, cfg.datadir))))
        if cfg.manhole_telnet_port:
            self._factories.append(("telnet", TELNET_HOST, cfg.manhole_telnet_port,
                                    WrappingFactory(telnet_factory(node, cfg.manhole_passwd, reactor))))
        self.ports: dict[str, int] = {}
        self._listeners: list[Any] = []

    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        for what, host, port, factory in self._factories:
            try:
                listener = self.reactor.listenTCP(port, factory, interface=host)
            except CannotListenError as exc:
                self.log.error("Cannot listen for the {what} manhole on {host}:{port}: {why}; running without it",
                               what=what, host=host, port=port, why=str(exc.socketError))
                continue
            self._listeners.append(listener)
            self.ports[what] = listener.getHost().port
            self.log.info("{what} manhole on {host}:{port}", what=what, host=host, port=self.ports[what])

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - Twisted API
        """Stop listening and close open sessions (their namespaces hold the node)."""
        super().stopService()
        listeners, self._listeners = self._listeners, []
        self.ports = {}
        for _, _, _, factory in self._factories:
            for proto in list(factory.protocols):
                proto.transport.loseConnection()
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in listeners])
