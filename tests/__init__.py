"""barterbackup's test suite (Twisted trial).

Importing barterbackup first switches gRPC's fork support off before any
test module imports grpc: a trial worker that ran gRPC tests later forks
tor-gencert and tor for the private Tor network.
"""

import barterbackup  # noqa: F401
