"""BFT consensus (SPEC §4): the pure Tendermint engine and the service that drives it."""
