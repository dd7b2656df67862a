"""Storage contracts: terms, acceptance policy, one machine per contract,
spot checks, peer scores and replacement selection.

Everything here is pure or works through injected collaborators and a
clock, so the node wires it to the network. docs/contracts.md explains the
model and the parameters.
"""
