"""git itself as the reference for exclude patterns, in tests.

``GitReference`` runs the real ``git`` on a tree with the patterns given as
``core.excludesFile`` (the semantics of a top-level ``.gitignore``), with a
separate git directory and no user or system configuration, and answers
which paths git ignores (``check-ignore``) and which files it would list
(``ls-files --others --exclude-standard``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path


def git_available() -> bool:
    return shutil.which("git") is not None


class GitReference:
    """Ask git about ``tree`` under ``patterns``; ``scratch`` holds its files."""

    def __init__(self, tree: Path, scratch: Path) -> None:
        self.tree = tree
        self.excludes_file = scratch / "excludes"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(scratch),
            "GIT_DIR": str(scratch / "git"),
            "GIT_WORK_TREE": str(tree),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
        }
        self._git("init", "-q")

    def _git(self, *args: str, stdin: bytes = b"", ok: Iterable[int] = (0,)) -> bytes:
        command = ["git", "-c", f"core.excludesFile={self.excludes_file}", *args]
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            env=self.env,
            cwd=self.tree,
            check=False,
        )
        if result.returncode not in tuple(ok):
            raise RuntimeError(f"{command} failed: {result.stderr.decode()}")
        return result.stdout

    def set_patterns(self, patterns: Iterable[str]) -> None:
        self.excludes_file.write_text("".join(f"{p}\n" for p in patterns))

    def ignored(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` (relative, existing) git ignores."""
        stdin = b"".join(p.encode() + b"\0" for p in paths)
        if not stdin:
            return set()
        # Exit status 1 means "none of them is ignored".
        output = self._git(
            "check-ignore", "--no-index", "-z", "--stdin", stdin=stdin, ok=(0, 1)
        )
        return {p.decode() for p in output.split(b"\0") if p}

    def listed_files(self) -> list[str]:
        """The files git would add: everything not ignored."""
        output = self._git("ls-files", "-z", "--others", "--exclude-standard")
        return sorted(p.decode() for p in output.split(b"\0") if p)
