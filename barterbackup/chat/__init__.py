"""Chat between peers: the pure, transport-agnostic core (docs/chat.md).

- ``peer_key``: the per-peer key as people pass it on, and its fingerprint.
- ``aead``: session keys, key confirmation and sealed frames.
- ``session``: one side of a Chat or EncryptedChat session.
- ``offers``: files we offer and offers we received, with safe names.
- ``pieces``: EncryptedDownload requests and sealed pieces, both sides.
- ``receiving``: an offered file written to ``NAME.part``, resumable,
  verified, then renamed without overwriting.
- ``outbox``: messages waiting for a peer that is offline, sealed on disk.

Nothing here opens connections: callers inject ``send`` callables, a clock
and a random source.
"""
