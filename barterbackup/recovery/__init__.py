"""Bringing content back: restoring files to disk, checking and repairing the store."""
