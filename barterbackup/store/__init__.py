"""The node directory on disk: atomic writes, sealed records, quotas."""
