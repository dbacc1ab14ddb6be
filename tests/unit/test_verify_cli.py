"""``timecoin verify PROOF.json``, run as a user runs it (a subprocess): ``final`` and exit 0, or one line naming
what fails and exit 1 for a proof that does not show finality, exit 2 for a usage error (never a traceback)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_proof import TIP, TX_BLOCK, World, build_world, flip
from timecoin.ledger import proof as fp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Path]]:
    folder = tmp_path_factory.mktemp("verify")
    world = build_world(str(folder / "chain"))
    (folder / "genesis.json").write_text(world.spec.genesis.to_json())
    yield world, folder
    world.store.close()


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timecoin", "verify", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def write(folder: Path, name: str, proof: Any) -> Path:
    path = folder / name
    path.write_text(json.dumps(proof) if not isinstance(proof, str) else proof)
    return path


def refused(run: subprocess.CompletedProcess[str], says: str) -> None:
    assert run.returncode == 1, run
    assert run.stdout == ""
    assert run.stderr.startswith("timecoin: not final: ") and says in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr                      # one line, no traceback


def test_a_tx_proof_and_a_block_proof_verify_from_genesis(files: tuple[World, Path]) -> None:
    world, folder = files
    txid = world.txs[2].id
    run = verify(write(folder, "tx.json", fp.build_proof(world.store, TX_BLOCK, txid)), "--genesis",
                 folder / "genesis.json")
    assert run.returncode == 0, run.stderr
    block_hash = world.store.block_hash_at(TX_BLOCK)
    assert block_hash is not None
    assert run.stdout.startswith(f"final: tx {txid.hex()} in block {TX_BLOCK} {block_hash.hex()} on timecoin-chaingen")
    run = verify(write(folder, "block.json", fp.build_proof(world.store, TIP)), "--genesis", folder / "genesis.json")
    assert run.returncode == 0 and run.stdout.startswith(f"final: block {TIP} "), run


def test_a_proof_from_a_trusted_height_verifies_with_that_hash_only(files: tuple[World, Path]) -> None:
    world, folder = files
    path = write(folder, "anchored.json", fp.build_proof(world.store, TIP, trusted_height=8))
    good, bad = world.store.block_hash_at(8), world.store.block_hash_at(9)
    assert good is not None and bad is not None
    run = verify(path, "--trusted-height", "8", "--trusted-hash", good.hex())
    assert run.returncode == 0 and run.stdout.startswith(f"final: block {TIP}"), run
    refused(verify(path, "--trusted-height", "8", "--trusted-hash", bad.hex()), "trusted header of height 8 has hash")
    refused(verify(path, "--genesis", folder / "genesis.json"), "--trusted-height 8")


def test_one_flipped_bit_a_removed_validator_or_an_altered_path_is_named(files: tuple[World, Path]) -> None:
    world, folder = files
    genesis = folder / "genesis.json"
    proof = fp.build_proof(world.store, TX_BLOCK, world.txs[1].id)
    sig = proof["block"]["certificate"]["signatures"][0]
    sig["signature"] = flip(sig["signature"], 200)
    refused(verify(write(folder, "sig.json", proof), "--genesis", genesis),
            f"certificate of block {TX_BLOCK}: signature of validator {sig['validator'][:8]}.. does not verify")

    proof = fp.build_proof(world.store, TX_BLOCK, world.txs[1].id)
    del proof["block"]["validators"][3]
    refused(verify(write(folder, "val.json", proof), "--genesis", genesis),
            f"validator set of height {TX_BLOCK} does not match validators_hash")

    proof = fp.build_proof(world.store, TX_BLOCK, world.txs[1].id)
    proof["tx"]["path"][-1] = flip(proof["tx"]["path"][-1], 100)
    refused(verify(write(folder, "path.json", proof), "--genesis", genesis),
            f"not in block {TX_BLOCK}: Merkle path does not reach tx_root")

    proof = fp.build_proof(world.store, TIP)
    del proof["set_changes"][0]
    refused(verify(write(folder, "skip.json", proof), "--genesis", genesis), "set change at height 10:")


def test_another_genesis_and_malformed_files_fail_in_one_line(files: tuple[World, Path], tmp_path: Path) -> None:
    world, folder = files
    other = build_world(str(tmp_path / "other"), seed=8)
    try:
        (tmp_path / "other.json").write_text(other.spec.genesis.to_json())
    finally:
        other.store.close()
    path = write(folder, "plain.json", fp.build_proof(world.store, 3))
    refused(verify(path, "--genesis", tmp_path / "other.json"), "proof is for genesis")
    refused(verify(write(folder, "broken.json", '{"type": "timecoin/finality-proof", '), "--genesis",
                   folder / "genesis.json"), "proof is not JSON")
    refused(verify(write(folder, "deep.json", "[" * 100_000), "--genesis", folder / "genesis.json"),
            "proof is not JSON")
    refused(verify(write(folder, "list.json", "[1, 2]"), "--genesis", folder / "genesis.json"), "not a finality proof")
    proof = fp.build_proof(world.store, 3)
    proof["block"]["header"]["height"] = "three"
    refused(verify(write(folder, "typed.json", proof), "--genesis", folder / "genesis.json"),
            "malformed proof: block.header.height must be an integer")


@pytest.mark.parametrize(("args", "says"), [
    (("{proof}",), "give either --genesis FILE or --trusted-height H"),
    (("{proof}", "--trusted-height", "3"), "--trusted-height and --trusted-hash go together"),
    (("{proof}", "--trusted-height", "3", "--trusted-hash", "xyz"), "--trusted-height/--trusted-hash"),
    (("{proof}", "--trusted-height", "0", "--trusted-hash", "00" * 32), "a trusted block height is at least 1"),
    (("{proof}", "--genesis", "{folder}/missing.json"), "cannot read genesis file"),
    (("{folder}/missing-proof.json", "--genesis", "{folder}/genesis.json"), "cannot read"),
])
def test_usage_errors_exit_2_in_one_line(files: tuple[World, Path], args: tuple[str, ...], says: str) -> None:
    world, folder = files
    proof = write(folder, "usage.json", fp.build_proof(world.store, 2))
    run = verify(*(a.format(proof=proof, folder=folder) for a in args))
    assert run.returncode == 2, run
    assert run.stderr.startswith("timecoin: error: ") and says in run.stderr and run.stderr.count("\n") == 1, run.stderr
