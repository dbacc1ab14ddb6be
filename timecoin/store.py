"""The node's LMDB store: one environment, named databases, one write transaction per block (SPEC §3).

Shape (after Synapse's ``lmdbslab`` and Sawtooth's ``indexed_database``):

* One ``lmdb.Environment`` (a directory holding ``data.mdb`` and ``lock.mdb``) with named databases
  opened once at start-up:

  ============  =======================================  ==============================================
  database      key                                      value
  ============  =======================================  ==============================================
  meta          ``schema_version``, ``genesis_hash``,    8-byte big-endian ints, raw hashes, the chain
                ``chain_id``, ``tip_height``, ``lthash``  id (UTF-8), the 2048-byte LtHash accumulator
  blocks        height (8 BE)                            ``Block.encoded``
  certs         height (8 BE)                            ``CommitCertificate.encoded``
  hashes        block hash                               height (8 BE); the genesis hash maps to 0
  accounts      address (20)                             ``Account.encoded`` (empty accounts absent)
  validators    height (8 BE)                            ``ValidatorSet.encode()``, known to tip + 2
  txindex       tx id                                    height (8 BE) + index in the block (4 BE)
  undo          height (8 BE)                            :data:`UNDO` record: pre-block LtHash and the
                                                         previous bytes of every touched account
  priorities    height (8 BE)                            proposer priorities at the start of a height
                                                         (``consensus/app.py``); cut back by a rollback
  privval, wal, peers, bans                              free for the double-sign guard, the consensus
                                                         WAL and the peer store (generic helpers)
  ============  =======================================  ==============================================

  Integer keys are big-endian so cursor scans run in height order.

* Every write goes through :meth:`Store._write`: one transaction, and on ``MapFullError`` the
  transaction is aborted, the map doubled (up to ``max_map_size``) and the whole transaction retried.
  A block, its certificate, its indexes, the account changes, the undo record, the validator set of
  height + 2, the LtHash and the tip are committed together or not at all. Sync commits a batch of
  consecutive blocks the same way in one transaction (:meth:`Store.commit_blocks`, SPEC §6).
* Durability: LMDB's default ``sync=True``/``metasync=True``; a crash at any point leaves the last
  committed block and its state intact (``tests/unit/test_store.py`` kills a writer with SIGKILL).
* Threading: only one thread -- the reactor's -- ever touches the environment. LMDB write
  transactions are bound to their thread and ``set_mapsize`` needs no live transaction in the
  process, so calls from a thread pool would break both. Other *processes* (``timecoin status``)
  read concurrently through :meth:`Store.open_readonly`.
* Undo records are kept for the last ``undo_depth`` blocks (default 1,000 = the maximum reorg depth of
  SPEC §7); older ones are pruned on commit so a fast devnet does not grow the store without bound.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import lmdb
from construct import Flag, GreedyBytes, If, Int32ub, Int64ub, Prefixed, PrefixedArray, Struct, this
from twisted.logger import Logger

from timecoin.errors import DecodeError, StoreError
from timecoin.ledger.account import Account
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.ledger.result import BlockResult
from timecoin.ledger.validators import ValidatorSet
from timecoin.wire import messages
from timecoin.wire.messages import Address, Codec, ExactBytes

T = TypeVar("T")

SCHEMA_VERSION = 1
LTHASH_SIZE = 2048
MAX_REORG_DEPTH = 1000
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
MAX_MAP_SIZE = 1 << 40                    # 1 TiB: beyond this a full map is an error, not growth
MAX_DBS = 16                              # LMDB's limit on named databases; DB_NAMES must fit
HEADER_SIZE: int = messages.Header.sizeof()   # a block's encoding starts with its fixed-size header

META = "meta"
BLOCKS = "blocks"
CERTS = "certs"
HASHES = "hashes"
ACCOUNTS = "accounts"
VALIDATORS = "validators"
TXINDEX = "txindex"
UNDO_DB = "undo"
PRIVVAL = "privval"
WAL = "wal"
PEERS = "peers"
BANS = "bans"
PRIORITIES = "priorities"                 # = consensus.app.PRIORITIES_DB (not imported: no store -> consensus)
DB_NAMES: tuple[str, ...] = (META, BLOCKS, CERTS, HASHES, ACCOUNTS, VALIDATORS, TXINDEX, UNDO_DB,
                             PRIVVAL, WAL, PEERS, BANS, PRIORITIES)

K_SCHEMA = b"schema_version"
K_GENESIS = b"genesis_hash"
K_CHAIN_ID = b"chain_id"
K_TIP = b"tip_height"
K_LTHASH = b"lthash"

# The undo record of one block: the LtHash before it and, for every account it touched, the exact
# bytes stored before it (or "absent"), so a rollback restores state byte for byte.
UndoLayout = Struct(
    "height" / Int64ub,
    "prev_lthash" / ExactBytes(LTHASH_SIZE),
    "accounts" / PrefixedArray(Int32ub, Struct(
        "address" / Address,
        "present" / Flag,
        "account" / If(this.present, Prefixed(Int32ub, GreedyBytes)),
    )),
)
UNDO = Codec("Undo", UndoLayout)


def encode_undo(height: int, prev_lthash: bytes, accounts: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    """``UNDO.encode`` of (address, stored bytes or None) pairs, by concatenation: the layout is fixed-width
    fields and length prefixes, so this is the same bytes (a test holds it to the codec) at a fraction of
    construct's cost, which was ~15 % of committing a 1,000-tx block (issue 15)."""
    if len(prev_lthash) != LTHASH_SIZE:
        raise StoreError(f"the LtHash accumulator must be {LTHASH_SIZE} bytes, not {len(prev_lthash)}")
    parts = [height.to_bytes(8, "big"), prev_lthash, len(accounts).to_bytes(4, "big")]
    for address, stored in accounts:
        if len(address) != 20:
            raise StoreError(f"an account address is 20 bytes, not {len(address)}")
        if stored is None:
            parts += (address, b"\x00")
        else:
            parts += (address, b"\x01", len(stored).to_bytes(4, "big"), stored)
    return b"".join(parts)


