"""Genesis files (SPEC §2): the canonical hash is the network's identity, so it must not depend on
formatting, and a file that cannot found a chain must be refused with a GenesisError naming why."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from timecoin import crypto
from timecoin.consensus.proposer import MAX_TOTAL_VOTING_POWER
from timecoin.crypto import UNITS_PER_TIME, PrivateKey
from timecoin.ledger import lthash as lt
from timecoin.ledger.account import Account
from timecoin.ledger.genesis import Genesis, GenesisAccount, GenesisError
from timecoin.ledger.params import MAX_UNBONDING_ENTRIES, OPTIONAL_PARAMS, ChainParams

V1 = PrivateKey(b"\x11" * 32)
V2 = PrivateKey(b"\x22" * 32)
USER = PrivateKey(b"\x33" * 32)
STAKE = 2_000 * UNITS_PER_TIME


def _obj() -> dict[str, Any]:
    return {
        "chain_id": "timecoin-test",
        "genesis_time": 1_767_225_600_000,
        "params": {"block_reward": 5 * UNITS_PER_TIME, "min_fee": 10},
        "accounts": [
            {"address": crypto.encode_address(V1.address), "balance": 100, "stake": STAKE,
             "pubkey": V1.public_key.hex()},
            {"pubkey": V2.public_key.hex(), "stake": STAKE},
            {"address": crypto.encode_address(USER.address), "balance": 7 * UNITS_PER_TIME},
        ],
    }


def test_load_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(_obj()))
    g = Genesis.load(str(path))
    assert g.chain_id == "timecoin-test"
    assert g.genesis_time == 1_767_225_600_000
    assert g.params == ChainParams("timecoin-test", block_reward=5 * UNITS_PER_TIME, min_fee=10)
    accounts = g.initial_accounts()
    assert accounts[V1.address] == Account(balance=100, stake=STAKE, pubkey=V1.public_key)
    assert accounts[V2.address] == Account(stake=STAKE, pubkey=V2.public_key)
    assert accounts[USER.address] == Account(balance=7 * UNITS_PER_TIME)
    vs = g.validators()
    assert {v.address for v in vs.validators} == {V1.address, V2.address}
    assert vs.total_power == 2 * STAKE
    assert vs.power_of(V1.address) == STAKE and vs.by_address[V2.address].pubkey == V2.public_key


def test_hash_stable_under_key_order_whitespace_and_account_order() -> None:
    obj = _obj()
    compact = json.dumps(obj, separators=(",", ":"))
    # Keys reversed at every level, accounts reversed, lavish whitespace.
    rev = {k: obj[k] for k in reversed(list(obj))}
    rev["params"] = {k: obj["params"][k] for k in reversed(list(obj["params"]))}
    rev["accounts"] = [{k: a[k] for k in reversed(list(a))} for a in reversed(obj["accounts"])]
    pretty = json.dumps(rev, indent=7) + "\n\n  "
    h1 = Genesis.from_json(compact).hash
    assert Genesis.from_json(pretty).hash == h1
    assert Genesis.from_json(pretty.encode()).hash == h1
    assert len(h1) == 32


def test_hash_stable_for_equivalent_spellings() -> None:
    """Defaults written out, address derived from pubkey, mainnet/testnet prefix: same meaning, same hash.
    (Not the OPTIONAL_PARAMS: those are hashed away from their default, see test_max_unbonding_entries_...)"""
    base = Genesis.from_obj(_obj()).hash
    explicit = _obj()
    explicit["params"] = {k: v for k, v in ChainParams("x", block_reward=5 * UNITS_PER_TIME,
                                                       min_fee=10).to_json().items()
                          if k != "chain_id" and k not in OPTIONAL_PARAMS}
    assert Genesis.from_obj(explicit).hash == base
    with_addr = _obj()
    with_addr["accounts"][1]["address"] = crypto.encode_address(V2.address)
    assert Genesis.from_obj(with_addr).hash == base
    mainnet_spelling = _obj()
    mainnet_spelling["accounts"][2]["address"] = crypto.encode_address(USER.address, "mainnet")
    assert Genesis.from_obj(mainnet_spelling).hash == base


@pytest.mark.parametrize("change", [
    lambda o: o.update(chain_id="timecoin-other"),
    lambda o: o.update(genesis_time=o["genesis_time"] + 1),
    lambda o: o["params"].update(min_fee=11),
    lambda o: o["accounts"][2].update(balance=7 * UNITS_PER_TIME + 1),
    lambda o: o["accounts"][0].update(stake=STAKE + 1),
])
def test_hash_changes_with_meaning(change: Any) -> None:
    obj = _obj()
    change(obj)
    assert Genesis.from_obj(obj).hash != Genesis.from_obj(_obj()).hash


def test_to_json_round_trip() -> None:
    g = Genesis.from_obj(_obj())
    again = Genesis.from_json(g.to_json())
    assert again == g
    assert again.hash == g.hash
    assert again.canonical == g.canonical
    assert b" " not in g.canonical and b"\n" not in g.canonical


def test_single_validator_and_for_validators() -> None:
    g = Genesis.single_validator(V1, genesis_time=5, block_reward=3)
    assert g.params.block_reward == 3
    assert list(g.validators().by_address) == [V1.address]
    g2 = Genesis.for_validators([V1.public_key, V2.public_key], "c", genesis_time=5,
                                extra=(GenesisAccount(USER.address, 9),))
    assert len(g2.validators()) == 2
    assert g2.initial_accounts()[USER.address].balance == 9


def test_initial_lthash_is_the_accumulation_of_accounts() -> None:
    g = Genesis.from_obj(_obj())
    acc = lt.LtHash()
    for address, account in sorted(g.initial_accounts().items(), reverse=True):
        acc.add(address + account.encoded)
    assert g.initial_lthash() == acc.to_bytes()


def test_empty_genesis_account_is_not_in_the_lthash() -> None:
    """An account of balance 0 and stake 0 is absent from the state (the store skips it), so the genesis
    accumulator must equal the accumulation of the non-empty accounts, or a state root cannot be
    recomputed from the stored accounts."""
    obj = _obj()
    obj["accounts"].append({"address": crypto.encode_address(PrivateKey(b"\x44" * 32).address), "balance": 0})
    with_empty = Genesis.from_obj(obj)
    assert with_empty.initial_lthash() == Genesis.from_obj(_obj()).initial_lthash()


def _set(path: str, value: Any) -> Any:
    def change(o: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = o
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    return change


_DELETE = object()


@pytest.mark.parametrize(("change", "message"), [
    (_set("chain_id", _DELETE), "chain_id"),
    (_set("chain_id", ""), "chain_id"),
    (_set("chain_id", "x" * 65), "chain_id"),
    (_set("chain_id", 7), "chain_id"),
    (_set("genesis_time", _DELETE), "genesis_time"),
    (_set("genesis_time", -1), "genesis_time"),
    (_set("genesis_time", 1.5), "genesis_time"),
    (_set("genesis_time", True), "genesis_time"),
    (_set("accounts", _DELETE), "accounts"),
    (_set("accounts", []), "accounts"),
    (_set("accounts", {}), "accounts"),
    (_set("extra", 1), "unknown genesis field"),
    (_set("params", []), "params"),
    (_set("params.no_such_param", 1), "no_such_param"),
    (_set("params.min_fee", -5), "params.min_fee"),
    (_set("params.block_reward", 2**64), "params.block_reward"),
    (_set("params.min_fee", "10"), "params.min_fee"),
    (_set("params.slash_ppm", 1_000_001), "slash_ppm"),
    (_set("params.max_block_txs", 0), "max_block_txs"),
    (_set("params.max_block_bytes", 1023), "max_block_bytes"),
    (_set("params.min_stake", 0), "min_stake"),
    (_set("params.min_stake", 1_000 * UNITS_PER_TIME - 1), "below 100000000000 units"),
    (_set("params.max_unbonding_entries", 0), "max_unbonding_entries"),
    (_set("params.max_unbonding_entries", 65_536), "max_unbonding_entries"),
    (_set("test_chain", "yes"), "test_chain"),
    (_set("test_chain", 1), "test_chain"),
    (_set("accounts.2.balance", -1), r"accounts\[2\].balance"),
    (_set("accounts.2.balance", 2**64), r"accounts\[2\].balance"),
    (_set("accounts.0.stake", -1), r"accounts\[0\].stake"),
    (_set("accounts.0.stake", 999 * UNITS_PER_TIME), "below min_stake"),
    (_set("accounts.2.address", "TIME0notanaddress"), r"accounts\[2\].address"),
    (_set("accounts.2.address", "BTC1abc"), r"accounts\[2\].address"),
    (_set("accounts.2.address", 12), r"accounts\[2\].address"),
    (_set("accounts.0.address", crypto.encode_address(USER.address)), "does not belong"),
    (_set("accounts.0.pubkey", "zz"), "not hex"),
    (_set("accounts.0.pubkey", "02" + "00" * 32), "not a compressed"),
    (_set("accounts.0.pubkey", V1.public_key.hex()[:-2]), "not a compressed"),
    (_set("accounts.2.stake", STAKE), "needs its pubkey"),
    (_set("accounts.2", "TIME0..."), r"accounts\[2\]: must be an object"),
    (_set("accounts.2.nickname", "bob"), "unknown field"),
    (_set("accounts.2", {"balance": 5}), "address or pubkey required"),
    (_set("accounts.2", {"pubkey": V1.public_key.hex()}), "duplicate address"),
])
def test_bad_genesis_refused(change: Any, message: str) -> None:
    obj = copy.deepcopy(_obj())
    change(obj)
    with pytest.raises(GenesisError, match=message):
        Genesis.from_obj(obj)


def test_total_supply_above_u64_refused() -> None:
    obj = _obj()
    obj["accounts"][0]["balance"] = 2**64 - 1       # plus its stake: more than a u64 can hold
    with pytest.raises(GenesisError):
        Genesis.from_obj(obj)


def test_total_supply_above_max_total_voting_power_refused() -> None:
    """consensus/proposer.check_total_power raises above MaxTotalVotingPower (int64 max / 8): a genesis
    whose supply (balances + stakes) plus one block reward exceeds it is refused, though below 2^64."""
    obj = _obj()
    rest = sum(a.get("balance", 0) + a.get("stake", 0) for a in obj["accounts"][1:]) + STAKE
    reward = obj["params"]["block_reward"]
    obj["accounts"][0]["balance"] = MAX_TOTAL_VOTING_POWER - rest - reward + 1
    with pytest.raises(GenesisError, match="total supply .* exceeds the maximum"):
        Genesis.from_obj(obj)
    obj["accounts"][0]["balance"] -= 1                                       # exactly at the cap: accepted
    g = Genesis.from_obj(obj)
    assert g.params.genesis_supply == MAX_TOTAL_VOTING_POWER - reward
    assert "genesis_supply" not in g.canonical.decode()                     # derived, never hashed


def test_genesis_supply_cannot_be_stated() -> None:
    obj = _obj()
    obj["params"]["genesis_supply"] = 1
    with pytest.raises(GenesisError, match="unknown key"):
        Genesis.from_obj(obj)


# The hash of the devnet genesis (placeholder key 1, genesis_time 2026-01-01) as computed by the code
# before max_unbonding_entries existed: `git show dae75ed:timecoin/ledger/{genesis,params}.py`
# (git archive dae75ed timecoin), Genesis.single_validator(...).hash.hex().
PRE_UNBONDING_CAP_DEVNET_HASH = "0d3673a7f436d4c6deaf8ca8c569d174a212c839c34db9347a8b3bb82ad12dbe"


def test_genesis_without_max_unbonding_entries_hashes_as_before() -> None:
    """A genesis file that does not state params.max_unbonding_entries (every file made before the
    param existed) keeps its hash, so existing datadirs still pass store.check_chain; the cap is 32."""
    key = PrivateKey((1).to_bytes(32, "big"))
    devnet = Genesis.single_validator(key, chain_id="timecoin-devnet", genesis_time=1_767_225_600_000)
    assert devnet.hash.hex() == PRE_UNBONDING_CAP_DEVNET_HASH
    assert devnet.params.max_unbonding_entries == MAX_UNBONDING_ENTRIES == 32
    # The canonical form of a file without the key is that content with every other param explicit.
    g = Genesis.from_obj(_obj())
    assert g.params.max_unbonding_entries == MAX_UNBONDING_ENTRIES
    expected = _obj()
    expected["params"] = {k: v for k, v in ChainParams("timecoin-test", **expected["params"]).to_json().items()
                          if k not in ("chain_id", "max_unbonding_entries")}
    for a in expected["accounts"]:
        pubkey = bytes.fromhex(a.get("pubkey", ""))
        address = crypto.decode_address(a["address"]) if "address" in a else crypto.address_of(pubkey)
        a.update(address=crypto.encode_address(address, "devnet"), balance=a.get("balance", 0),
                 stake=a.get("stake", 0), pubkey=pubkey.hex())
    expected["accounts"].sort(key=lambda a: crypto.decode_address(a["address"]))
    canonical = json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
    assert g.canonical == canonical and g.hash == hashlib.sha256(canonical).digest()
    assert Genesis.from_json(g.to_json()).hash == g.hash                   # the written file round-trips


def test_max_unbonding_entries_is_hashed_only_away_from_its_default() -> None:
    """Same meaning, same hash: stating the default (32) is the same genesis as leaving it out; another
    value is hashed and survives writing and reloading."""
    plain = Genesis.from_obj(_obj())
    obj = _obj()
    obj["params"]["max_unbonding_entries"] = MAX_UNBONDING_ENTRIES
    assert Genesis.from_obj(obj).hash == plain.hash
    obj["params"]["max_unbonding_entries"] = 5
    g = Genesis.from_obj(obj)
    assert g.params.max_unbonding_entries == 5
    assert b'"max_unbonding_entries":5' in g.canonical and g.hash != plain.hash
    assert Genesis.from_json(g.to_json()).hash == g.hash
    built = Genesis.for_validators([V1.public_key], "timecoin-test", max_unbonding_entries=7)
    assert b'"max_unbonding_entries":7' in built.canonical


def test_no_validator_refused() -> None:
    obj = _obj()
    obj["accounts"] = [obj["accounts"][2]]
    with pytest.raises(GenesisError, match="no validators"):
        Genesis.from_obj(obj)
    # Raising min_stake above every stake also leaves no validator.
    obj = _obj()
    obj["params"]["min_stake"] = STAKE + 1
    with pytest.raises(GenesisError, match="min_stake"):
        Genesis.from_obj(obj)


def test_min_stake_below_1000_time_only_on_a_declared_test_chain() -> None:
    obj = _obj()
    obj["params"]["min_stake"] = 5 * UNITS_PER_TIME
    obj["accounts"][0]["stake"] = 5 * UNITS_PER_TIME
    with pytest.raises(GenesisError, match=r"params.min_stake: .*1,000 TIME.*test_chain"):
        Genesis.from_obj(obj)
    obj["test_chain"] = True
    g = Genesis.from_obj(obj)
    assert g.test_chain and g.params.min_stake == 5 * UNITS_PER_TIME
    assert g.validators().power_of(V1.address) == 5 * UNITS_PER_TIME
    again = Genesis.from_json(g.to_json())                  # the flag survives a round trip and is hashed
    assert again.test_chain and again.hash == g.hash
    assert b'"test_chain":true' in g.canonical
    # Exactly 1,000 TIME needs no flag, and an ordinary genesis has no test_chain key at all.
    plain = _obj()
    plain["params"]["min_stake"] = 1_000 * UNITS_PER_TIME
    assert b"test_chain" not in Genesis.from_obj(plain).canonical
    flagged = copy.deepcopy(plain)
    flagged["test_chain"] = True
    assert Genesis.from_obj(flagged).hash != Genesis.from_obj(plain).hash
    explicit_false = copy.deepcopy(plain)
    explicit_false["test_chain"] = False
    assert Genesis.from_obj(explicit_false).hash == Genesis.from_obj(plain).hash


def test_for_validators_can_build_a_test_chain() -> None:
    g = Genesis.for_validators([V1.public_key], "timecoin-t", stake=10, genesis_time=0, test_chain=True, min_stake=10)
    assert g.test_chain and g.validators().total_power == 10
    with pytest.raises(GenesisError, match="min_stake"):
        Genesis.for_validators([V1.public_key], "timecoin-t", stake=10, genesis_time=0, min_stake=10)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '"genesis"', b"\xff\xfe{}"])
def test_not_a_genesis_object(text: str | bytes) -> None:
    with pytest.raises(GenesisError):
        Genesis.from_json(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(str(tmp_path / "absent.json"))


def test_etc_devnet_genesis_is_what_the_node_generates_for_the_placeholder_key() -> None:
    """etc/devnet-genesis.json: the devnet genesis node.prepare_datadir writes on first start
    (Genesis.single_validator), for the placeholder key 1 (public: its pubkey is the curve's generator)
    and a fixed genesis_time. Regenerate with docs/ledger.md's command if the format changes."""
    path = Path(__file__).resolve().parents[2] / "etc" / "devnet-genesis.json"
    key = PrivateKey((1).to_bytes(32, "big"))
    expected = Genesis.single_validator(key, chain_id="timecoin-devnet", genesis_time=1_767_225_600_000)
    assert path.read_text() == expected.to_json()
    loaded = Genesis.load(str(path))
    assert loaded.hash == expected.hash and not loaded.test_chain
    assert loaded.validators().by_address[key.address].pubkey.hex() == (
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
