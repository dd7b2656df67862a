"""barterbackup's own log messages, filtered by the daemon's --log-level.

Every module takes its Logger from here; the filter applies to our messages
only (Twisted's own keep Twisted's defaults).
"""

from __future__ import annotations

from typing import cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = cast(
    ILogObserver,
    FilteringLogObserver(
        cast(ILogObserver, globalLogPublisher), [cast(ILogFilterPredicate, _predicate)]
    ),
)


def set_log_level(name: str) -> None:
    if name not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; use one of {sorted(LEVELS)}")
    _predicate.defaultLogLevel = LEVELS[name]
    # The predicate keeps the level of the root namespace (and a cache per
    # namespace) from when it was made: reset both to the new default.
    _predicate.clearLogLevels()


def get_logger(namespace: str) -> Logger:
    return Logger(namespace=namespace, observer=_observer)
