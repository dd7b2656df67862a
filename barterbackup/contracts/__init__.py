"""Storage contracts: terms, acceptance policy, one machine per contract,
spot checks, peer scores and replacement selection.

Everything here is pure or works through injected collaborators and a
clock, so the node wires it to the network. docs/contracts.md explains the
model and the parameters.

- ``terms``: contract terms, both signatures, the contract id.
- ``policy``: accept a proposal, refuse it with a reason, or ask the user.
- ``machine``: the contract machine (``new_contract``, ``restore_contract``),
  with ``states`` (per-state data and records), ``collaborators`` (the
  protocols it works through) and ``alarm``.
- ``digestcheck``, ``samplecheck``: spot checks with and without a local
  copy; ``heldcontent`` (what they read), ``prf``, ``confidence``
  (the verdict in words), ``wire`` (their cost on the wire).
- ``scores``: audit and uptime scores; ``selection``: replacement peers.

The node's wiring of that core, the contract book:

- ``book``: every contract, its machine and its work; negotiation, ends,
  views; ``entries`` (a contract as the book holds it), ``errors``,
  ``settings`` (local timings, ``--contract-timings``).
- ``files``: one sealed file per contract.
- The collaborators: ``pushing`` (SyncPusher on sync.push), ``checking``
  (CheckScheduler: checks on the wire), ``notices`` (PeerNotifier:
  EndContract), ``keeping`` (PeerDataKeeper: the replica store's grants),
  ``scorekeeping`` (AuditScores on the peer table).
- ``answering`` (the replica's side of a check), ``readers`` (content read
  through the section tree), ``replication`` (min_replicas, make before
  break).
"""
