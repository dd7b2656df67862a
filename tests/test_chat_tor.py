"""Encrypted chat and a file offer between two nodes over real onion services.

Two in-process nodes, each launching its own tor joined to the shared
private network (tests/test_transport_tor_network.py's SHARED), reach each
other by onion address only, agree on a chat key, chat encrypted both
ways and move a file with EncryptedDownload through Tor.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from barterbackup.chat.updates import (
    DELIVERED,
    DONE,
    FAILED,
    MessageIn,
    MessageStatus,
    OfferIn,
    SessionOpened,
    TransferProgress,
)
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from tests.test_transport_tor_network import SHARED
from tests.util import PASSWORDS, Waiter, short_tempdir, start_node


class ChatOverTorTests(TestCase):
    # The shared network (~15 s, once), two tors (~10 s), the chat.
    timeout = 300

    async def test_encrypted_chat_and_a_file_over_onions(self) -> None:
        network = await SHARED.get()
        tmp = short_tempdir(self)
        options = tuple((k, v) for k, v in network.client_torrc_options())
        nodes: list[Node] = []
        for index in range(2):
            node = start_node(
                reactor,
                NodeConfig(
                    node_dir=tmp / f"n{index}", transport="tor", extra_torrc=options
                ),
            )
            self.addCleanup(node.stopService)
            await node.unlock(PASSWORDS[index], create_if_missing=True)
            nodes.append(node)
        for node in nodes:
            await node.session.network.ready()
        a, b = nodes
        a_address, b_address = (n.session.keys.onion_address for n in nodes)
        made = await a.set_chat_key(b_address, generate=True)
        await b.set_chat_key(a_address, key_text=made.key_text)

        # Alice attaches first: her node dials Bob's onion by itself.
        alice, bob = Waiter(120), Waiter(120)
        alice_chat = await a.open_chat(b_address, alice)
        opened = await alice.next(lambda u: isinstance(u, SessionOpened))
        self.assertTrue(opened.encrypted)
        self.assertEqual(opened.fingerprint, made.fingerprint)
        bob_chat = await b.open_chat(a_address, bob)
        await bob.next(lambda u: isinstance(u, SessionOpened))

        alice_chat.send_message("hello over tor", 1)
        got = await bob.next(lambda u: isinstance(u, MessageIn))
        self.assertEqual((got.text, got.encrypted), ("hello over tor", True))
        await alice.next(
            lambda u: (
                isinstance(u, MessageStatus)
                and u.action_id == 1
                and u.state == DELIVERED
            )
        )
        bob_chat.send_message("and back", 2)
        back = await alice.next(lambda u: isinstance(u, MessageIn))
        self.assertEqual(back.text, "and back")

        data = os.urandom(3 * 1024 * 1024 + 17)
        source = tmp / "photos.zip"
        source.write_bytes(data)
        alice_chat.offer_file(str(source), 3)
        offered = await bob.next(lambda u: isinstance(u, OfferIn))
        self.assertEqual(offered.offer.sha256, hashlib.sha256(data).hexdigest())
        inbox = tmp / "inbox"
        inbox.mkdir()
        bob_chat.accept_file(offered.offer.offer_id, str(inbox), 4)
        done = await bob.next(
            lambda u: isinstance(u, TransferProgress) and u.phase in (DONE, FAILED)
        )
        self.assertEqual(done.phase, DONE, done.message)
        self.assertEqual((inbox / "photos.zip").read_bytes(), data)

        alice_chat.stop()
        bob_chat.stop()
        for node in nodes:
            await node.stopService()
        exits = [str(f.value) for f in self.flushLoggedErrors(RuntimeError)]
        self.assertEqual(exits, ["Tor exited with error-code 0"] * len(exits))
