"""Small helpers shared by the tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase


def short_tempdir(case: SynchronousTestCase) -> Path:
    """A fresh directory with a short path, removed after the test.

    Unix socket paths are limited to 107 bytes, which trial's deep
    _trial_temp paths exceed.
    """
    path = Path(tempfile.mkdtemp(prefix="bb-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path
