"""barterbackup: mutual backup over Tor onion services."""

__version__ = "0.1.0"
