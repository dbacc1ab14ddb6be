"""The ``timecoin`` console script: keys, configuration and status of a node (SPEC §8).

Every failure an operator can cause (a missing file, a bad value, a store that is not there) ends in
one line on stderr, ``timecoin: error: ...``, and exit code 2 -- never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from timecoin import __version__, crypto
from timecoin.config import KEYS, NETWORKS, NodeConfig, build_config, render_example
from timecoin.errors import TimecoinError

EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one line."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _add_config_flags(parser: argparse.ArgumentParser, all_keys: bool, also: tuple[str, ...] = ()) -> None:
    """``--config``/``--datadir``/``--network`` (and ``also``, or with ``all_keys`` every key) as flags."""
    parser.add_argument("--config", "-c", metavar="FILE", help="config file (INI, section [timecoin])")
    for key in KEYS:
        if all_keys or key.name in ("datadir", "network", *also):
            parser.add_argument(f"--{key.flag}", dest=key.name, metavar="VALUE", help=key.help)


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    """Which node to call: its config (``--config``/``--datadir``/``--network``: address and cookie) or a URL."""
    _add_config_flags(parser, all_keys=False, also=("rpc_host", "rpc_port"))
    parser.add_argument("--rpc-url", metavar="URL", help="http://HOST:PORT/ of the node (default: from the config)")
    parser.add_argument("--rpc-user", metavar="USER", help="RPC user (default: the config's rpc_user, else the cookie)")
    parser.add_argument("--rpc-password", metavar="PASSWORD", default="", help="RPC password for --rpc-user")


def _config_from(args: argparse.Namespace) -> NodeConfig:
    flags = {key.name: getattr(args, key.name, None) for key in KEYS}
    return build_config(flags, args.config)


# -- commands --------------------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> None:
    key = crypto.PrivateKey.generate()
    if args.out:
        try:
            key.save(args.out)
        except FileExistsError:
            raise CliError(f"{args.out} exists; refusing to overwrite a key") from None
        except OSError as exc:
            raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    else:
        sys.stderr.write("timecoin: no --out given: the key is printed as PEM and not saved\n")
        sys.stdout.write(key.to_pem().decode())
    _print_json(vars(crypto.KeyInfo.of(key, args.network)))


def cmd_keyinfo(args: argparse.Namespace) -> None:
    try:
        key = crypto.PrivateKey.load(args.file)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except TimecoinError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    _print_json(vars(crypto.KeyInfo.of(key, args.network)))


def cmd_config(args: argparse.Namespace) -> None:
    if args.example:
        sys.stdout.write(render_example())
        return
    config = _config_from(args)
    values = config.to_json()
    if args.json:
        _print_json(values)
        return
    width = max(len(name) for name in values)
    for name, value in values.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{name:<{width}}  {shown}")


def cmd_status(args: argparse.Namespace) -> None:
    from timecoin.status import format_status, read_status

    config = _config_from(args)
    if not os.path.isdir(os.path.join(config.datadir, "chain")):
        raise CliError(f"no chain store in {config.datadir} (start a node there first, or pass --datadir/--config)")
    if args.at is not None and args.at < 0:
        raise CliError(f"--at must be a height >= 0, not {args.at}")
    info = read_status(config, args.at)
    if args.json:
        _print_json(info)
    else:
        print(format_status(info))


def cmd_testnet(args: argparse.Namespace) -> None:
    """Write a local testnet (``--nodes``) and/or run one (``--start``); see :mod:`timecoin.testnet`."""
    from timecoin import testnet

    writing = {"--observers": args.observers, "--base-port": args.base_port,
               "--block-interval": args.block_interval, "--chain-id": args.chain_id}
    chaos: tuple[int, float] | None = None
    if args.chaos is not None or args.chaos_duration is not None:
        from timecoin.chaos import runner

        if args.chaos is None:
            raise CliError("--chaos-duration only applies with --chaos SEED")
        if not args.start:
            raise CliError("--chaos SEED runs the testnet under faults: add --start")
        chaos = (runner.parse_seed(args.chaos), runner.parse_duration(
            args.chaos_duration if args.chaos_duration is not None else runner.DEFAULT_DURATION))
        if args.nodes is not None and testnet.parse_count(args.nodes, "--nodes", 1) < 4:
            raise CliError(f"--chaos needs --nodes 4 or more (so that f = (n-1)//3 >= 1 validator may be "
                           f"faulty), not {args.nodes}")
    if args.netns:
        return _testnet_netns(args)
    if args.nodes is None:
        if not args.start:
            raise CliError("--nodes N is required (or --start alone, to run the testnet already in --dir)")
        given = [flag for flag, value in writing.items() if value is not None] + (["--force"] if args.force else [])
        if given:
            raise CliError(f"{', '.join(given)} only apply when writing a testnet: add --nodes N")
        layout = testnet.read_layout(args.dir)
    else:
        layout = testnet.write_testnet(
            args.dir,
            nodes=testnet.parse_count(args.nodes, "--nodes", 1),
            observers=testnet.parse_count(args.observers if args.observers is not None else 0, "--observers", 0),
            base_port=testnet.parse_count(args.base_port if args.base_port is not None else testnet.DEFAULT_BASE_PORT,
                                          "--base-port", 1),
            block_interval=testnet.parse_block_interval(
                args.block_interval if args.block_interval is not None else testnet.DEFAULT_BLOCK_INTERVAL),
            chain_id=args.chain_id, force=args.force)
    print(testnet.format_summary(layout), flush=True)
    if args.start and chaos is not None:
        from timecoin.chaos import runner

        code = runner.run_chaos(layout, *chaos)
        if code:
            raise SystemExit(code)
    elif args.start:
        code = testnet.run_layout(layout)
        if code:
            raise SystemExit(code)


def _testnet_netns(args: argparse.Namespace) -> None:
    """``testnet --netns --nodes N --start``: a fresh testnet, each node in its own network namespace."""
    from timecoin import testnet

    if os.geteuid() != 0:
        raise CliError("--netns needs root (it makes network namespaces, veth pairs and a bridge)")
    if not args.start or args.nodes is None or args.chaos is not None:
        raise CliError("--netns writes a fresh testnet for the namespaces' addresses and runs it: give "
                       "--nodes N --start (and no --chaos)")
    nodes = testnet.parse_count(args.nodes, "--nodes", 1)
    observers = testnet.parse_count(args.observers if args.observers is not None else 0, "--observers", 0)

    def write(hosts: list[str], bridge: str) -> Any:
        layout = testnet.write_testnet(
            args.dir, nodes=nodes, observers=observers,
            base_port=testnet.parse_count(args.base_port if args.base_port is not None else testnet.DEFAULT_BASE_PORT,
                                          "--base-port", 1),
            block_interval=testnet.parse_block_interval(
                args.block_interval if args.block_interval is not None else testnet.DEFAULT_BLOCK_INTERVAL),
            chain_id=args.chain_id, force=args.force, hosts=hosts, rpc_allow_ip=bridge)
        print(testnet.format_summary(layout), flush=True)
        return layout

    code = testnet.run_in_namespaces(nodes + observers, write)
    if code:
        raise SystemExit(code)


def _endpoint(args: argparse.Namespace) -> Any:
    """The node to call, from --rpc-url/--rpc-user/--rpc-password or the node's config and cookie."""
    from timecoin.rpc import clicall

    config = _config_from(args) if not (args.rpc_url and args.rpc_user is not None) else None
    try:
        return clicall.endpoint_from(config, args.rpc_url, args.rpc_user, args.rpc_password)
    except clicall.CallError as exc:
        raise CliError(str(exc)) from None


