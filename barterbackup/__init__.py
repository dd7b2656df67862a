"""barterbackup: mutual backup over Tor onion services."""

import os

# Our processes fork tor and tor-gencert (txtorcon, the test network) while
# gRPC threads may be running. gRPC's fork handlers then write errors in the
# child before it execs, and the child dies (or txtorcon kills it for writing
# to stderr). We never use gRPC in a forked child, so its fork support is off
# in every process that imports barterbackup, before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