def _h(height: int) -> bytes:
    """Big-endian 8-byte height key (ordered scans)."""
    return height.to_bytes(8, "big")


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def stored_block(raw: bytes) -> Block:
    """A block from the store's own bytes: parsed without the canonical re-encoding check of the wire decoder.

    The store holds only what it wrote: ``Block.encoded`` of a block that was built here or decoded
    canonically on receipt (``Block.decode``) before it was validated and committed, so rebuilding it to
    compare would only repeat that. Reading a block for RPC or sync then costs one parse instead of a parse
    and a build. The header is the fixed-size prefix of the encoding, so its bytes (and hash) come free.
    Corrupt bytes still fail, with DecodeError, as ``Block.decode`` does.
    """
    data = bytes(raw)
    block = Block.from_wire(_parse_stored(messages.BLOCK, "Block", data))
    block.__dict__["encoded"] = data
    block.header.__dict__["encoded"] = data[:HEADER_SIZE]
    return block


def stored_certificate(raw: bytes) -> CommitCertificate:
    """A certificate from the store's own bytes (see :func:`stored_block`: parsed once, not rebuilt)."""
    data = bytes(raw)
    cert = CommitCertificate.from_wire(_parse_stored(messages.COMMIT_CERTIFICATE, "CommitCertificate", data))
    cert.__dict__["encoded"] = data
    return cert


def _parse_stored(codec: messages.Codec, name: str, data: bytes) -> Any:
    """One compiled parse of stored bytes; anything wrong with them is a DecodeError naming the layout."""
    try:
        return codec.compiled.parse(data)
    except Exception as exc:
        raise DecodeError(f"stored {name}: {type(exc).__name__}: {exc}".splitlines()[0][:200]) from None


