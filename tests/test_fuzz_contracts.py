"""Fuzzing the contract terms a peer hands us: proposals and accepted
terms (``contracts.terms``), real ones mutated, re-signed forgeries with
any field of the descriptor, and random bytes. See docs/wire-protocol.md,
"Fuzzing".
"""

from __future__ import annotations

from typing import Any

import nacl.signing
from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import terms as contract_terms
from barterbackup.contracts.terms import (
    ACCEPTOR_LABEL,
    MAX_SIGNED_TERMS_BYTES,
    PROPOSER_LABEL,
    InvalidTerms,
    new_terms,
    propose,
    verify_proposal,
    verify_signed_terms,
)
from tests.fuzzing import fuzz_target, messages, mutated

PROPOSER = nacl.signing.SigningKey(bytes([3]) * 32)
ACCEPTOR = nacl.signing.SigningKey(bytes([4]) * 32)
PROPOSER_KEY = bytes(PROPOSER.verify_key)
ACCEPTOR_KEY = bytes(ACCEPTOR.verify_key)


def _real(sizes: tuple[int, int], accepted: bool) -> bytes:
    terms = new_terms(
        proposer_pubkey=PROPOSER_KEY,
        acceptor_pubkey=ACCEPTOR_KEY,
        acceptor_keeps_bytes=sizes[0],
        proposer_keeps_bytes=sizes[1],
        now=1_800_000_000,
        random_bytes=lambda n: bytes(n),
    )
    signed = propose(terms, PROPOSER)
    if accepted:
        signed = contract_terms.accept(signed, ACCEPTOR)
    return signed.encode()


def _forged(terms: Any, accepted: bool) -> bytes:
    """Any ContractTerms message, signed right by both keys it may name."""
    terms_bytes = terms.SerializeToString(deterministic=True)
    return storedpb_pb2.SignedContractTerms(
        terms=terms_bytes,
        proposer_signature=PROPOSER.sign(PROPOSER_LABEL + terms_bytes).signature,
        acceptor_signature=(
            ACCEPTOR.sign(ACCEPTOR_LABEL + terms_bytes).signature if accepted else b""
        ),
    ).SerializeToString(deterministic=True)


sizes = st.tuples(
    st.sampled_from([1 << 20, 1 << 30, 1 << 40]), st.sampled_from([1 << 20, 1 << 30])
)
real = st.builds(_real, sizes, st.booleans())
forged = st.builds(
    _forged,
    messages(
        storedpb_pb2.ContractTerms.DESCRIPTOR,
        overrides={
            "proposer_pubkey": st.sampled_from([PROPOSER_KEY, ACCEPTOR_KEY, b""]),
            "acceptor_pubkey": st.sampled_from([ACCEPTOR_KEY, PROPOSER_KEY, bytes(32)]),
        },
    ),
    st.booleans(),
)
blobs = st.one_of(real, real, real.flatmap(mutated), forged, st.binary(max_size=300))


class ContractTermsFuzz(SynchronousTestCase):
    @fuzz_target(
        "contracts.terms",
        blob=blobs,
        expect=st.sampled_from([None, (PROPOSER_KEY, ACCEPTOR_KEY)]),
    )
    # Real terms verify, proposed and accepted, with and without the keys.
    @example(blob=_real((1 << 30, 1 << 20), False), expect=None)
    @example(blob=_real((1 << 30, 1 << 20), True), expect=(PROPOSER_KEY, ACCEPTOR_KEY))
    def test_terms_verify_exactly_or_are_refused(
        self, blob: bytes, expect: tuple[bytes, bytes] | None
    ) -> None:
        keys: dict[str, Any] = {}
        if expect is not None:
            keys = {"proposer": expect[0], "acceptor": expect[1]}
        verified = []
        for verify, accepted in ((verify_proposal, False), (verify_signed_terms, True)):
            try:
                signed = verify(blob, **keys)
            except InvalidTerms as error:
                self.assertTrue(str(error))
                continue
            verified.append(signed)
            # Only small, canonical, validated terms signed by the keys
            # they name, in the state the verifier promises.
            self.assertLessEqual(len(blob), MAX_SIGNED_TERMS_BYTES)
            self.assertEqual(signed.encode(), blob)
            self.assertEqual(signed.accepted, accepted)
            signed.terms.validate()
            nacl.signing.VerifyKey(signed.terms.proposer_pubkey).verify(
                PROPOSER_LABEL + signed.terms_bytes, signed.proposer_signature
            )
            if accepted:
                nacl.signing.VerifyKey(signed.terms.acceptor_pubkey).verify(
                    ACCEPTOR_LABEL + signed.terms_bytes, signed.acceptor_signature
                )
            if expect is not None:
                self.assertEqual(
                    (signed.terms.proposer_pubkey, signed.terms.acceptor_pubkey),
                    expect,
                )
        # A blob is a proposal or accepted terms, never both.
        self.assertLessEqual(len(verified), 1)
