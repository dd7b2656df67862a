"""The local CLI API: clirpc over gRPC on a Unix socket."""