class Store:
    """The LMDB store; implements ``timecoin.ledger.result.StateReader``.

    Not thread-safe by design: use it from the reactor thread only (see the module docstring).
    """

    log = Logger()

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False,
                 max_map_size: int = MAX_MAP_SIZE, undo_depth: int = MAX_REORG_DEPTH, durable: bool = True) -> None:
        """``durable=False`` skips the fsync of each commit (LMDB ``sync``/``metasync`` off): for bulk builders
        of throwaway chains only (benchmarks), never a node -- a system crash may then lose recent commits."""
        if map_size <= 0 or max_map_size < map_size:
            raise StoreError(f"bad map sizes: map_size={map_size}, max_map_size={max_map_size}")
        if undo_depth < 1:
            raise StoreError(f"undo_depth must be at least 1, not {undo_depth}")
        self.path = path
        self.readonly = readonly
        self.on_write_error: Callable[[str], None] | None = None    # a write that cannot be made (node.fatal)
        self.max_map_size = max_map_size
        self.undo_depth = undo_depth
        self._vset_cache: tuple[bytes, ValidatorSet] | None = None     # (stored bytes, decoded): validator_set
        data_file = os.path.join(path, "data.mdb")
        if readonly:
            # Never create anything for a reader: a typo in --datadir must not leave an empty store.
            if not os.path.isdir(path):
                raise StoreError(f"no Timecoin store at {path}: the directory does not exist")
            if not os.path.isfile(data_file):
                raise StoreError(f"no Timecoin store at {path}: {data_file} does not exist")
        else:
            os.makedirs(path, mode=0o700, exist_ok=True)
        if os.path.isfile(data_file):
            # LMDB refuses a map smaller than the file; start from whichever is larger.
            map_size = max(map_size, os.path.getsize(data_file))
        try:
            self._env: lmdb.Environment | None = lmdb.open(
                path, map_size=map_size, subdir=True, readonly=readonly, lock=True, create=not readonly,
                max_dbs=MAX_DBS, sync=durable, metasync=durable)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        try:
            self._dbs: dict[str, Any] = {
                name: self._env.open_db(name.encode(), create=not readonly) for name in DB_NAMES}
            self._check_schema()
        except lmdb.Error as exc:
            self.close()
            raise StoreError(f"cannot open the databases of the store at {path}: {exc}") from None
        except StoreError:
            self.close()
            raise

    @classmethod
    def open_readonly(cls, path: str) -> Store:
        """Open for reading while a node may be writing (``timecoin status``); creates nothing."""
        return cls(path, readonly=True)

    def _check_schema(self) -> None:
        raw = self._read(lambda txn: txn.get(K_SCHEMA, db=self._dbs[META]))
        if raw is not None and _int(raw) != SCHEMA_VERSION:
            raise StoreError(f"the store at {self.path} has schema version {_int(raw)}, "
                             f"this node uses schema version {SCHEMA_VERSION}")

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the environment (idempotent); committed data is already on disk."""
        if self._env is not None:
            self._env.close()
            self._env = None

    @property
    def closed(self) -> bool:
        return self._env is None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def map_size(self) -> int:
        """Current size of the memory map in bytes (grows on demand)."""
        return int(self._live_env().info()["map_size"])

    @property
    def used_bytes(self) -> int:
        """Bytes of the map in use (pages up to the last one written): with ``map_size``, how full the map is."""
        env = self._live_env()
        return (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])

    # -- transactions ------------------------------------------------------------------------------
    def _live_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreError(f"the store at {self.path} is closed")
        return self._env

    def _read(self, fn: Callable[[lmdb.Transaction], T], buffers: bool = False) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot).

        A reader in another process than the writer sees ``MapResizedError`` once the writer grew the
        map past ours; adopting the new size (``set_mapsize(0)``) and retrying is LMDB's documented fix.
        """
        env = self._live_env()
        for _ in range(8):
            try:
                with env.begin(buffers=buffers) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                try:
                    env.set_mapsize(0)
                except lmdb.Error as exc:
                    raise StoreError(f"cannot adopt the grown map of {self.path}: {exc}") from None
            except lmdb.Error as exc:
                raise StoreError(f"cannot read the store at {self.path}: {exc}") from None
        raise StoreError(f"the store at {self.path} keeps resizing under this reader")

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction; on a full map abort, grow and retry the whole of it.

        ``fn`` must not change Python state it cannot repeat: it may run more than once.
        """
        env = self._live_env()
        if self.readonly:
            raise StoreError(f"the store at {self.path} is open read-only")
        while True:
            try:
                with env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.BadValsizeError as exc:
                # A key or value LMDB cannot hold: this one write is refused, the store is fine.
                raise StoreError(f"cannot write the store at {self.path}: {exc}") from None
            except lmdb.Error as exc:
                # e.g. a disk error (full, I/O): the transaction was aborted, nothing half-written.
                raise self._write_failed(f"cannot write the store at {self.path}: {exc}") from None

    def _write_failed(self, message: str) -> StoreError:
        """A write the store cannot make (disk full, I/O error, map at its cap): tell the owner, who stops the
        node -- a node that cannot record what it finalizes or signs must not go on half-working."""
        if self.on_write_error is not None:
            self.on_write_error(message)
        return StoreError(message)

    def _grow(self) -> None:
        env = self._live_env()
        old = int(env.info()["map_size"])
        if old >= self.max_map_size:
            raise self._write_failed(f"the store at {self.path} is full: the map is at its cap of "
                                     f"{self.max_map_size} bytes (lmdb_max_map_size)")
        new = min(old * 2, self.max_map_size)
        try:
            env.set_mapsize(new)
        except lmdb.Error as exc:
            raise StoreError(f"cannot grow the map of {self.path} to {new} bytes: {exc}") from None
        self.log.info("LMDB map of {path} grown from {old} to {new} bytes", path=self.path, old=old, new=new)

    def _db(self, name: str) -> Any:
        try:
            return self._dbs[name]
        except KeyError:
            raise StoreError(f"no database named {name!r}; known: {', '.join(DB_NAMES)}") from None

    # -- generic helpers (privval, wal, peers, bans, ...) -----------------------------------------
    def get(self, db_name: str, key: bytes) -> bytes | None:
        db = self._db(db_name)
        return self._read(lambda txn: txn.get(key, db=db))

    def put(self, db_name: str, key: bytes, value: bytes) -> None:
        db = self._db(db_name)
        self._write(lambda txn: txn.put(key, value, db=db))

    def delete(self, db_name: str, key: bytes) -> bool:
        """Delete ``key``; True if it existed."""
        db = self._db(db_name)
        return bool(self._write(lambda txn: txn.delete(key, db=db)))

    def write_many(self, db_name: str, values: Mapping[bytes, bytes | None]) -> None:
        """Write several keys in one transaction; a None value deletes its key."""
        db = self._db(db_name)

        def write(txn: lmdb.Transaction) -> None:
            for key, value in values.items():
                if value is None:
                    txn.delete(key, db=db)
                else:
                    txn.put(key, value, db=db)
        self._write(write)

    def items(self, db_name: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a database in key order, optionally only keys starting with ``prefix``."""
        db = self._db(db_name)

        def scan(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            with txn.cursor(db=db) as cur:
                if not cur.set_range(prefix):
                    return []
                out = []
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append((key, value))
                return out
        return self._read(scan)

    # -- genesis and identity ---------------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return self.get(META, K_GENESIS) is not None

    def initialize(self, chain_id: str, genesis_hash: bytes, accounts: Mapping[bytes, Account],
                   validators_h1: ValidatorSet, validators_h2: ValidatorSet, lthash: bytes) -> None:
        """Write the genesis state in one transaction: schema, identity, accounts, sets of heights 1 and 2."""
        if len(genesis_hash) != 32:
            raise StoreError("the genesis hash must be 32 bytes")
        if len(lthash) != LTHASH_SIZE:
            raise StoreError(f"the LtHash accumulator must be {LTHASH_SIZE} bytes, not {len(lthash)}")
        meta, accts, vals = self._dbs[META], self._dbs[ACCOUNTS], self._dbs[VALIDATORS]

        def write(txn: lmdb.Transaction) -> None:
            if txn.get(K_GENESIS, db=meta) is not None:
                raise StoreError(f"the store at {self.path} is already initialized")
            txn.put(K_SCHEMA, _h(SCHEMA_VERSION), db=meta)
            txn.put(K_GENESIS, genesis_hash, db=meta)
            txn.put(K_CHAIN_ID, chain_id.encode(), db=meta)
            txn.put(K_TIP, _h(0), db=meta)
            txn.put(K_LTHASH, lthash, db=meta)
            txn.put(genesis_hash, _h(0), db=self._dbs[HASHES])
            for address, account in accounts.items():
                if len(address) != 20:
                    raise StoreError(f"genesis address {address.hex()} is not 20 bytes")
                if not account.is_empty:
                    txn.put(address, account.encoded, db=accts)
            txn.put(_h(1), validators_h1.encode(), db=vals)
            txn.put(_h(2), validators_h2.encode(), db=vals)
        self._write(write)

    def _meta(self, txn: lmdb.Transaction, key: bytes) -> bytes:
        value = txn.get(key, db=self._dbs[META])
        if value is None:
            raise StoreError(f"the store at {self.path} is not initialized (no {key.decode()})")
        return bytes(value)

    def genesis_hash(self) -> bytes:
        return self._read(lambda txn: self._meta(txn, K_GENESIS))

    def chain_id(self) -> str:
        return self._read(lambda txn: self._meta(txn, K_CHAIN_ID)).decode()

    def check_chain(self, chain_id: str, genesis_hash: bytes) -> None:
        """StoreError unless this store holds the chain of ``genesis_hash`` and ``chain_id``."""
        ours_hash, ours_id = self.genesis_hash(), self.chain_id()
        if ours_hash != genesis_hash:
            raise StoreError(f"the store at {self.path} belongs to another chain: its genesis hash is "
                             f"{ours_hash.hex()}, the configured genesis hash is {genesis_hash.hex()}")
        if ours_id != chain_id:
            raise StoreError(f"the store at {self.path} belongs to chain id {ours_id!r}, "
                             f"not {chain_id!r}")

    # -- StateReader -------------------------------------------------------------------------------
    def get_account(self, address: bytes) -> Account | None:
        raw = self.get(ACCOUNTS, address)
        return None if raw is None else Account.decode(raw)

    def validator_set(self, height: int) -> ValidatorSet | None:
        """The set of ``height``; decoded once per distinct stored value (sets rarely change between heights).

        The cache is keyed by the stored bytes read in this very call, so a write that changes the set of a
        height (a new block, a rollback) can never be answered from a stale entry.
        """
        if height < 0:
            return None
        raw = self.get(VALIDATORS, _h(height))
        if raw is None:
            return None
        cached = self._vset_cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        vs = ValidatorSet.decode(raw)
        self._vset_cache = (raw, vs)
        return vs

    def lthash(self) -> bytes:
        return self._read(lambda txn: self._meta(txn, K_LTHASH))

    # -- chain reads -------------------------------------------------------------------------------
    def _tip(self, txn: lmdb.Transaction) -> int:
        return _int(self._meta(txn, K_TIP))

    def _hash_at(self, txn: lmdb.Transaction, height: int) -> bytes | None:
        if height == 0:
            return self._meta(txn, K_GENESIS)
        if height < 0:
            return None
        raw = txn.get(_h(height), db=self._dbs[BLOCKS])
        # The header is the fixed-size prefix of the block encoding: hash it without decoding the body.
        return None if raw is None else hashlib.sha256(raw[:HEADER_SIZE]).digest()

    def tip_height(self) -> int:
        return self._read(self._tip)

    def tip_hash(self) -> bytes:
        """Hash of the last committed block (the genesis hash at height 0)."""
        def read(txn: lmdb.Transaction) -> bytes:
            h = self._hash_at(txn, self._tip(txn))
            if h is None:
                raise StoreError(f"the store at {self.path} lacks its tip block")
            return h
        return self._read(read, buffers=True)

    def block_hash_at(self, height: int) -> bytes | None:
        return self._read(lambda txn: self._hash_at(txn, height), buffers=True)

    def block_hashes(self, start: int, count: int) -> list[bytes]:
        """Hashes of heights ``start``, ``start + 1``, ... (at most ``count``; stops at the tip)."""
        def read(txn: lmdb.Transaction) -> list[bytes]:
            out: list[bytes] = []
            for height in range(max(start, 0), max(start, 0) + max(count, 0)):
                h = self._hash_at(txn, height)
                if h is None:
                    break
                out.append(h)
            return out
        return self._read(read, buffers=True)

    def height_of(self, block_hash: bytes) -> int | None:
        raw = self.get(HASHES, block_hash)
        return None if raw is None else _int(raw)

    def get_block_bytes(self, height: int) -> bytes | None:
        return self.get(BLOCKS, _h(height)) if height >= 0 else None

    def get_block(self, height: int) -> Block | None:
        raw = self.get_block_bytes(height)
        return None if raw is None else stored_block(raw)

    def get_certificate(self, height: int) -> CommitCertificate | None:
        raw = self.get(CERTS, _h(height)) if height >= 0 else None
        return None if raw is None else stored_certificate(raw)

    def block_view(self, height: int) -> tuple[Block, CommitCertificate | None, int, bytes | None] | None:
        """(block, its certificate, tip height, hash of the next block or None) from one snapshot (getblock).

        One read transaction instead of four: the answer is consistent even if a block commits meanwhile.
        """
        if height < 1:
            return None
        blocks, certs = self._dbs[BLOCKS], self._dbs[CERTS]

        def read(txn: lmdb.Transaction) -> tuple[bytes, bytes | None, int, bytes | None] | None:
            raw = txn.get(_h(height), db=blocks)
            if raw is None:
                return None
            return raw, txn.get(_h(height), db=certs), self._tip(txn), self._hash_at(txn, height + 1)
        got = self._read(read)
        if got is None:
            return None
        raw, cert, tip, next_hash = got
        return stored_block(raw), None if cert is None else stored_certificate(cert), tip, next_hash

    def tx_location(self, txid: bytes) -> tuple[int, int] | None:
        """(height, index in block) of a committed transaction."""
        raw = self.get(TXINDEX, txid)
        return None if raw is None else (_int(raw[:8]), _int(raw[8:12]))

    def get_blocks(self, start: int, count: int) -> list[tuple[Block, CommitCertificate]]:
        """Certified blocks ``start``, ``start + 1``, ... from one snapshot (sync serving)."""
        blocks, certs = self._dbs[BLOCKS], self._dbs[CERTS]

        def read(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            for height in range(max(start, 1), max(start, 1) + max(count, 0)):
                block, cert = txn.get(_h(height), db=blocks), txn.get(_h(height), db=certs)
                if block is None or cert is None:
                    break
                out.append((block, cert))
            return out
        return [(Block.decode(b), CommitCertificate.decode(c)) for b, c in self._read(read)]

    def get_raw_blocks(self, start: int, count: int, max_bytes: int, overhead: int = 0) -> list[tuple[bytes, bytes]]:
        """The stored (canonical) bytes of certified blocks ``start``, ``start + 1``, ... from one snapshot:
        at most ``count``, and while their sizes (plus ``overhead`` each) fit ``max_bytes`` -- at least one.
        Sync serving sends them as they are: no decode and re-encode."""
        blocks, certs = self._dbs[BLOCKS], self._dbs[CERTS]

        def read(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            left = max_bytes
            for height in range(max(start, 1), max(start, 1) + max(count, 0)):
                block, cert = txn.get(_h(height), db=blocks), txn.get(_h(height), db=certs)
                if block is None or cert is None:
                    break
                size = len(block) + len(cert) + overhead
                if size > left and out:
                    break
                left -= size
                out.append((block, cert))
            return out
        return self._read(read)

    # -- commit and rollback -----------------------------------------------------------------------
    def commit_block(self, block: Block, cert: CommitCertificate, result: BlockResult,
                     also: Mapping[tuple[str, bytes], bytes] | None = None) -> None:
        """Commit a finalized block and its state transition in ONE write transaction.

        ``also``: more records ((database, key) -> value) that belong to this height, written in the same
        transaction (consensus's next proposer priorities): atomic with the block, and no second commit
        (an fsynced LMDB commit is two syncs on the consensus critical path).

        Refuses (StoreError, nothing written) a block that does not extend the tip, a certificate for
        another block, a result of another height or of another block (its state root must be the
        header's), or a result computed against another state (its ``undo`` values must equal the
        stored accounts). The undo record is built from the stored
        bytes themselves, so a rollback restores them exactly.
        """
        writer = self._block_writer(block, cert, result)
        extra = [(self._db(name), key, value) for (name, key), value in (also or {}).items()]

        def write(txn: lmdb.Transaction) -> None:
            writer(txn)
            for db, key, value in extra:
                txn.put(key, value, db=db)
        self._write(write)

    def commit_blocks(self, items: Sequence[tuple[Block, CommitCertificate, BlockResult]]) -> None:
        """Commit consecutive finalized blocks in ONE write transaction (sync applies a batch, SPEC §6).

        Each block gets exactly the checks of :meth:`commit_block`, against the state as the blocks
        before it in ``items`` left it inside the transaction (so each undo record is that block's own).
        All or nothing: if any check fails, StoreError and nothing is written.
        """
        writers = [self._block_writer(block, cert, result) for block, cert, result in items]
        if not writers:
            return

        def write(txn: lmdb.Transaction) -> None:
            for writer in writers:
                writer(txn)
        self._write(write)

    def _block_writer(self, block: Block, cert: CommitCertificate,
                      result: BlockResult) -> Callable[[lmdb.Transaction], None]:
        """Check what needs no store, then return the writer of one block (run inside a write txn).

        The writer checks the block extends the tip and the result's undo values against the accounts
        as the transaction sees them, and raises StoreError (aborting the transaction) otherwise.
        It changes no Python state, so ``_write`` may rerun it after growing the map.
        """
        height = block.height
        if result.height != height:
            raise StoreError(f"block result is for height {result.height}, the block is {height}")
        if cert.height != height or cert.block_hash != block.hash:
            raise StoreError(f"the certificate is for block {cert.height}/{cert.block_hash.hex()}, "
                             f"not {height}/{block.hash.hex()}")
        if len(result.lthash) != LTHASH_SIZE:
            raise StoreError(f"the LtHash accumulator must be {LTHASH_SIZE} bytes, not {len(result.lthash)}")
        if result.state_root != block.header.state_root:
            raise StoreError(f"block {height} result is for another block: state root "
                             f"{result.state_root.hex()} is not the header's {block.header.state_root.hex()}")
        d = self._dbs
        block_bytes, cert_bytes = block.encoded, cert.encoded
        touched = sorted(set(result.changes) | set(result.undo))
        tx_ids = [tx.id for tx in block.txs]
        validators = result.next_validators.encode()

        def write(txn: lmdb.Transaction) -> None:
            tip = self._tip(txn)
            if height != tip + 1:
                raise StoreError(f"block {height} does not extend the tip at height {tip}")
            tip_hash = self._hash_at(txn, tip)
            if block.header.prev_hash != tip_hash:
                raise StoreError(f"block {height} builds on {block.header.prev_hash.hex()}, "
                                 f"the tip is {tip_hash.hex() if tip_hash else None}")
            undo_accounts = []
            for address in touched:
                stored = txn.get(address, db=d[ACCOUNTS])
                if address in result.undo:
                    before = result.undo[address]
                    expected = None if before is None or before.is_empty else before.encoded
                    if expected != stored:
                        raise StoreError(f"block {height} result was computed against another state: "
                                         f"account {address.hex()} differs from the store")
                undo_accounts.append((address, stored))
            undo = encode_undo(height, self._meta(txn, K_LTHASH), undo_accounts)
            key = _h(height)
            txn.put(key, block_bytes, db=d[BLOCKS])
            txn.put(key, cert_bytes, db=d[CERTS])
            txn.put(block.hash, key, db=d[HASHES])
            for index, txid in enumerate(tx_ids):
                # First inclusion wins; a duplicate id (impossible with nonces) never moves the index.
                txn.put(txid, key + index.to_bytes(4, "big"), db=d[TXINDEX], overwrite=False)
            for address, account in result.changes.items():
                if account.is_empty:
                    txn.delete(address, db=d[ACCOUNTS])
                else:
                    txn.put(address, account.encoded, db=d[ACCOUNTS])
            txn.put(key, undo, db=d[UNDO_DB])
            if height > self.undo_depth:
                txn.delete(_h(height - self.undo_depth), db=d[UNDO_DB])
            txn.put(_h(height + 2), validators, db=d[VALIDATORS])
            txn.put(K_LTHASH, result.lthash, db=d[META])
            txn.put(K_TIP, key, db=d[META])
        return write

    def rollback_to(self, height: int, max_depth: int = MAX_REORG_DEPTH) -> list[Block]:
        """Undo blocks tip..height+1 in one write transaction; returns the removed blocks, lowest first.

        Accounts and the LtHash are restored from the undo records; blocks, certificates, hash and tx
        index entries, validator sets above ``height + 2`` and proposer priorities above ``height + 1``
        (all derived from the removed blocks) are removed. Refused (StoreError, nothing
        changed) below height 0, above the tip, deeper than ``max_depth``, or past the kept undo records.
        """
        if height < 0:
            raise StoreError(f"cannot roll back to negative height {height}")
        d = self._dbs

        def write(txn: lmdb.Transaction) -> list[Block]:
            tip = self._tip(txn)
            if height > tip:
                raise StoreError(f"cannot roll back to height {height}: the tip is {tip}")
            if tip - height > max_depth:
                raise StoreError(f"refusing to roll back {tip - height} blocks (tip {tip} to {height}): "
                                 f"deeper than the maximum of {max_depth}")
            removed: list[Block] = []
            lthash = None
            for h in range(tip, height, -1):
                key = _h(h)
                raw_undo, raw_block = txn.get(key, db=d[UNDO_DB]), txn.get(key, db=d[BLOCKS])
                if raw_undo is None or raw_block is None:
                    raise StoreError(f"cannot roll back block {h}: its undo record is gone "
                                     f"(undo records are kept for {self.undo_depth} blocks)")
                try:
                    record = UNDO.decode(raw_undo)
                    block = Block.decode(raw_block)
                except DecodeError as exc:
                    raise StoreError(f"corrupt store at height {h}: {exc}") from None
                for entry in record.accounts:
                    if entry.present:
                        txn.put(entry.address, entry.account, db=d[ACCOUNTS])
                    else:
                        txn.delete(entry.address, db=d[ACCOUNTS])
                for tx in block.txs:
                    loc = txn.get(tx.id, db=d[TXINDEX])
                    if loc is not None and loc[:8] == key:
                        txn.delete(tx.id, db=d[TXINDEX])
                txn.delete(block.hash, db=d[HASHES])
                for name in (BLOCKS, CERTS, UNDO_DB):
                    txn.delete(key, db=d[name])
                lthash = record.prev_lthash
                removed.append(block)
            for name, first_stale in ((VALIDATORS, height + 3), (PRIORITIES, height + 2)):
                with txn.cursor(db=d[name]) as cur:
                    if cur.set_range(_h(first_stale)):
                        while cur.delete():
                            pass
            if lthash is not None:
                txn.put(K_LTHASH, lthash, db=d[META])
            txn.put(K_TIP, _h(height), db=d[META])
            return removed[::-1]
        removed = self._write(write)
        if removed:
            self.log.warn("rolled back {n} blocks to height {height}", n=len(removed), height=height)
        return removed
