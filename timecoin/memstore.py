"""An in-memory chain store with the Store's interface, for the simulator and fast engine tests.

It keeps the same facts as the LMDB store (blocks, certificates, accounts, validator sets, generic
key/value databases) in dicts, and commits a block with the same checks, so code that runs over it
runs unchanged over LMDB. It is a real backend, not a stand-in: nothing is faked.
"""
from __future__ import annotations

from collections.abc import Mapping

from timecoin.errors import StoreError
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.result import BlockResult
from timecoin.ledger.state import MemoryState


class MemoryStore(MemoryState):
    def __init__(self, genesis: Genesis) -> None:
        vs = genesis.validators()
        super().__init__(genesis.initial_accounts(), {1: vs, 2: vs}, genesis.initial_lthash())
        self._genesis_hash = genesis.hash
        self._chain_id = genesis.chain_id
        self.blocks: dict[int, Block] = {}
        self.certs: dict[int, CommitCertificate] = {}
        self.kv: dict[tuple[str, bytes], bytes] = {}

    def genesis_hash(self) -> bytes:
        return self._genesis_hash

    def chain_id(self) -> str:
        return self._chain_id

    def tip_height(self) -> int:
        return len(self.blocks)

    def tip_hash(self) -> bytes:
        return self.blocks[len(self.blocks)].hash if self.blocks else self._genesis_hash

    def block_hash_at(self, height: int) -> bytes | None:
        if height == 0:
            return self._genesis_hash
        b = self.blocks.get(height)
        return b.hash if b else None

    def get_block(self, height: int) -> Block | None:
        return self.blocks.get(height)

    def get_certificate(self, height: int) -> CommitCertificate | None:
        return self.certs.get(height)

    def get_blocks(self, start: int, count: int) -> list[tuple[Block, CommitCertificate]]:
        return [(self.blocks[h], self.certs[h]) for h in range(start, start + count) if h in self.blocks]

    def commit_block(self, block: Block, cert: CommitCertificate, result: BlockResult,
                     also: Mapping[tuple[str, bytes], bytes] | None = None) -> None:
        if block.height != self.tip_height() + 1 or block.header.prev_hash != self.tip_hash():
            raise StoreError(f"block {block.height} does not extend the tip {self.tip_height()}")
        if result.height != block.height or cert.height != block.height or cert.block_hash != block.hash:
            raise StoreError("result or certificate is for another block")
        if result.state_root != block.header.state_root:
            raise StoreError(f"block {block.height} result has another state root than its header")
        for address, before in result.undo.items():
            stored = self.accounts.get(address)
            if (before if before is not None and not before.is_empty else None) != stored:
                raise StoreError(f"block {block.height} result was computed against another state: "
                                 f"account {address.hex()} differs from the store")
        self.commit(result)
        self.blocks[block.height] = block
        self.certs[block.height] = cert
        self.kv.update(also or {})

    def get(self, db_name: str, key: bytes) -> bytes | None:
        return self.kv.get((db_name, key))

    def put(self, db_name: str, key: bytes, value: bytes) -> None:
        self.kv[(db_name, key)] = value
