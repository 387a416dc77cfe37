"""router.ids: the grammar, minting, extraction, pair checks and their errors."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from router.errors import IdError, InvalidId, RouterError, ThreadMismatch, short_repr
from router.ids import (
    RunId,
    ThreadId,
    UserId,
    check,
    dead_letter_id_time,
    explain,
    extract_thread_id,
    is_dead_letter_id,
    is_event_id,
    is_run_id,
    is_thread_id,
    is_user_id,
    new_connection_id,
    new_dead_letter_id,
    new_event_id,
    new_run_id,
    new_thread_id,
    parse_run_id,
    parse_thread_id,
    parse_user_id,
    validate_id_pair,
)

# The exact ids of the production error this library exists to prevent (DESIGN §0, §1).
FIELD_THREAD = "thread_websocket_factory_1757361062151_7_90c65fe4"
FIELD_RUN = "run_websocket_factory_1757361062151_8_1a2b3c4d"
FIELD_EMBEDDED = "websocket_factory_1757361062151_8"

CANONICAL_THREAD = FIELD_THREAD
CANONICAL_RUN = f"run_{FIELD_THREAD}_1a2b3c4d"

# The grammar of DESIGN §1, written out independently of router.ids.
OPERATION_GRAMMAR = r"[a-z][a-z0-9]*(_[a-z0-9]+)*"
THREAD_GRAMMAR = rf"thread_{OPERATION_GRAMMAR}_[0-9]+_[0-9]+_[0-9a-f]{{8}}"
RUN_GRAMMAR = rf"run_{THREAD_GRAMMAR}_[0-9a-f]{{8}}"

operations = st.from_regex(OPERATION_GRAMMAR, fullmatch=True).filter(lambda s: len(s) <= 64)

# Pieces of ids, glued together: strings that are near the grammar, and often in it.
_FRAGMENTS = [
    "run_",
    "thread_",
    "run_thread_",
    "chat",
    "websocket_factory",
    "_",
    "__",
    "1757361062151",
    "7",
    "0",
    "90c65fe4",
    "1a2b3c4d",
    "90C65FE4",
    "a",
    " ",
    "\n",
    "\x00",
    "\u200b",
    "\u0430",
    "*",
    ":",
    "-",
]
near_ids = st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join)
canonical_runs = st.from_regex(RUN_GRAMMAR, fullmatch=True).filter(lambda s: len(s) <= 400)

any_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=600),
    st.text(alphabet=" \t\r\n\x00\u200b\ufeff", max_size=20),
    near_ids,
    canonical_runs,
    st.integers(min_value=0, max_value=12_000).map(lambda n: "a" * n),
    st.integers(min_value=0, max_value=12_000).map(
        lambda n: f"run_thread_{'a' * n}_1_2_90c65fe4_1a2b3c4d"
    ),
)
anything = st.one_of(
    any_text,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.tuples(st.text(max_size=5)),
)

BIG = "x" * 10_240


# --------------------------------------------------------------------------- the field case


def test_field_case_is_a_thread_mismatch_naming_every_id() -> None:
    with pytest.raises(ThreadMismatch) as caught:
        validate_id_pair(FIELD_RUN, FIELD_THREAD)
    error = caught.value
    assert error.run_id == FIELD_RUN
    assert error.thread_id == FIELD_THREAD
    assert error.embedded == FIELD_EMBEDDED
    message = str(error)
    assert FIELD_RUN in message
    assert FIELD_THREAD in message
    assert repr(FIELD_EMBEDDED) in message
    assert isinstance(error, IdError)
    assert isinstance(error, RouterError)
    assert isinstance(error, ValueError)


def test_field_case_run_alone_is_invalid_because_its_thread_is_not_canonical() -> None:
    with pytest.raises(InvalidId) as caught:
        extract_thread_id(FIELD_RUN)
    assert caught.value.kind == "run_id"
    assert caught.value.value == FIELD_RUN
    assert FIELD_EMBEDDED in str(caught.value)


def test_mismatch_is_reported_even_when_the_embedded_part_is_not_canonical() -> None:
    with pytest.raises(ThreadMismatch) as caught:
        validate_id_pair("run_registry_1a2b3c4d", CANONICAL_THREAD)
    assert caught.value.embedded == "registry"


def test_pair_with_the_same_non_canonical_thread_is_invalid_not_a_mismatch() -> None:
    with pytest.raises(InvalidId):
        validate_id_pair("run_registry_1a2b3c4d", "registry")


@pytest.mark.parametrize("thread", [None, 7, b"thread", ["x"]])
def test_pair_with_a_non_string_thread_is_invalid(thread: Any) -> None:
    with pytest.raises(InvalidId) as caught:
        validate_id_pair(CANONICAL_RUN, thread)
    assert caught.value.kind == "thread_id"


def test_pair_with_a_run_of_the_wrong_shape_is_invalid() -> None:
    with pytest.raises(InvalidId) as caught:
        validate_id_pair("registry", CANONICAL_THREAD)
    assert caught.value.kind == "run_id"


def test_consistent_pair_returns_the_thread() -> None:
    assert validate_id_pair(CANONICAL_RUN, CANONICAL_THREAD) == CANONICAL_THREAD
    assert isinstance(validate_id_pair(CANONICAL_RUN, CANONICAL_THREAD), ThreadId)


# --------------------------------------------------------------------------- minting


def test_minted_ids_follow_the_grammar() -> None:
    thread = new_thread_id("websocket_factory")
    run = new_run_id(thread)
    assert re.fullmatch(THREAD_GRAMMAR, thread)
    assert re.fullmatch(RUN_GRAMMAR, run)
    assert thread.startswith("thread_websocket_factory_")
    assert run.startswith(f"run_{thread}_")
    assert isinstance(thread, ThreadId)
    assert isinstance(run, RunId)
    assert new_thread_id().startswith("thread_chat_")


@settings(max_examples=200, deadline=None)
@given(operation=operations)
def test_extract_returns_the_thread_of_every_minted_run(operation: str) -> None:
    thread = new_thread_id(operation)
    assert is_thread_id(thread)
    run = new_run_id(thread)
    assert is_run_id(run)
    assert extract_thread_id(run) == thread
    assert validate_id_pair(run, thread) == thread
    assert check(run, thread)


def test_longest_operation_still_round_trips() -> None:
    operation = "a" * 128
    thread = new_thread_id(operation)
    assert extract_thread_id(new_run_id(thread)) == thread
    with pytest.raises(InvalidId):
        new_thread_id("a" * 129)


def test_every_canonical_thread_has_canonical_runs() -> None:
    tail = "_1757361062151_7_90c65fe4"
    longest = "thread_" + "a" * (499 - len("thread_") - len(tail)) + tail
    assert len(longest) == 499
    assert is_thread_id(longest)
    assert extract_thread_id(new_run_id(longest)) == longest
    too_long = "thread_a" + longest[len("thread_") :]
    assert not is_thread_id(too_long)
    with pytest.raises(InvalidId, match="500 characters"):
        parse_thread_id(too_long)


@pytest.mark.parametrize(
    "operation",
    [
        "",
        "Chat",
        "1chat",
        "chat-1",
        "chat_",
        "_chat",
        "chat__x",
        "chat x",
        "chat\n",
        "ch\u0430t",
        None,
        7,
        b"chat",
    ],
)
def test_new_thread_id_rejects_a_bad_operation(operation: Any) -> None:
    with pytest.raises(InvalidId) as caught:
        new_thread_id(operation)
    assert caught.value.kind == "operation"
    assert repr(operation) in str(caught.value)


@pytest.mark.parametrize("thread", [FIELD_EMBEDDED, CANONICAL_RUN, "", None, 3])
def test_new_run_id_rejects_a_non_canonical_thread(thread: Any) -> None:
    with pytest.raises(InvalidId):
        new_run_id(thread)


def _mint_concurrently(
    mint: Callable[[], str], workers: int = 4, total: int = 10_000
) -> list[list[str]]:
    per_worker = total // workers
    start = threading.Barrier(workers)
    results: list[list[str]] = [[] for _ in range(workers)]

    def work(index: int) -> None:
        start.wait()
        out = results[index]
        for _ in range(per_worker):
            out.append(mint())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(r) for r in results) == total
    return results


def test_thread_ids_minted_from_four_os_threads_are_distinct() -> None:
    results = _mint_concurrently(new_thread_id)
    minted = [i for r in results for i in r]
    assert len(set(minted)) == len(minted) == 10_000
    assert all(is_thread_id(i) for i in minted)


def test_dead_letter_ids_minted_from_four_os_threads_are_distinct_and_ordered() -> None:
    results = _mint_concurrently(new_dead_letter_id)
    minted = [i for r in results for i in r]
    assert len(set(minted)) == len(minted) == 10_000
    assert all(is_dead_letter_id(i) for i in minted)
    for per_thread in results:
        assert all(a < b for a, b in itertools.pairwise(per_thread))


def test_dead_letter_ids_minted_in_sequence_strictly_increase() -> None:
    before = time.time()
    minted = [new_dead_letter_id() for _ in range(10_000)]
    after = time.time()
    assert all(a < b for a, b in itertools.pairwise(minted))
    assert before - 1 <= dead_letter_id_time(minted[0]) <= after + 1


def test_other_minted_ids_are_distinct_and_well_formed() -> None:
    events = {new_event_id() for _ in range(1000)}
    connections = {new_connection_id() for _ in range(1000)}
    assert len(events) == len(connections) == 1000
    assert all(is_event_id(e) for e in events)
    assert all(isinstance(c, str) and c for c in connections)


def test_event_ids_are_uuid4_hex_unique_across_threads_and_forks() -> None:
    minted: list[list[str]] = [[] for _ in range(4)]

    def mint(into: list[str]) -> None:
        into.extend(new_event_id() for _ in range(5_000))

    workers = [threading.Thread(target=mint, args=(into,)) for into in minted]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    every = [event_id for into in minted for event_id in into]
    assert len(set(every)) == len(every) == 20_000
    for event_id in every[:1000]:
        parsed = uuid.UUID(event_id)
        assert parsed.hex == event_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122

    # A forked child must not hand out the ids its parent's batch still holds.
    new_event_id()  # the batch is now partly used
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, " ".join(new_event_id() for _ in range(300)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_event_id() for _ in range(300)}
    assert len(child) == 300 and not child & parent


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(value=anything)
@example(value=None)
@example(value=BIG)
@example(value="\x00" * 10_240)
@example(value="run_" + "thread_a_1" * 50 + "!")
@example(value="thread_" + "a_1" * 200 + "_1")
def test_grammar_checks_never_raise(value: Any) -> None:
    assert isinstance(is_thread_id(value), bool)
    assert isinstance(is_run_id(value), bool)
    assert isinstance(is_user_id(value), bool)
    assert isinstance(is_event_id(value), bool)
    assert isinstance(is_dead_letter_id(value), bool)
    assert isinstance(check(value), bool)
    assert isinstance(check(value, value), bool)


def _only_id_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except IdError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message
        assert len(message) < 1000
    # Any other exception escapes and fails the test.


@settings(max_examples=300, deadline=None)
@given(value=anything, other=anything)
@example(value=BIG, other=BIG)
@example(value=CANONICAL_RUN, other=BIG)
def test_parsers_raise_only_id_errors(value: Any, other: Any) -> None:
    _only_id_errors(lambda: parse_thread_id(value))
    _only_id_errors(lambda: parse_run_id(value))
    _only_id_errors(lambda: parse_user_id(value))
    _only_id_errors(lambda: extract_thread_id(value))
    _only_id_errors(lambda: validate_id_pair(value, other))
    _only_id_errors(lambda: validate_id_pair(CANONICAL_RUN, value))
    _only_id_errors(lambda: new_run_id(value))
    _only_id_errors(lambda: new_thread_id(value))
    paragraph = explain(value, other)
    assert isinstance(paragraph, str) and paragraph
    assert "\n" not in paragraph


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(near_ids, canonical_runs, any_text))
@example(value=CANONICAL_RUN)
@example(value=FIELD_RUN)
def test_whatever_extract_accepts_revalidates(value: str) -> None:
    try:
        thread = extract_thread_id(value)
    except InvalidId:
        assert not is_run_id(value)
        return
    assert is_run_id(value)
    assert is_thread_id(thread)
    assert parse_thread_id(thread) == thread
    assert parse_run_id(value) == value
    assert value.startswith(f"run_{thread}_")
    assert validate_id_pair(value, thread) == thread
    assert extract_thread_id(new_run_id(thread)) == thread
    assert not is_user_id(value) and not is_user_id(thread)


@settings(max_examples=100, deadline=None)
@given(value=canonical_runs)
def test_every_string_of_the_run_grammar_is_accepted(value: str) -> None:
    assert extract_thread_id(value) == value[len("run_") : -len("_1a2b3c4d")]


@settings(max_examples=200, deadline=None)
@given(first=operations, second=operations)
def test_a_run_of_one_thread_never_passes_with_another(first: str, second: str) -> None:
    thread_a = new_thread_id(first)
    thread_b = new_thread_id(second)
    run_a = new_run_id(thread_a)
    with pytest.raises(ThreadMismatch) as caught:
        validate_id_pair(run_a, thread_b)
    assert caught.value.embedded == thread_a
    assert caught.value.thread_id == thread_b
    assert caught.value.run_id == run_a
    assert not check(run_a, thread_b)


def test_two_runs_of_one_thread_differ_but_share_it() -> None:
    thread = new_thread_id()
    runs = {new_run_id(thread) for _ in range(100)}
    assert len(runs) == 100
    assert {extract_thread_id(r) for r in runs} == {thread}


# --------------------------------------------------------------------------- bad ids


def _insert(value: str, char: str) -> list[str]:
    """``char`` at the start, inside the operation, inside the hex, and at the end."""
    cut = value.index("_", value.index("thread_") + len("thread_")) - 2
    return [
        char + value,
        value[:cut] + char + value[cut:],
        value[:-3] + char + value[-3:],
        value + char,
    ]


def _corrupted(value: str) -> list[Any]:
    bad: list[Any] = [
        "",
        "registry",
        None,
        "run_",
        "thread_",
        " ",
        "\x00",
        0,
        1.5,
        b"x",
        [value],
        BIG,
        BIG + value,
    ]
    bad += [" " + value, value + " ", value.replace("_", " ", 1)]
    bad += [value.replace("a", "\u0430", 1), value.replace("e", "\u0435", 1)]  # Cyrillic
    bad += [value.replace("c", "\u0441", 1), value.upper()]
    for char in [
        "\u200b",
        "\ufeff",
        "\r",
        "\n",
        "\r\n",
        "\x00",
        "\t",
        "*",
        "?",
        "[",
        "]",
        "{",
        "}",
        ":",
    ]:
        bad += _insert(value, char)
    return bad


BAD_THREADS = [*_corrupted(CANONICAL_THREAD), CANONICAL_RUN, FIELD_EMBEDDED]
BAD_RUNS = [*_corrupted(CANONICAL_RUN), CANONICAL_THREAD, FIELD_RUN, "run_" + CANONICAL_THREAD]


def _assert_names_value(error: InvalidId, value: Any) -> None:
    message = str(error)
    assert error.value is value
    assert short_repr(value) in message
    if len(repr(value)) <= 60:
        assert repr(value) in message
    else:
        assert repr(value)[:40] in message
        assert len(message) < 400
    assert "\n" not in message and "\r" not in message and "\x00" not in message


def test_bad_fixtures_are_really_bad() -> None:
    assert is_thread_id(CANONICAL_THREAD) and is_run_id(CANONICAL_RUN)
    assert len(BAD_THREADS) > 60 and len(BAD_RUNS) > 60


@pytest.mark.parametrize("value", BAD_THREADS, ids=repr)
def test_parse_thread_id_rejects(value: Any) -> None:
    assert not is_thread_id(value)
    with pytest.raises(InvalidId) as caught:
        parse_thread_id(value)
    assert caught.value.kind == "thread_id"
    _assert_names_value(caught.value, value)


@pytest.mark.parametrize("value", BAD_RUNS, ids=repr)
def test_parse_run_id_and_extract_reject(value: Any) -> None:
    assert not is_run_id(value)
    for parse in (parse_run_id, extract_thread_id):
        with pytest.raises(InvalidId) as caught:
            parse(value)
        assert caught.value.kind == "run_id"
        _assert_names_value(caught.value, value)


def test_long_values_are_truncated_in_messages() -> None:
    with pytest.raises(InvalidId) as caught:
        extract_thread_id(BIG)
    assert "…" in str(caught.value)
    assert "10240 characters" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_missing_and_non_string_values_say_why() -> None:
    with pytest.raises(InvalidId, match="missing"):
        parse_run_id(None)
    with pytest.raises(InvalidId, match="empty"):
        parse_thread_id("")
    with pytest.raises(InvalidId, match="int"):
        parse_run_id(123)


# --------------------------------------------------------------------------- user ids


@pytest.mark.parametrize(
    "value",
    [
        "alice",
        "u",
        "user-42",
        "alice@example.com",
        "google-oauth2:10987",
        "a.b+c_d",
        "A" * 128,
        "thread_x",
        "run_1",
        "7",
    ],
)
def test_user_ids_accept_opaque_values(value: str) -> None:
    assert is_user_id(value)
    assert parse_user_id(value) == value
    assert isinstance(parse_user_id(value), UserId)


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        42,
        "a" * 129,
        "has space",
        "tab\t",
        "new\nline",
        "ünïcode",
        "a/b",
        "a|b",
        "\u200balice",
        CANONICAL_THREAD,
        CANONICAL_RUN,
    ],
    ids=repr,
)
def test_user_ids_refuse(value: Any) -> None:
    assert not is_user_id(value)
    with pytest.raises(InvalidId) as caught:
        parse_user_id(value)
    assert caught.value.kind == "user_id"
    assert short_repr(value) in str(caught.value)


def test_a_thread_id_used_as_a_user_id_says_so() -> None:
    with pytest.raises(InvalidId, match="cannot be used as a user id"):
        parse_user_id(new_thread_id())


# --------------------------------------------------------------------------- explain


def test_explain_a_valid_run_and_pair() -> None:
    alone = explain(CANONICAL_RUN)
    assert CANONICAL_RUN in alone and CANONICAL_THREAD in alone
    assert "canonical" in alone
    pair = explain(CANONICAL_RUN, CANONICAL_THREAD)
    assert "consistent" in pair
    assert "\n" not in pair


def test_explain_an_invalid_run() -> None:
    paragraph = explain("registry")
    assert "'registry'" in paragraph
    assert "not usable" in paragraph
    paragraph = explain(None)
    assert "None" in paragraph


def test_explain_the_field_mismatch_names_every_id() -> None:
    paragraph = explain(FIELD_RUN, FIELD_THREAD)
    assert FIELD_RUN in paragraph
    assert FIELD_THREAD in paragraph
    assert FIELD_EMBEDDED in paragraph
    assert "mismatch" in paragraph
    assert "new_run_id" in paragraph


def test_explain_an_invalid_thread() -> None:
    paragraph = explain(CANONICAL_RUN, "thread_\u200bx")
    assert repr("thread_\u200bx") in paragraph
    assert "not usable" in paragraph


# --------------------------------------------------------------------------- pydantic types


class Envelope(BaseModel):
    thread_id: ThreadId
    run_id: RunId
    user_id: UserId


def test_id_types_validate_as_pydantic_fields() -> None:
    envelope = Envelope(thread_id=CANONICAL_THREAD, run_id=CANONICAL_RUN, user_id="alice")
    assert isinstance(envelope.thread_id, ThreadId)
    assert isinstance(envelope.run_id, RunId)
    assert isinstance(envelope.user_id, UserId)
    again = Envelope.model_validate_json(envelope.model_dump_json())
    assert again == envelope
    assert envelope.model_dump() == {
        "thread_id": CANONICAL_THREAD,
        "run_id": CANONICAL_RUN,
        "user_id": "alice",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("thread_id", FIELD_EMBEDDED),
        ("thread_id", CANONICAL_RUN),
        ("thread_id", 7),
        ("run_id", FIELD_RUN),
        ("run_id", None),
        ("user_id", CANONICAL_THREAD),
        ("user_id", "a" * 129),
    ],
)
def test_id_types_reject_bad_values_as_pydantic_fields(field: str, value: Any) -> None:
    good: dict[str, Any] = {
        "thread_id": CANONICAL_THREAD,
        "run_id": CANONICAL_RUN,
        "user_id": "alice",
    }
    with pytest.raises(ValidationError) as caught:
        Envelope(**{**good, field: value})
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


def test_id_types_export_their_pattern_in_json_schema() -> None:
    properties = Envelope.model_json_schema()["properties"]
    for field, sample in [
        ("thread_id", CANONICAL_THREAD),
        ("run_id", CANONICAL_RUN),
        ("user_id", "alice"),
    ]:
        assert properties[field]["type"] == "string"
        assert re.fullmatch(properties[field]["pattern"].strip("^$"), sample)
