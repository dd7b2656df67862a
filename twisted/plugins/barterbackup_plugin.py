"""twistd dropin: ``twistd barterbackup`` (the code is in barterbackup.tap)."""

from twisted.application.service import ServiceMaker

barterbackup = ServiceMaker(
    "barterbackup",
    "barterbackup.tap",
    "A barterbackup node: mutual backup over Tor onion services.",
    "barterbackup",
)
