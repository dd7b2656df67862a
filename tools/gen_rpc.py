"""Regenerate the protobuf and gRPC modules from proto/ (``make rpc``).

The output depends only on the .proto files and on the pinned grpcio-tools
(which bundles protoc) and mypy-protobuf in requirements-dev.txt, so running
it twice, or on another machine, gives byte-identical files.

``--check`` regenerates into a temporary directory and exits non-zero when
the committed files differ, which is how CI catches stale generated code.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = ROOT / "barterbackup" / "_proto"
PACKAGE = "barterbackup._proto"
# Only clirpc is served with gRPC; bbrpc travels in our own frames.
GRPC_PROTOS = {"clirpc.proto"}
INIT_TEXT = '"""Generated protobuf modules; regenerate with ``make rpc``."""\n'


def _protoc(args: list[str]) -> None:
    env = dict(os.environ)
    # protoc finds protoc-gen-mypy next to the interpreter of the venv.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", *args],
        check=True,
        env=env,
        cwd=ROOT,
    )


def _absolute_imports(path: Path) -> None:
    # protoc writes "import clirpc_pb2"; inside a package it must be absolute.
    text = path.read_text()
    text = re.sub(
        r"^import (\w+_pb2)( as \w+)?$",
        lambda m: f"from {PACKAGE} import {m.group(1)}{m.group(2) or ''}",
        text,
        flags=re.MULTILINE,
    )
    path.write_text(text)


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    _protoc([f"--python_out={out}", f"--mypy_out={out}", *protos])
    grpc = sorted(GRPC_PROTOS)
    _protoc([f"--grpc_python_out={out}", f"--mypy_grpc_out={out}", *grpc])
    for path in out.glob("*_pb2_grpc.py*"):
        _absolute_imports(path)
    (out / "__init__.py").write_text(INIT_TEXT)
    (out / "py.typed").write_text("")


def _differences(a: Path, b: Path) -> list[str]:
    names = {p.name for p in a.iterdir() if p.is_file()}
    names |= {p.name for p in b.iterdir() if p.is_file()}
    return sorted(
        n
        for n in names
        if not ((a / n).exists() and (b / n).exists())
        or not filecmp.cmp(a / n, b / n, shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args()
    if not opts.check:
        if PACKAGE_DIR.exists():
            shutil.rmtree(PACKAGE_DIR)
        generate(PACKAGE_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_proto"
        generate(fresh)
        differing = _differences(fresh, PACKAGE_DIR)
    if differing:
        print("generated code is stale; run `make rpc` and commit:")
        for name in differing:
            print(f"  barterbackup/_proto/{name}")
        return 1
    print("generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
