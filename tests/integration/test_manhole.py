"""The manhole against real clients: OpenSSH's ``ssh`` and a raw telnet socket, on an in-process node.

The node (a one-validator chain, LMDB in tmp_path) keeps committing while the blocking clients run in
threads (``deferToThread``), so the height a session prints is the live one. Every client call is
bounded by a subprocess or socket timeout.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.p2pnet import Net, wait_for
from tests.ports import free_port_block
from timecoin.errors import TimecoinError
from timecoin.manhole.auth import HOST_KEY_FILE, fingerprint, host_key
from timecoin.node import build_node, makeService

ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|c)")
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"]


class Keys:
    """Client key pairs made by ssh-keygen; ``good`` is listed in the authorized_keys file, ``bad`` is not."""

    def __init__(self, base: Path) -> None:
        self.base = base
        for name in ("good", "bad"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True,
                           timeout=30)
        self.authorized = base / "authorized_keys"
        self.authorized.write_text("# the operator\n" + (base / "good.pub").read_text())
        self.passwd = base / "passwd"
        self.passwd.write_text("alice:secret\n")

    def config(self, ssh_port: int, telnet_port: int) -> dict[str, str]:
        return {"manhole_ssh_port": str(ssh_port), "manhole_telnet_port": str(telnet_port),
                "manhole_authorized_keys": str(self.authorized), "manhole_passwd": str(self.passwd)}


def ssh(port: int, args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ssh", "-tt", *SSH_OPTS, *args, "-p", str(port), "anyname@127.0.0.1"], input=stdin,
                          capture_output=True, timeout=30)


def session(port: int, key: Path, *lines: str) -> tuple[int, str]:
    """Type ``lines`` at the prompt, then Ctrl-D; the screen text without terminal escapes."""
    typed = "".join(line + "\r" for line in lines).encode() + b"\x04"
    res = ssh(port, ["-i", str(key)], typed)
    return res.returncode, ANSI.sub(b"", res.stdout).decode(errors="replace") + res.stderr.decode(errors="replace")


IAC, SB, SE, WILL, WONT, DO, DONT = 255, 250, 240, 251, 252, 253, 254


def telnet(port: int, user: str, password: str, line: str) -> str:
    """A minimal telnet client: answers option negotiation (ECHO and SGA accepted), logs in, types ``line``."""
    text, buf = bytearray(), bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        def pump(token: bytes, seconds: float = 5.0, or_: bytes = b"") -> None:
            deadline = time.monotonic() + seconds
            while token not in text and not (or_ and or_ in text) and time.monotonic() < deadline:
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    return
                if not data:
                    return
                buf.extend(data)
                i = 0
                while i < len(buf):
                    if buf[i] != IAC:
                        text.append(buf[i])
                        i += 1
                    elif i + 1 < len(buf) and buf[i + 1] == SB:
                        end = buf.find(bytes([IAC, SE]), i)
                        if end < 0:
                            break
                        i = end + 2
                    elif i + 2 < len(buf) and buf[i + 1] in (WILL, WONT, DO, DONT):
                        cmd, opt = buf[i + 1], buf[i + 2]
                        answer = {WILL: DO if opt in (1, 3) else DONT, WONT: DONT,
                                  DO: WILL if opt == 3 else WONT, DONT: WONT}[cmd]
                        sock.sendall(bytes([IAC, answer, opt]))
                        i += 3
                    elif i + 1 < len(buf) and buf[i + 1] not in (WILL, WONT, DO, DONT):
                        i += 2
                    else:
                        break
                del buf[:i]
        pump(b"Username: ")
        sock.sendall(user.encode() + b"\r\n")
        pump(b"Password: ")
        sock.sendall(password.encode() + b"\r\n")
        pump(b">>> ", or_=b"Authentication failed")
        if b">>> " in text:                          # logged in (else refused: nothing to wait for)
            sock.sendall(line.encode() + b"\r\n")
            pump(b"\n2", 3.0)
    return ANSI.sub(b"", bytes(text)).decode(errors="replace")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


async def start_node(tmp_path: Path, keys: Keys) -> tuple[Net, int, int]:
    port = free_port_block(2)
    net = Net(tmp_path / "net", 1, chain_id="timecoin-manhole-test", **keys.config(port, port + 1))
    await net.start(connect=False)
    await wait_for(lambda: net.heights()[0] >= 2, 20.0, "height 2")
    manhole = net.nodes[0].getServiceNamed("manhole")
    assert manhole.ports == {"SSH": port, "telnet": port + 1}
    return net, port, port + 1


@pytest_twisted.ensureDeferred
async def test_ssh_session_shows_the_live_height_and_survives_an_exception(tmp_path: Path, keys: Keys) -> None:
    net, port, _ = await start_node(tmp_path, keys)
    try:
        node = net.nodes[0]
        before = node.store.tip_height()
        _, out = await threads.deferToThread(session, port, keys.base / "good", "node.store.tip_height()",
                                             "1/0", "store.tip_height()", "status()")
        after = node.store.tip_height()
        heights = [int(line) for line in out.splitlines() if line.strip().isdigit()]
        assert len(heights) == 2, out
        assert before <= heights[0] <= heights[1] <= after
        assert "ZeroDivisionError: division by zero" in out
        assert node.peer_id in out and "chain_id   timecoin-manhole-test" in out
        assert node.running
        await wait_for(lambda: node.store.tip_height() > after, 10.0, "a commit after the session")
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_end_of_input_ends_the_ssh_session(tmp_path: Path, keys: Keys) -> None:
    net, port, _ = await start_node(tmp_path, keys)
    try:
        res = await threads.deferToThread(ssh, port, ["-i", str(keys.base / "good")], b"6*7\r")   # no Ctrl-D
        assert "\n42" in ANSI.sub(b"", res.stdout).decode().replace("\r", "")
        assert net.nodes[0].running
    finally:
        await net.stop()


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest_twisted.ensureDeferred
async def test_manhole_host_moves_ssh_only_telnet_stays_on_127_0_0_1(tmp_path: Path, keys: Keys) -> None:
    port = free_port_block(2)
    net = Net(tmp_path / "net", 1, chain_id="timecoin-manhole-test", manhole_host="127.0.0.2",
              **keys.config(port, port + 1))
    await net.start(connect=False)
    try:
        assert await threads.deferToThread(reachable, "127.0.0.2", port)
        assert not await threads.deferToThread(reachable, "127.0.0.1", port)
        assert await threads.deferToThread(reachable, "127.0.0.1", port + 1)
        assert not await threads.deferToThread(reachable, "127.0.0.2", port + 1)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_each_ssh_session_has_its_own_namespace(tmp_path: Path, keys: Keys) -> None:
    net, port, _ = await start_node(tmp_path, keys)
    try:
        _, first = await threads.deferToThread(session, port, keys.base / "good", "mine = 40 + 2", "mine")
        assert "\n42" in first
        _, second = await threads.deferToThread(session, port, keys.base / "good", "mine")
        assert "NameError: name 'mine' is not defined" in second
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_ssh_refuses_an_unlisted_key_a_password_and_no_key(tmp_path: Path, keys: Keys) -> None:
    net, port, _ = await start_node(tmp_path, keys)
    try:
        for args in (["-i", str(keys.base / "bad")],
                     ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"],
                     ["-o", "PubkeyAuthentication=no"]):
            res = await threads.deferToThread(ssh, port, args, b"node\r\x04")
            err = res.stderr.decode()
            assert res.returncode == 255, err
            # The server offers public keys only: no password method is even on the list.
            assert "anyname@127.0.0.1: Permission denied (publickey)." in err
            assert b">>>" not in res.stdout
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_host_key_is_made_once_private_and_reused_across_restarts(tmp_path: Path, keys: Keys) -> None:
    net, port, _ = await start_node(tmp_path, keys)
    try:
        path = Path(net.nodes[0].config.datadir) / HOST_KEY_FILE
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        listed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, timeout=30).stdout
        assert f"SHA256:{fingerprint(host_key(str(path.parent)))} " in listed

        def scan() -> str:
            res = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
                                 capture_output=True, timeout=30, text=True)
            return next(line.split(None, 1)[1] for line in res.stdout.splitlines() if not line.startswith("#"))

        first = await threads.deferToThread(scan)
        assert first == host_key(str(path.parent)).public().toString("openssh").decode()
        await net.nodes[0].stopService()
        await net.restart([0])
        await wait_for(lambda: net.nodes[0].getServiceNamed("manhole").ports.get("SSH") == port, 5.0, "SSH again")
        assert await threads.deferToThread(scan) == first
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_telnet_logs_in_with_the_passwd_file_and_refuses_a_wrong_password(tmp_path: Path, keys: Keys) -> None:
    net, _, tport = await start_node(tmp_path, keys)
    try:
        out = await threads.deferToThread(telnet, tport, "alice", "secret", "1+1")
        assert re.search(r"1\+1\s*\n2\s*\n", out.replace("\r", "")), out
        out = await threads.deferToThread(telnet, tport, "alice", "wrong", "1+1")
        assert "Authentication failed" in out and ">>>" not in out
        out = await threads.deferToThread(telnet, tport, "mallory", "secret", "1+1")
        assert "Authentication failed" in out and ">>>" not in out
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_is_one_error_and_the_node_runs_on(tmp_path: Path, keys: Keys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        net = Net(tmp_path / "net", 1, chain_id="timecoin-manhole-test", **keys.config(port, 0))
        await net.start(connect=False)
        try:
            assert net.nodes[0].getServiceNamed("manhole").ports == {}
            await wait_for(lambda: net.heights()[0] >= 2, 20.0, "commits without the manhole")
        finally:
            await net.stop()


def test_no_manhole_service_when_both_ports_are_zero(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-manhole-test")
    with pytest.raises(KeyError):
        net.nodes[0].getServiceNamed("manhole")
    assert not (tmp_path / "node0" / HOST_KEY_FILE).exists()


def build(tmp_path: Path, keys: Keys, **override: str) -> Any:
    net = Net(tmp_path / "net", 1, chain_id="timecoin-manhole-test")
    node = net.nodes[0]
    extra = {**keys.config(free_port_block(2), 0), **override}
    config = dataclasses.replace(node.config, **{k: (int(v) if k.endswith("_port") else v) for k, v in extra.items()})
    return build_node(config, node.key, node.genesis, None)


@pytest.mark.parametrize(("override", "message"), [
    ({"manhole_authorized_keys": "/nonexistent/authorized_keys"},
     "cannot read manhole_authorized_keys /nonexistent/authorized_keys: No such file or directory"),
    ({"manhole_authorized_keys": "EMPTY"}, "lists no usable key"),
    ({"manhole_ssh_port": "0", "manhole_telnet_port": "2323", "manhole_passwd": "/nonexistent/passwd"},
     "cannot read manhole_passwd /nonexistent/passwd: No such file or directory"),
])
def test_a_bad_credentials_file_is_one_clear_error(tmp_path: Path, keys: Keys, override: dict[str, str],
                                                   message: str) -> None:
    if override.get("manhole_authorized_keys") == "EMPTY":
        empty = tmp_path / "empty_keys"
        empty.write_text("# nobody\nnot a key\n")
        override = {"manhole_authorized_keys": str(empty)}
    with pytest.raises(TimecoinError, match=re.escape(message)):
        build(tmp_path, keys, **override)


def test_a_bad_host_key_file_is_one_clear_error(tmp_path: Path, keys: Keys) -> None:
    datadir = tmp_path / "net" / "node0"
    datadir.mkdir(parents=True)
    (datadir / HOST_KEY_FILE).write_text("garbage\n")
    with pytest.raises(TimecoinError, match="bad manhole host key .*manhole_host_key.*delete it to make a new one"):
        build(tmp_path, keys)


def test_twistd_exits_with_one_line_for_a_missing_authorized_keys_file(tmp_path: Path, keys: Keys,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    node = Net(tmp_path / "net", 1, chain_id="timecoin-manhole-test").nodes[0]
    config = dataclasses.replace(node.config, network="devnet", manhole_ssh_port=free_port_block(1),
                                 manhole_authorized_keys=str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as exc:
        makeService(config)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err == f"twistd timecoin: error: cannot read manhole_authorized_keys {tmp_path / 'missing'}: " \
                  "No such file or directory\n"
