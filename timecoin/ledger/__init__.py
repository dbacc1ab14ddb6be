"""The ledger: transactions, blocks, the account state and its transition function (SPEC §2–§3)."""
