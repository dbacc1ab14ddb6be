"""A real chain for the store tests, and a child process for the crash and read-only tests.

Imported by ``tests/unit/test_store.py`` for :class:`ChainBuilder` (signed transfers and stakes,
blocks built and executed by ``ledger/state.py``, commit certificates signed by > 2/3 of the
validators) and :func:`replay_and_check`. Run as a script (a separate process, because LMDB allows
one environment per path per process and because SIGKILL must hit a real writer):

* ``write PATH GENESIS_JSON MAP_SIZE MAX_BLOCKS TXS`` opens (or initializes) the store, then commits
  blocks and prints each committed height on its own line, until MAX_BLOCKS or SIGKILL.
* ``read PATH`` opens the store read-only, prints ``ready``, then answers one stdin command per line:
  ``tip`` -> ``TIP LTHASH_SHA256 MAP_SIZE``, ``write`` -> the error a write raises, ``quit``.
"""
from __future__ import annotations

import hashlib
import sys

from timecoin import crypto
from timecoin.ledger.account import EMPTY_ACCOUNT
from timecoin.ledger.block import Block, CommitCertificate, Vote, VoteType, verify_certificate
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.result import BlockResult, StateReader
from timecoin.ledger.state import MemoryState, build_block, validate_block
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.ledger.validators import ValidatorSet
from timecoin.store import ACCOUNTS, Store

CHAIN_ID = "timecoin-storetest"
GENESIS_TIME = 1_767_225_600_000
BLOCK_MS = 1_000
N_VALIDATORS = 4
N_WALLETS = 3
WALLET_BALANCE = 1_000_000 * crypto.UNITS_PER_TIME


def key(label: str) -> crypto.PrivateKey:
    """A deterministic key, so a restarted writer and the test agree on every signer."""
    return crypto.PrivateKey(hashlib.sha256(f"timecoin store test {label}".encode()).digest())


VALIDATOR_KEYS = [key(f"validator {i}") for i in range(N_VALIDATORS)]
WALLET_KEYS = [key(f"wallet {i}") for i in range(N_WALLETS)]
KEYS_BY_ADDRESS = {k.address: k for k in VALIDATOR_KEYS + WALLET_KEYS}


def make_genesis(chain_id: str = CHAIN_ID) -> Genesis:
    """Four equal validators and three funded wallets without public keys (set by their first tx)."""
    wallets = tuple(GenesisAccount(k.address, WALLET_BALANCE) for k in WALLET_KEYS)
    return Genesis.for_validators([k.public_key for k in VALIDATOR_KEYS], chain_id, genesis_time=GENESIS_TIME,
                                  extra=wallets)


def initialize(store: Store, genesis: Genesis) -> None:
    """What ``node.StoreService`` does on start: initialize on first use, then check the chain."""
    if not store.is_initialized:
        vs = genesis.validators()
        store.initialize(genesis.chain_id, genesis.hash, genesis.initial_accounts(), vs, vs,
                         genesis.initial_lthash())
    store.check_chain(genesis.chain_id, genesis.hash)


def sign_certificate(block: Block, validators: ValidatorSet, chain_id: str, round_: int = 0) -> CommitCertificate:
    """Precommits of validators in address order until they pass 2/3 of the power (not all sign)."""
    votes: list[Vote] = []
    power = 0
    for v in validators.validators:
        signer = KEYS_BY_ADDRESS[v.address]
        votes.append(Vote(VoteType.PRECOMMIT, block.height, round_, block.hash, v.address).signed(signer, chain_id))
        power += v.power
        if validators.quorum(power):
            break
    return CommitCertificate.from_votes(votes)