def cmd_sim(args: argparse.Namespace) -> None:
    """Run the whole-node simulator (:mod:`timecoin.sim.cluster`); exit 0 clean, 1 violated, 2 bad arguments."""
    from timecoin.sim.cluster import cli as sim_cli

    if args.from_command_line:            # never re-execute a process that called main(argv) itself (tests)
        sim_cli.reexec_with_fixed_hashseed(sys.argv[1:])
    raise SystemExit(sim_cli.run_command(args))


def cmd_rpc(args: argparse.Namespace) -> None:
    """Call the node's JSON-RPC like bitcoin-cli (see :mod:`timecoin.rpc.clicall`); exits with its code."""
    from timecoin.rpc import clicall

    try:
        endpoint = _endpoint(args)
    except CliError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(clicall.EXIT_FAILURE) from None
    raise SystemExit(clicall.run(endpoint, args.method, args.params, args.named))


def _wallet_call(args: argparse.Namespace) -> Any:
    """call(method, params) against the selected node; every failure becomes one CliError line."""
    from timecoin.rpc import clicall

    endpoint = _endpoint(args)

    def call(method: str, params: list[Any]) -> Any:
        try:
            return clicall.call(endpoint, method, params)
        except clicall.RPCCallError as exc:
            raise CliError(f"{method} refused (error {exc.code}): {exc.message}") from None
        except clicall.CallError as exc:
            raise CliError(str(exc)) from None
    return call


