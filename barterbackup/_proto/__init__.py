"""Generated protobuf modules; regenerate with ``make rpc``."""
