"""The data plane: revisions from owners to replicas and back.

push.py is the owner side (one push at a time per peer, progress, sections
pinned against garbage collection while in flight); replica.py and fetch.py
are the replica side (check the revision, fetch the sections it lacks);
serve.py answers Download for both. Everything here reaches peers only
through the small connection interface in interfaces.py.
"""