def cmd_transfer(args: argparse.Namespace) -> None:
    """send / stake / unstake: sign locally, submit, print the txid (and with --wait, where it is final)."""
    from timecoin import wallet
    from timecoin.ledger.tx import ZERO_ADDRESS, TxKind

    kind = {"send": TxKind.TRANSFER, "stake": TxKind.STAKE, "unstake": TxKind.UNSTAKE}[args.command]
    amount = wallet.parse_amount(args.amount)
    fee = wallet.parse_amount(args.fee, "fee", allow_zero=True)
    recipient = wallet.parse_address(args.to) if kind == TxKind.TRANSFER else ZERO_ADDRESS
    key = wallet.load_key(args.key)
    call = _wallet_call(args)
    tx = wallet.build(call, key, kind, amount, fee, recipient)
    sent = wallet.submit(call, tx, wait=args.wait, timeout=args.wait_timeout)
    print(sent.txid)
    if sent.height is not None:
        print(f"final at height {sent.height} in block {sent.block_hash}")


def cmd_balance(args: argparse.Namespace) -> None:
    from timecoin import wallet

    wallet.parse_address(args.address)
    print(_wallet_call(args)("getbalance", [args.address]))


def cmd_tx(args: argparse.Namespace) -> None:
    call = _wallet_call(args)
    _print_json(call("gettransactionfinality", [args.txid]))


def cmd_version(args: argparse.Namespace) -> None:
    print(f"timecoin {__version__}")


