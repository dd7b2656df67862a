"""The fuzz campaign's shared parts: run lengths, counting, byte mutations,
and protobuf messages generated from their descriptors.

Every decoder of bytes from outside the process has a fuzz target in
``tests/test_fuzz_*.py``, declared with ``fuzz_target``. How long each runs
is chosen here, in one place, by environment variables:

``BARTERBACKUP_FUZZ_PROFILE``
    ``ci`` (the default, what ``make test`` runs): a fixed, derandomized set
    of examples per target (``CI_EXAMPLES`` divided by the target's cost),
    so the suite is reproducible and the whole campaign stays well under a
    minute on two cores. ``long`` (what ``make fuzz`` runs): fresh random
    examples, in chunks of ``LONG_CHUNK`` (divided by the target's cost)
    each with its own seed.
``BARTERBACKUP_FUZZ_EXAMPLES``
    Examples per target (``long``: default 20000; ``ci``: replaces
    ``CI_EXAMPLES``).
``BARTERBACKUP_FUZZ_SECONDS``
    ``long`` only: a target starts no new chunk after this many seconds.
``BARTERBACKUP_FUZZ_SEED``
    ``long`` only: the first chunk's seed (default: random, reported).
``BARTERBACKUP_FUZZ_REPORT``
    A directory; each target writes ``<target>.json`` there with its
    counts (``tools/fuzz.py`` prints the table).

No deadline in either profile (a shared machine is noisy; the targets
assert bounds, never times), and no example database (CI must not depend
on what an earlier run found; a long run's failures print their seed).

``tree`` below is the one import of the section tree.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

import barterbackup.tree as tree  # the one import of the tree

__all__ = [
    "CI_EXAMPLES",
    "HOSTILE_TEXT",
    "INTERESTING_INTEGERS",
    "MIN_CI_EXAMPLES",
    "FuzzPlan",
    "blobs",
    "fuzz_target",
    "messages",
    "mutated",
    "serialized",
    "splits",
    "texts",
    "tree",
    "without_fsync",
]

CI_EXAMPLES = 80
LONG_EXAMPLES = 20_000
LONG_CHUNK = 1_000
# Even the most expensive target runs this many examples in CI.
MIN_CI_EXAMPLES = 12

_SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
]


@dataclass(frozen=True)
class FuzzPlan:
    """How long one target runs, from the environment."""

    profile: str
    examples: int
    seconds: float
    first_seed: int
    cost: int = 1

    @classmethod
    def from_environment(cls, cost: int) -> FuzzPlan:
        profile = os.environ.get("BARTERBACKUP_FUZZ_PROFILE", "ci")
        if profile not in ("ci", "long"):
            raise ValueError(f"BARTERBACKUP_FUZZ_PROFILE {profile!r}: ci or long")
        given_examples = os.environ.get("BARTERBACKUP_FUZZ_EXAMPLES")
        if profile == "ci":
            base = int(given_examples) if given_examples else CI_EXAMPLES
            examples = max(MIN_CI_EXAMPLES, base // max(1, cost))
            return cls(profile, examples, 0.0, 0, cost)
        examples = int(given_examples) if given_examples else LONG_EXAMPLES
        seconds = float(os.environ.get("BARTERBACKUP_FUZZ_SECONDS", "0"))
        first = os.environ.get("BARTERBACKUP_FUZZ_SEED")
        first_seed = int(first) if first else random.SystemRandom().randrange(2**32)
        return cls(profile, examples, seconds, first_seed, cost)

    def chunks(self) -> Iterator[tuple[settings, int | None]]:
        """(settings, seed) per Hypothesis run; the seed is None in CI."""
        common: dict[str, Any] = dict(
            deadline=None,
            database=None,
            suppress_health_check=_SUPPRESSED,
        )
        if self.profile == "ci":
            yield settings(max_examples=self.examples, derandomize=True, **common), None
            return
        # Expensive targets run smaller chunks, so the time cap bites sooner.
        chunk = max(100, LONG_CHUNK // max(1, self.cost))
        remaining, index = self.examples, 0
        while remaining > 0:
            size = min(chunk, remaining)
            yield (
                # derandomize stated: under CI=true Hypothesis's default
                # profile derandomizes, and a long run wants fresh seeds.
                settings(
                    max_examples=size, derandomize=False, print_blob=True, **common
                ),
                self.first_seed + index,
            )
            remaining -= size
            index += 1


@dataclass
class _Counts:
    examples: int = 0
    failures: int = 0
    seeds: list[int] | None = None


def fuzz_target(
    name: str, /, *, cost: int = 1, **strategies: SearchStrategy[Any]
) -> Callable[[Callable[..., None]], Callable[[Any], None]]:
    """Make a trial test method of a fuzz body run under the campaign plan.

    ``name`` is the target in reports; ``cost`` is how much more one
    example costs than a pure decoder's (CI runs CI_EXAMPLES // cost);
    ``strategies`` are ``given``'s keyword strategies. Pinned inputs are
    ``@example(...)`` decorators below this one, as with ``given``.
    """

    def decorate(body: Callable[..., None]) -> Callable[[Any], None]:
        counts = _Counts()

        # wraps() copies the body's __dict__, so its @example pins too.
        @functools.wraps(body)
        def counted(*args: Any, **kwargs: Any) -> None:
            counts.examples += 1
            body(*args, **kwargs)

        def test(case: Any) -> None:
            plan = FuzzPlan.from_environment(cost)
            counts.examples, counts.failures, counts.seeds = 0, 0, []
            started = time.monotonic()
            cpu_started = time.process_time()
            try:
                for chunk_settings, chunk_seed in plan.chunks():
                    elapsed = time.monotonic() - started
                    if plan.seconds and elapsed > plan.seconds:
                        break
                    run = chunk_settings(given(**strategies)(counted))
                    if chunk_seed is not None:
                        counts.seeds.append(chunk_seed)
                        run = seed(chunk_seed)(run)
                    run(case)
            except BaseException as error:
                if _is_skip(error):
                    raise
                counts.failures = _distinct_failures(error)
                if isinstance(error, BaseExceptionGroup):
                    # trial shows only a group's own message: show them all.
                    text = "".join(traceback.format_exception(error))
                    raise AssertionError(text) from error
                raise
            finally:
                elapsed = time.monotonic() - started
                cpu = time.process_time() - cpu_started
                _report(name, plan, counts, elapsed, cpu)

        test.__name__ = body.__name__
        test.__qualname__ = body.__qualname__
        test.__doc__ = body.__doc__
        test.__module__ = body.__module__
        return test

    return decorate


def without_fsync(case: Any) -> None:
    """Make fsync and fdatasync no-ops for the rest of trial test ``case``.

    The fuzz targets test what is read back and answered, not durability
    (the crash-point tests do): without fsync an example costs CPU, not
    disk waits shared with every other test running on the machine.
    """

    def no_sync(fd: int) -> None:
        os.fstat(fd)  # still refuses a closed descriptor, as fsync would

    case.patch(os, "fsync", no_sync)
    case.patch(os, "fdatasync", no_sync)


def _is_skip(error: BaseException) -> bool:
    return type(error).__name__ == "SkipTest"


def _distinct_failures(error: BaseException) -> int:
    # Hypothesis reports several distinct bugs as one exception group.
    if isinstance(error, BaseExceptionGroup):
        return len(error.exceptions)
    return 1


def _report(
    name: str, plan: FuzzPlan, counts: _Counts, seconds: float, cpu: float
) -> None:
    directory = os.environ.get("BARTERBACKUP_FUZZ_REPORT")
    if not directory:
        return
    record = {
        "target": name,
        "profile": plan.profile,
        "examples": counts.examples,
        "failures": counts.failures,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "seeds": counts.seeds,
    }
    path = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".json")
    path.write_text(json.dumps(record, sort_keys=True) + "\n")


# -- bytes ------------------------------------------------------------------

# Lengths and counts that sit on the edges decoders get wrong.
INTERESTING_INTEGERS = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    2**32,
    2**40,
    2**63 - 1,
    2**63,
    2**64 - 1,
)


def _mutation(data: bytearray, draw: Callable[[SearchStrategy[Any]], Any]) -> None:
    kind = draw(
        st.sampled_from(
            (
                "flip",
                "set",
                "truncate",
                "extend",
                "insert",
                "delete",
                "duplicate",
                "integer",
            )
        )
    )
    size = len(data)
    position = draw(st.integers(0, size)) if size else 0
    if kind == "flip" and size:
        data[min(position, size - 1)] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set" and size:
        data[min(position, size - 1)] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del data[position:]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "insert":
        data[position:position] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        del data[position : position + draw(st.integers(1, 16))]
    elif kind == "duplicate":
        data[position:position] = data[position : position + draw(st.integers(1, 64))]
    elif kind == "integer":
        width = draw(st.sampled_from((1, 2, 4, 8)))
        value = draw(st.sampled_from(INTERESTING_INTEGERS)) % (1 << (8 * width))
        order = draw(st.sampled_from(("big", "little")))
        data[position : position + width] = value.to_bytes(width, order)


@st.composite
def _mutated(
    draw: Callable[[SearchStrategy[Any]], Any],
    source: SearchStrategy[bytes],
    max_mutations: int,
) -> bytes:
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, max_mutations))):
        _mutation(data, draw)
    return bytes(data)


def mutated(
    source: bytes | SearchStrategy[bytes], max_mutations: int = 4
) -> SearchStrategy[bytes]:
    """``source`` with 1..max_mutations of: a bit flipped, a byte set, cut
    short, extended, bytes inserted, deleted or duplicated, an interesting
    integer (a length of 2**40, say) written over it."""
    strategy = st.just(source) if isinstance(source, bytes) else source
    return _mutated(strategy, max_mutations)


def splits(data: bytes) -> SearchStrategy[list[bytes]]:
    """``data`` cut into pieces at arbitrary points (as a transport may)."""
    cuts = st.lists(st.integers(0, len(data)), max_size=12).map(sorted)
    return cuts.map(
        lambda points: [
            data[start:stop]
            for start, stop in zip([0, *points], [*points, len(data)], strict=True)
        ]
    )


# -- protobuf messages from descriptors ------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Strings a parser of names, paths and addresses must refuse or survive.
HOSTILE_TEXT = (
    "",
    " ",
    ".",
    "..",
    "/",
    "//",
    "../../../etc/passwd",
    "a/../../b",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "a/",
    "\x00",
    "a\x00b",
    "\\",
    "..\\..\\x",
    "C:\\x",
    "\u202egpj.exe",
    "\x1b[2J",
    "\n",
    "#",
    "!",
    "*",
    "[",
    "[!",
    "**/",
    "\\",
    "é" * 300,
    "x" * 255,
    "x" * 256,
    "a/" * 2048 + "a",
    "x" * 4097,
    "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion",
    "AOQQPP7TZYIL4HLQ3UMOOS6ATFT6JVRQTOSQ2XY53SDGIESVGG4BQEAD.ONION",
    "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqeae.onion",
    "tcp:127.0.0.1:1",
    "tcp:host=localhost:port=0",
    "unix:/nonexistent",
)
# Sizes of "huge" strings and bytes: past every field limit a node has,
# under the 8 MiB clirpc message limit (the builder makes them cheaply).
HUGE_SIZES = (4096, 65536 + 1, 1024 * 1024 + 1)


@functools.cache
def texts() -> SearchStrategy[str]:
    """Short random text, hostile shapes, or huge strings."""
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(HOSTILE_TEXT),
        st.sampled_from(HUGE_SIZES).map(lambda size: "x" * size),
    )


@functools.cache
def blobs() -> SearchStrategy[bytes]:
    """Short random bytes, key-sized bytes, or huge bytes."""
    return st.one_of(
        st.binary(max_size=40),
        st.binary(min_size=32, max_size=32),
        st.sampled_from(HUGE_SIZES).map(bytes),
    )


@functools.cache
def _integers(low: int, high: int) -> SearchStrategy[int]:
    edges = sorted(
        {v for base in INTERESTING_INTEGERS for v in (base, -base, base - 1)}
        | {low, high, low + 1, high - 1}
    )
    return st.one_of(
        st.sampled_from([v for v in edges if low <= v <= high]),
        st.integers(max(low, -8), min(high, 100)),
        st.integers(low, high),
    )


Overrides = dict[str, SearchStrategy[Any]]


def _scalar(field: FieldDescriptor) -> SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_STRING:
        return texts()
    if kind == FieldDescriptor.TYPE_BYTES:
        return blobs()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        # proto3 enums are open: a newer peer's value must be survived.
        return st.one_of(st.sampled_from(known), _integers(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for field type {kind} of {field.full_name}")


def _small(field: FieldDescriptor) -> SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=8)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=33)
    return _scalar(field)


class _Builder:
    """Strategies for one set of overrides, each built once.

    A strategy is an object Hypothesis validates and analyses when it is
    first drawn from; building them afresh inside every draw cost more than
    the decoders under test. Here each (message, depth) and each field is
    built once and drawn from many times.
    """

    def __init__(self, overrides: Overrides) -> None:
        self.overrides = overrides
        self._messages: dict[tuple[str, int], SearchStrategy[Message]] = {}
        self._fields: dict[tuple[str, int], SearchStrategy[Any]] = {}

    def message(self, descriptor: Descriptor, depth: int) -> SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._messages:
            # Deferred: a message type may contain itself (depth ends it).
            self._messages[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._messages[key]

    def _build(self, descriptor: Descriptor, depth: int) -> SearchStrategy[Message]:
        # At the depth bound a oneof holds no sub-message: that bounds
        # nesting even for a message type that contains itself.
        oneofs = [
            st.sampled_from(
                [
                    None,
                    *(
                        field
                        for field in oneof.fields
                        if depth > 0 or field.type != FieldDescriptor.TYPE_MESSAGE
                    ),
                ]
            )
            for oneof in descriptor.oneofs
        ]
        fields = [(field, self.field(field, depth)) for field in descriptor.fields]
        return _message(descriptor, oneofs, fields)

    def field(self, field: FieldDescriptor, depth: int) -> SearchStrategy[Any]:
        key = (field.full_name, depth)
        if key not in self._fields:
            self._fields[key] = self._field_value(field, depth)
        return self._fields[key]

    def _override(self, name: str, field: FieldDescriptor) -> Any:
        return self.overrides.get(
            field.full_name + name, self.overrides.get(field.name + name)
        )

    def _single(self, field: FieldDescriptor, depth: int) -> SearchStrategy[Any]:
        override = self._override("", field)
        if override is not None:
            return override  # type: ignore[no-any-return]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(field.message_type, depth - 1)
        return _scalar(field)

    def _field_value(self, field: FieldDescriptor, depth: int) -> SearchStrategy[Any]:
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        in_oneof = field.containing_oneof is not None
        if field.is_repeated:
            override = self._override("[]", field)
            if override is not None:
                return override  # type: ignore[no-any-return]
            if is_message and (depth <= 0 or field.message_type.GetOptions().map_entry):
                return st.just([])
            lists = st.lists(self._single(field, depth), max_size=3)
            if is_message:
                return lists
            # Long lists repeat one small value: thousands of huge strings
            # would cost gigabytes and say nothing more.
            many = st.tuples(_small(field), st.sampled_from((100, 3000))).map(
                lambda pair: [pair[0]] * pair[1]
            )
            return st.one_of(lists, many)
        if is_message and depth <= 0 and not in_oneof:
            return st.none()
        if is_message and not in_oneof:
            return st.one_of(st.none(), self._single(field, depth))
        return self._single(field, depth)


@st.composite
def _message(
    draw: Callable[[SearchStrategy[Any]], Any],
    descriptor: Descriptor,
    oneofs: list[SearchStrategy[FieldDescriptor | None]],
    fields: list[tuple[FieldDescriptor, SearchStrategy[Any]]],
) -> Message:
    message: Message = message_factory.GetMessageClass(descriptor)()
    chosen = {
        oneof.full_name: draw(choice)
        for oneof, choice in zip(descriptor.oneofs, oneofs, strict=True)
    }
    for field, values in fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.full_name] is not field:
            continue
        _assign(message, field, draw(values))
    return message


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    if value is None:
        return
    target = getattr(message, field.name)
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        # SetInParent marks an empty sub-message (Cancel{}) as present.
        target.SetInParent()
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


_BUILDERS: dict[int, tuple[Overrides, _Builder]] = {}
_NO_OVERRIDES: Overrides = {}


def messages(
    descriptor: Descriptor, depth: int = 3, overrides: Overrides | None = None
) -> SearchStrategy[Message]:
    """Messages of ``descriptor`` with random field values.

    Integers sit at their type's edges (negative, 2**63, 2**64 - 1) or
    anywhere in range; enums take unknown values; strings and bytes are
    short, hostile or huge; repeated fields are short or thousands long; a
    oneof holds any one of its fields or none; sub-messages nest ``depth``
    deep. ``overrides`` maps a field's full name (or its name; a repeated
    field's with "[]" appended for the whole list) to the strategy to use
    for it instead, e.g. valid onion addresses for ``onion_address``.
    """
    overrides = _NO_OVERRIDES if overrides is None else overrides
    # One builder per overrides dict (kept alive here, so ids stay unique).
    entry = _BUILDERS.get(id(overrides))
    if entry is None or entry[0] is not overrides:
        entry = (overrides, _Builder(overrides))
        _BUILDERS[id(overrides)] = entry
    return entry[1].message(descriptor, depth)


def serialized(strategy: SearchStrategy[Message]) -> SearchStrategy[bytes]:
    """The wire bytes of generated messages."""
    return strategy.map(lambda message: message.SerializeToString())
