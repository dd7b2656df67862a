"""Where the node's bytes go: Tor onion services (default) or plain TCP.

The node's peer-protocol server always listens on 127.0.0.1; a transport
decides how peers reach that port and how we reach peers. See
:class:`barterbackup.transport.base.Transport` for the interface,
:mod:`barterbackup.transport.tcp` (tests, LANs) and
:mod:`barterbackup.transport.tor` (production; the only module that imports
txtorcon).
"""

from barterbackup.transport.base import (
    DestinationRefused,
    Transport,
    TransportError,
)

__all__ = ["DestinationRefused", "Transport", "TransportError"]