def cmd_verify(args: argparse.Namespace) -> None:
    """Check a finality proof offline: prints ``final`` (exit 0) or ``not final: <what fails>`` (exit 1)."""
    from timecoin.ledger import proof as fp
    from timecoin.ledger.genesis import Genesis

    if (args.genesis is None) == (args.trusted_height is None):
        raise CliError("give either --genesis FILE or --trusted-height H with --trusted-hash X")
    if (args.trusted_height is None) != (args.trusted_hash is None):
        raise CliError("--trusted-height and --trusted-hash go together")
    if args.genesis is not None:
        trusted = fp.Trusted.from_genesis(Genesis.load(args.genesis))
    else:
        try:
            trusted = fp.Trusted.at(args.trusted_height, bytes.fromhex(args.trusted_hash))
        except ValueError as exc:
            raise CliError(f"--trusted-height/--trusted-hash: {exc}") from None
    try:
        with open(args.proof, "rb") as f:
            data = f.read(fp.MAX_PROOF_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {args.proof}: {exc.strerror or exc}") from None
    try:
        if len(data) > fp.MAX_PROOF_BYTES:
            raise fp.ProofError(f"proof file is larger than {fp.MAX_PROOF_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise fp.ProofError(f"proof is not JSON: {str(exc).splitlines()[0][:200]}") from None
        result = fp.verify_proof(doc, trusted)
    except fp.ProofError as exc:
        sys.stderr.write(f"timecoin: not final: {exc}\n")
        raise SystemExit(1) from None
    what = f"tx {result.txid.hex()} in " if result.txid is not None else ""
    print(f"final: {what}block {result.height} {result.block_hash.hex()} on {result.chain_id} "
          f"(signed by {result.signed_power} of {result.total_power} power)")


# -- parser ----------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> None:
    """``timecoin bench load``: drive running nodes with signed transfers; see :mod:`timecoin.bench.load`."""
    from timecoin import testnet
    from timecoin.bench.conn import RPCFailure
    from timecoin.bench.load import LoadError, LoadSettings, run_load
    from timecoin.bench.localnet import endpoint_of
    from timecoin.rpc.clicall import CallError, endpoint_from

    if (args.config is None) == (args.testnet_dir is None):
        raise CliError("give exactly one of --config FILE (one node, its key funded) or --testnet-dir D")
    settings = LoadSettings(rate=args.rate, duration=args.duration, senders=args.senders, batch=args.batch,
                            drain=args.drain, connections=args.connections)
    try:
        settings.check()
        if args.testnet_dir is not None:
            layout = testnet.read_layout(args.testnet_dir)
            endpoints = [endpoint_of(n) for n in layout.nodes]
            funders = [crypto.PrivateKey.load(os.path.join(n.dir, testnet.KEY_FILE))
                       for n in layout.nodes if n.role == "validator"]
        else:
            config = build_config(config_file=args.config)
            endpoints = [endpoint_from(config, None, None, None)]
            funders = [crypto.PrivateKey.load(config.key_path)]
        report = run_load(endpoints, funders, settings)
    except (LoadError, CallError, RPCFailure) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename or 'a key file'}: {exc.strerror or exc}") from None
    if args.json:
        _print_json(report.to_json())
    else:
        print("\n".join(report.lines()))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timecoin", description="Timecoin node tools.")
    parser.add_argument("--version", action="version", version=f"timecoin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("keygen", help="create a node key (PEM) and print its PeerID, address and public key")
    p.add_argument("--out", "-o", metavar="FILE", help="write the key here (never overwrites)")
    p.add_argument("--network", choices=NETWORKS, default="devnet", help="address prefix (TIME1 for mainnet)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("keyinfo", help="print PeerID, address and public key of a key file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--network", choices=NETWORKS, default="devnet", help="address prefix (TIME1 for mainnet)")
    p.set_defaults(func=cmd_keyinfo)

    p = sub.add_parser("config", help="print the effective configuration (defaults < file < flags)")
    _add_config_flags(p, all_keys=True)
    p.add_argument("--json", action="store_true", help="as JSON, keys as in the file")
    p.add_argument("--example", action="store_true", help="print etc/timecoin.conf.example")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("status", help="height, hash, finality and identity of a node (works while it runs)")
    _add_config_flags(p, all_keys=False)
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--at", type=int, metavar="HEIGHT", help="the block hash at this height")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("testnet", help="write keys, configs and a shared genesis for a local testnet; --start runs it",
                       description="Writes D/genesis.json and D/node<i>/{node.key,timecoin.conf}: N validators, "
                                   "then K observers; node i listens on P+2i (P2P) and P+2i+1 (RPC). --start runs "
                                   "every node as a child process until Ctrl-C/SIGTERM; --dir D --start alone runs "
                                   "a testnet written earlier (its chains continue).")
    p.add_argument("--nodes", "-n", metavar="N", help="number of validators (>= 1)")
    p.add_argument("--dir", "-d", required=True, metavar="D", help="folder to write (must be empty unless --force)")
    p.add_argument("--observers", metavar="K", help="non-staked nodes after the validators (default 0)")
    p.add_argument("--base-port", metavar="P", help="node i: P2P port P+2i, RPC port P+2i+1 (default 19400)")
    p.add_argument("--block-interval", metavar="S", help="seconds between blocks (default 1)")
    p.add_argument("--chain-id", metavar="ID", help="default timecoin-testnet-<8 random hex>")
    p.add_argument("--force", action="store_true", help="replace genesis.json and node*/ in a non-empty D")
    p.add_argument("--start", action="store_true", help="run the nodes (child processes) until Ctrl-C/SIGTERM")
    p.add_argument("--netns", action="store_true", help="root only, with --nodes N --start: each node in its own "
                   "network namespace with its own 198.18.K.x address (veth on a bridge; all removed at exit)")
    p.add_argument("--chaos", metavar="SEED", help="with --start: every P2P link through a fault proxy, play the "
                   "seeded fault plan, then check one chain and nothing finalized lost (exit 0/1; docs/chaos.md)")
    p.add_argument("--chaos-duration", metavar="SECONDS", help="length of the fault plan (default 60)")
    p.set_defaults(func=cmd_testnet)

    p = sub.add_parser("rpc", help="call the node's JSON-RPC like bitcoin-cli (cookie or rpc_user/rpc_password)")
    _add_node_flags(p)
    p.add_argument("-named", "--named", dest="named", action="store_true",
                   help="arguments are key=value pairs naming the method's parameters")
    p.add_argument("method", help="the RPC method (try: help)")
    p.add_argument("params", nargs="*", help="its arguments (JSON-typed as the method expects)")
    p.set_defaults(func=cmd_rpc)

    for name, what in (("send", "send TIME to an address"), ("stake", "bond TIME as validator stake"),
                       ("unstake", "start unbonding staked TIME")):
        p = sub.add_parser(name, help=f"{what}: sign with a local key file, submit through a node's RPC")
        _add_node_flags(p)
        p.add_argument("--key", required=True, metavar="FILE", help="the sender's key file (never sent anywhere)")
        if name == "send":
            p.add_argument("--to", required=True, metavar="ADDRESS", help="the recipient (TIME1... or TIME0...)")
        p.add_argument("--amount", required=True, metavar="TIME", help="decimal TIME, at most 8 decimals")
        p.add_argument("--fee", default="0.00001", metavar="TIME", help="fee in TIME (default 0.00001)")
        p.add_argument("--wait", action="store_true", help="wait until a final block carries it")
        p.add_argument("--wait-timeout", type=float, default=120.0, metavar="S", help="give up waiting after S s")
        p.set_defaults(func=cmd_transfer, command=name)

    p = sub.add_parser("balance", help="an address's balance (TIME) from a node")
    _add_node_flags(p)
    p.add_argument("address")
    p.set_defaults(func=cmd_balance)

    p = sub.add_parser("tx", help="where a transaction is: final (height, block) or in the mempool")
    _add_node_flags(p)
    p.add_argument("txid")
    p.set_defaults(func=cmd_tx)

    p = sub.add_parser("sim", help="run N whole nodes in a deterministic simulated world with faults and Byzantine "
                       "nodes; check the invariants (docs/simulation.md)")
    from timecoin.sim.cluster.cli import add_arguments as add_sim_arguments
    add_sim_arguments(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("bench", help="measurement tools that drive running nodes (docs/benchmarks.md)")
    bench = p.add_subparsers(dest="bench_command", metavar="TOOL")
    bench.required = True
    p = bench.add_parser("load", help="submit signed transfers at a fixed rate to every node; report finality",
                         description="Funds fresh senders from the genesis-funded keys, pre-signs rate x duration "
                                     "transfers, submits them in JSON-RPC batches to every node at --rate tx/s, and "
                                     "reports submitted, rejected, finalized, tx/s and submit-to-final latency.")
    p.add_argument("--rate", type=_positive_float, required=True, metavar="R", help="transactions per second")
    p.add_argument("--duration", type=_positive_float, required=True, metavar="S", help="seconds of submission")
    p.add_argument("--config", "-c", metavar="FILE", help="one running node's config; its key must hold funds")
    p.add_argument("--testnet-dir", metavar="D", help="a running `timecoin testnet` layout (its validators fund)")
    p.add_argument("--senders", type=_count, default=0, metavar="N", help="sending accounts (default rate/4)")
    p.add_argument("--batch", type=_count, default=0, metavar="B",
                   help="txs per JSON-RPC batch (default: 10 batches/s per connection)")
    p.add_argument("--connections", type=_count, default=2, metavar="C",
                   help="keep-alive connections per node, each with its own senders (default 2)")
    p.add_argument("--drain", type=_positive_float, default=10.0, metavar="S",
                   help="seconds to wait for finality after the last batch (default 10)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("verify", help="check a finality proof (from getfinalityproof) offline: final, or what fails")
    p.add_argument("proof", metavar="PROOF.json")
    p.add_argument("--genesis", metavar="FILE", help="trust this genesis file (walk validator sets from height 0)")
    p.add_argument("--trusted-height", type=int, metavar="H", help="trust the block at height H ...")
    p.add_argument("--trusted-hash", metavar="X", help="... whose hash is X (hex)")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.from_command_line = argv is None
    try:
        args.func(args)
    except (CliError, TimecoinError) as exc:
        sys.stderr.write(f"timecoin: error: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None
    except BrokenPipeError:
        raise SystemExit(0) from None