class ChainBuilder:
    """Builds the next block of a chain over any StateReader, as a proposer and its validators would."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.params = genesis.params

    def transfers(self, state: StateReader, height: int, count: int, salt: bytes = b"") -> list[Transaction]:
        """``count`` transfers from the wallets in turn, each to a fresh address (so state grows)."""
        nonces = {k.address: (state.get_account(k.address) or EMPTY_ACCOUNT).nonce for k in WALLET_KEYS}
        txs = []
        for j in range(count):
            sender = WALLET_KEYS[j % len(WALLET_KEYS)]
            recipient = hashlib.sha256(b"recipient %d %d " % (height, j) + salt).digest()[:20]
            txs.append(Transaction.create(sender, TxKind.TRANSFER, self.genesis.chain_id, nonces[sender.address],
                                          self.params.min_fee, 1_000 + j, recipient))
            nonces[sender.address] += 1
        return txs

    def stake(self, state: StateReader, wallet: int, amount: int, kind: TxKind = TxKind.STAKE) -> Transaction:
        """A stake (or unstake) by wallet ``wallet``: changes the validator set two heights on."""
        k = WALLET_KEYS[wallet]
        nonce = (state.get_account(k.address) or EMPTY_ACCOUNT).nonce
        return Transaction.create(k, kind, self.genesis.chain_id, nonce, self.params.min_fee, amount)

    def proposer(self, state: StateReader, height: int) -> bytes:
        vs = state.validator_set(height)
        assert vs is not None
        return vs.validators[height % len(vs)].address

    def block(self, state: StateReader, height: int, prev_hash: bytes, txs: list[Transaction],
              proposer: bytes | None = None, timestamp: int | None = None,
              round_: int = 0) -> tuple[Block, BlockResult, CommitCertificate]:
        """Build and execute block ``height`` over ``state``, and certify it with the set of its height."""
        block, result = build_block(state, self.params, height, round_, prev_hash,
                                    GENESIS_TIME + height * BLOCK_MS if timestamp is None else timestamp,
                                    proposer or self.proposer(state, height), txs)
        if len(result.applied) != len(txs):
            raise AssertionError(f"txs rejected at height {height}: {result.rejected}")
        vs = state.validator_set(height)
        assert vs is not None
        return block, result, sign_certificate(block, vs, self.genesis.chain_id, round_)

    def commit_next(self, store: Store, n_txs: int = 2,
                    extra: tuple[Transaction, ...] = ()) -> tuple[Block, BlockResult, CommitCertificate]:
        """Build the block on top of the store's tip and commit it."""
        height = store.tip_height() + 1
        txs = self.transfers(store, height, n_txs) + list(extra)
        block, result, cert = self.block(store, height, store.tip_hash(), txs)
        store.commit_block(block, cert, result)
        return block, result, cert


def genesis_state(genesis: Genesis) -> MemoryState:
    vs = genesis.validators()
    return MemoryState(genesis.initial_accounts(), {1: vs, 2: vs}, genesis.initial_lthash())


def replay_and_check(store: Store, genesis: Genesis) -> MemoryState:
    """Re-execute every stored block from genesis and check it against the store.

    Every block decodes, validates (prev hash, roots, state root) on the replayed state, and its
    certificate verifies under the replayed validator set; the end state (accounts byte for byte,
    LtHash, the sets of tip + 1 and tip + 2) equals the store's. Returns the replayed state.
    """
    mem = genesis_state(genesis)
    prev_hash, prev_ts = genesis.hash, genesis.genesis_time
    tip = store.tip_height()
    for height in range(1, tip + 1):
        block, cert = store.get_block(height), store.get_certificate(height)
        assert block is not None and cert is not None, f"block or certificate {height} missing"
        assert block.height == height
        vs = mem.validator_set(height)
        assert vs is not None and vs == store.validator_set(height)
        verify_certificate(block, cert, vs, genesis.chain_id)
        result = validate_block(mem, genesis.params, block, prev_hash, prev_ts)
        mem.commit(result)
        prev_hash, prev_ts = block.hash, block.header.timestamp
    assert store.tip_hash() == prev_hash
    assert store.lthash() == mem.lthash()
    stored = dict(store.items(ACCOUNTS))
    assert stored == {a: acct.encoded for a, acct in mem.accounts.items() if not acct.is_empty}
    for height in (tip + 1, tip + 2):
        assert store.validator_set(height) == mem.validator_set(height)
    return mem


def _write(path: str, genesis_path: str, map_size: int, max_blocks: int, n_txs: int) -> None:
    genesis = Genesis.load(genesis_path)
    builder = ChainBuilder(genesis)
    with Store(path, map_size=map_size) as store:
        initialize(store, genesis)
        for _ in range(max_blocks):
            block, _result, _cert = builder.commit_next(store, n_txs)
            sys.stdout.write(f"{block.height}\n")
            sys.stdout.flush()


def _read(path: str) -> None:
    with Store.open_readonly(path) as store:
        print("ready", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "tip":
                lthash = hashlib.sha256(store.lthash()).hexdigest()
                print(store.tip_height(), lthash, store.map_size, flush=True)
            elif cmd == "write":
                try:
                    store.put("peers", b"k", b"v")
                    print("wrote", flush=True)
                except Exception as exc:  # report whatever it is: the test asserts the type
                    print(type(exc).__name__, flush=True)
            else:
                return


if __name__ == "__main__":
    if sys.argv[1] == "write":
        _write(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    elif sys.argv[1] == "read":
        _read(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
