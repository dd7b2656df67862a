#!/bin/sh
# Install the Debian packages barterbackup needs, only when missing.
# tor + tor-gencert: the node's Tor and the private test network.
# rsync, restic: the baselines `make bench` compares against (with the
#   argument "bench"; a benchmark whose baseline is missing fails).
# systemd: systemd-analyze verifies contrib/systemd/ in the tests.
# strace: the anonymity leak test traces a daemon's sockets.
set -e
need=""
command -v tor >/dev/null 2>&1 || need="$need tor"
command -v tor-gencert >/dev/null 2>&1 || need="$need tor"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
command -v strace >/dev/null 2>&1 || need="$need strace"
"${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null || need="$need python3-venv"
if [ "${1:-}" = bench ]; then
    command -v rsync >/dev/null 2>&1 || need="$need rsync"
    command -v restic >/dev/null 2>&1 || need="$need restic"
fi
if [ -n "$need" ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    echo "installing Debian packages:$need"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
fi
