"""bbrpc, the peer protocol: frames, the mutual handshake, multiplexed calls
with flow control. The wire library only: it knows nothing of content,
stores or the node, and serves calls through a handler the caller provides.
"""
