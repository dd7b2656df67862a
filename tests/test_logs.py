"""--log-level governs every barterbackup log message."""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from barterbackup import logs


class LogLevelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.seen.append)
        self.addCleanup(logs.set_log_level, "info")

    def messages(self) -> list[str]:
        return [e["log_format"] for e in self.seen if "log_format" in e]

    def test_debug_hidden_at_info_shown_at_debug(self) -> None:
        log = logs.get_logger("barterbackup.test")
        logs.set_log_level("info")
        log.debug("a debug line")
        log.info("an info line")
        self.assertEqual(self.messages(), ["an info line"])
        logs.set_log_level("debug")
        log.debug("another debug line")
        self.assertEqual(self.messages(), ["an info line", "another debug line"])

    def test_warn_hides_info(self) -> None:
        log = logs.get_logger("barterbackup.test")
        logs.set_log_level("warn")
        log.info("hidden")
        log.warn("shown")
        self.assertEqual(self.messages(), ["shown"])

    def test_unknown_level_refused(self) -> None:
        self.assertRaises(ValueError, logs.set_log_level, "loud")
