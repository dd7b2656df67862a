"""The node's peers: the peer table (records.py), dialling and reconnecting
(pool.py), and the peer network service that owns the transport
(network.py)."""
