"""The machines' PeerNotifier: EndContract messages, delivered reliably.

A notice (we end the contract, we consider it broken, the peer may drop
our data) is written into the contract's ledger before anything is sent,
so it survives a restart, and is delivered with an ``EndContract`` call as
soon as the peer is connected (now, or when it next connects). A peer that
answers the call has the notice; one that says it does not know the
contract (it never had it, or ended it already) will never want it, and
the notice is dropped; one that cannot be reached keeps it waiting.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.contracts.collaborators import Contract
from barterbackup.contracts.entries import BookAccess
from barterbackup.contracts.pushing import PeerDialer
from barterbackup.contracts.states import bounded_reason
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.sync.interfaces import ReactorTime

log = get_logger("barterbackup.contracts")

# At most this many notices wait per contract (a contract ends once; a
# release may be repeated): older ones go first.
MAX_NOTICES = 8

_END_KIND = {
    storedpb_pb2.CONTRACT_NOTICE_KIND_ENDING: bbrpc_pb2.CONTRACT_END_KIND_ENDING,
    storedpb_pb2.CONTRACT_NOTICE_KIND_BROKEN: bbrpc_pb2.CONTRACT_END_KIND_BROKEN,
    storedpb_pb2.CONTRACT_NOTICE_KIND_RELEASED: bbrpc_pb2.CONTRACT_END_KIND_RELEASED,
}


class ContractNotices:
    """PeerNotifier for every contract of the book."""

    def __init__(
        self, book: BookAccess, clock: ReactorTime, dialer: PeerDialer
    ) -> None:
        self._book = book
        self._clock = clock
        self._dialer = dialer
        self._delivering: set[bytes] = set()
        self._stopped = False

    # ---- PeerNotifier --------------------------------------------------------

    def tell_ending(self, contract: Contract, reason: str, keep_until: float) -> None:
        self._queue(
            contract, storedpb_pb2.CONTRACT_NOTICE_KIND_ENDING, reason, keep_until
        )

    def tell_broken(self, contract: Contract, reason: str, keep_until: float) -> None:
        self._queue(
            contract, storedpb_pb2.CONTRACT_NOTICE_KIND_BROKEN, reason, keep_until
        )

    def tell_released(self, contract: Contract) -> None:
        self._queue(
            contract,
            storedpb_pb2.CONTRACT_NOTICE_KIND_RELEASED,
            "our content is safe elsewhere: you may drop it",
            0.0,
        )

    # ---- the book's use ------------------------------------------------------

    def peer_connected(self, peer: bytes) -> None:
        """Deliver what waits for ``peer``."""
        if peer not in self._delivering:
            self._clock.callLater(0, self._deliver, peer)

    def pending(self, contract_id: bytes) -> int:
        entry = self._book.entry(contract_id)
        return len(entry.ledger.notices) if entry is not None else 0

    def shutdown(self) -> None:
        self._stopped = True

    # ---- internals -----------------------------------------------------------

    def _queue(
        self,
        contract: Contract,
        kind: storedpb_pb2.ContractNoticeKind.ValueType,
        reason: str,
        keep_until: float,
    ) -> None:
        entry = self._book.entry(contract.contract_id)
        if entry is None:
            return
        notices = entry.ledger.notices
        notices.add(kind=kind, reason=bounded_reason(reason), keep_until=keep_until)
        while len(notices) > MAX_NOTICES:
            del notices[0]
        self._book.save(contract.contract_id)
        peer = contract.peer_pubkey
        if peer not in self._delivering:
            # After the transition that asked for it, never inside it.
            self._clock.callLater(0, self._deliver, peer, True)

    def _deliver(self, peer: bytes, dial: bool = False) -> None:
        if self._stopped or peer in self._delivering:
            return
        if not any(e.ledger.notices for e in self._book.entries_of(peer)):
            return
        self._delivering.add(peer)
        d = Deferred.fromCoroutine(self._deliver_all(peer, dial))
        d.addErrback(lambda failure: log.failure("delivering notices failed", failure))
        d.addBoth(lambda _: self._delivering.discard(peer))

    async def _deliver_all(self, peer: bytes, dial: bool) -> None:
        conn: Any = self._dialer.connection(peer)
        if conn is None:
            if not dial:
                return
            try:
                conn = await self._dialer.dial(peer)
            except Exception:
                return  # Delivered when the peer next connects.
        for entry in self._book.entries_of(peer):
            while entry.ledger.notices and not self._stopped:
                notice = storedpb_pb2.ContractNotice()
                notice.CopyFrom(entry.ledger.notices[0])
                request = bbrpc_pb2.EndContractRequest(
                    contract_id=entry.contract_id,
                    kind=_END_KIND[notice.kind],
                    reason=notice.reason,
                    keep_until=int(notice.keep_until),
                )
                try:
                    await conn.call("end_contract_request", request)
                except PeerCallError as error:
                    if error.code not in (
                        bbrpc_pb2.ERROR_CODE_NOT_FOUND,
                        bbrpc_pb2.ERROR_CODE_BAD_REQUEST,
                    ):
                        return  # Busy or failing: try again next time.
                    log.info(
                        "{peer} does not take our notice: {why}",
                        peer=onion_address_from_pubkey(peer),
                        why=error.message,
                    )
                except Exception:
                    return  # The connection went: delivered next time.
                if entry.ledger.notices and entry.ledger.notices[0] == notice:
                    del entry.ledger.notices[0]
                    self._book.save(entry.contract_id)
