"""The ``barterbackup`` command: one module per command group."""
