"""``log_format``: the node's log as text (twistd's default, unchanged) or JSON lines for log shippers.

With ``log_format = json``, twistd's log observer is replaced by :func:`twisted.logger.jsonFileLogObserver`
writing one JSON object per line (no record separator), so each ``Logger`` event keeps its structured
fields (``height``, ``hash``, ``peer``...) and its ``log_format`` template. The file is the one twistd
would use: ``--logfile`` (rotated as twistd rotates it), stdout under ``-n`` without one, else
``twistd.log``. The choice is made in the plugin's option parsing (:func:`install_twistd_logger`), the
one moment before twistd starts logging: its ``--logger`` option, if given, still wins.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping
from typing import IO, Any

from twisted.logger import jsonFileLogObserver
from twisted.python import logfile


def json_observer(out: IO[Any]) -> Any:
    """An observer writing each event as one line of JSON to ``out``."""
    return jsonFileLogObserver(out, recordSeparator="")


def twistd_json_factory(logfile_name: str, nodaemon: bool) -> Callable[[], Any]:
    """A ``--logger`` factory for twistd: JSON lines to the file twistd would have used for text."""

    def factory() -> Any:
        if logfile_name == "-" or (nodaemon and not logfile_name):
            return json_observer(sys.stdout)
        return json_observer(logfile.LogFile.fromFullPath(logfile_name or "twistd.log"))

    return factory


_twistd_target: tuple[str, bool] = ("", True)    # (logfile, nodaemon) of this twistd run


def twistd_json_logger() -> Any:
    """twistd's ``--logger`` by name (twistd imports it): JSON lines where twistd would write its text."""
    return twistd_json_factory(*_twistd_target)()


def install_twistd_logger(twistd_options: MutableMapping[str, Any] | None, log_format: str) -> bool:
    """Make twistd log JSON lines when ``log_format`` is json (and no ``--logger`` was given). True if done.

    twistd resolves ``--logger`` by its dotted name after every option is parsed, so the name of
    :func:`twistd_json_logger` is set, with this run's logfile and daemon mode beside it.
    """
    global _twistd_target
    if log_format != "json" or twistd_options is None or twistd_options.get("logger"):
        return False
    _twistd_target = (str(twistd_options.get("logfile") or ""), bool(twistd_options.get("nodaemon")))
    twistd_options["logger"] = f"{__name__}.twistd_json_logger"
    return True
