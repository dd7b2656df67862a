"""The node: the API facade (facade.py), the unlocked session that builds and
tears down the node's object graph (session.py), the bbrpc handler for the
node (handler.py) and the records the API returns (results.py)."""
