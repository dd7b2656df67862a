"""Fixed main passwords for tests (strong enough to pass the 80-bit floor)."""

STRONG = "quartz-lantern-ember-violet-harbor-cobalt-meadow"
OTHER_STRONG = "saffron-glacier-tundra-orchid-beacon-falcon-pebble"
WEAK = "password123"
