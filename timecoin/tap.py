"""``twistd timecoin``: command-line options and ``makeService`` for the twistd plugin.

The options are generated from the config key table (:data:`timecoin.config.KEYS`): key ``rpc_port``
is flag ``--rpc-port``. A bad value prints one line naming the key and exits with code 2 -- raised
from ``postOptions`` as SystemExit, because twistd would answer a ``usage.UsageError`` with the whole
usage text and exit code 1.
"""
from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from timecoin import __version__
from timecoin.config import KEYS, NodeConfig, build_config
from timecoin.errors import ConfigError
from timecoin.logs import install_twistd_logger


class Options(usage.Options):
    synopsis = "[--config FILE] [--datadir DIR] [--network devnet|testnet|mainnet] [--KEY VALUE ...]"
    longdesc = ("Runs a Timecoin node. With no options: a single-validator devnet in ./timecoin-data "
                "producing a block every second. Every key of etc/timecoin.conf.example is a flag here.")
    optParameters = [["config", "c", None, "Config file (INI, section [timecoin])."]] + [
        [key.flag, None, None, key.help] for key in KEYS]

    def opt_version(self) -> None:
        """Print the Timecoin version and exit."""
        print(f"timecoin {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:  # noqa: N802 - Twisted API
        flags = {key.name: self[key.flag] for key in KEYS if self[key.flag] is not None}
        try:
            self.node_config = build_config(flags, self["config"])
        except ConfigError as exc:
            sys.stderr.write(f"twistd timecoin: error: {exc}\n")
            raise SystemExit(2) from None
        install_twistd_logger(getattr(self, "parent", None), self.node_config.log_format)


def makeService(options: Options | dict[str, Any]) -> IService:  # noqa: N802 - twistd's name
    from timecoin.node import makeService as make_node

    config: NodeConfig = options.node_config if isinstance(options, Options) else build_config(options)
    return make_node(config)
