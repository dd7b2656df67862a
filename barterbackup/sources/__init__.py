"""Scheduled backups of source folders: configuration, excludes, the walk."""
