"""The grants the replica store enforces, and reading the book's settings."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.contracts.keeping import StorageGrants
from barterbackup.contracts.settings import (
    BookSettings,
    InvalidSettings,
    settings_from_json,
)

PEER = b"p" * 32
OTHER = b"o" * 32


class GrantTests(SynchronousTestCase):
    def test_only_a_contract_grants_storage(self) -> None:
        grants = StorageGrants()
        self.assertEqual(grants(PEER), 0)
        grants.allow(PEER, b"c1", 5000)
        self.assertEqual((grants(PEER), grants(OTHER)), (5000, 0))

    def test_the_largest_allowance_in_force_counts(self) -> None:
        grants = StorageGrants()
        grants.allow(PEER, b"old", 5000)
        grants.allow(PEER, b"new", 9000)
        self.assertEqual(grants(PEER), 9000)
        grants.freeze(PEER, b"new")
        self.assertEqual(grants(PEER), 5000)

    def test_frozen_keeps_the_data_but_grants_nothing(self) -> None:
        grants = StorageGrants()
        grants.allow(PEER, b"c1", 5000)
        grants.freeze(PEER, b"c1")
        self.assertEqual(grants(PEER), 0)
        self.assertTrue(grants.keeps(PEER))
        grants.forget(PEER, b"c1")
        self.assertFalse(grants.keeps(PEER))
        self.assertEqual(grants.peers(), [])

    def test_allowances_are_positive(self) -> None:
        with self.assertRaises(ValueError):
            StorageGrants().allow(PEER, b"c1", 0)


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(settings_from_json({}), BookSettings())

    def test_shortened_timings(self) -> None:
        settings = settings_from_json(
            {
                "check_interval": 60,
                "answer_deadline": 20,
                "outage_limit": 90,
                "grace_after_outage": 120.5,
                "retry_peer_after": 30,
            }
        )
        self.assertEqual(settings.check_policy.interval_seconds, 60)
        self.assertEqual(settings.check_policy.answer_deadline_seconds, 20)
        self.assertEqual(settings.timings.outage_limit_seconds, 90.0)
        self.assertEqual(settings.timings.grace_after_outage_seconds, 120.5)
        self.assertEqual(settings.retry_peer_after_seconds, 30.0)

    def test_bad_settings_are_refused(self) -> None:
        for bad in (
            [],
            {"check_every": 60},
            {"outage_limit": "soon"},
            {"outage_limit": 0},
            {"outage_limit": -1},
            {"outage_limit": float("inf")},
            {"check_interval": 10},
            {"check_interval": 60, "answer_deadline": 60},
            {"max_checks_at_once": 0},
            {"probe_delay": True},
        ):
            with self.assertRaises(InvalidSettings, msg=repr(bad)):
                settings_from_json(bad)
