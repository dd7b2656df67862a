"""Bringing content back: restoring files to disk, checking and repairing
the store (docs/restore-and-check.md), and recovery after a total loss,
the owner's content and node state back from its replicas with nothing
but the main password (docs/recovery.md).

* ``offers``: what each replica says it holds, and the choice of revision;
* ``nodestate``: the node's own state sealed inside its content;
* ``contact``: replicas keep contacting the owners whose data they hold;
* ``recoverer``: the owner's side, from waiting for replicas to installing.
"""
