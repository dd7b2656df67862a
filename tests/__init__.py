"""barterbackup's test suite (Twisted trial).

Importing barterbackup first switches gRPC's fork support off before any
test module imports grpc: a trial worker that ran gRPC tests later forks
tor-gencert and tor for the private Tor network.

Hypothesis runs without a deadline: the machines are shared and noisy, and
the tests assert behaviour and bounds, never times.
"""

from hypothesis import settings

import barterbackup  # noqa: F401

settings.register_profile("barterbackup", deadline=None)
settings.load_profile("barterbackup")
