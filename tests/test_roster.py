"""The roster (the name -> Slot mapping) and the rules of a Slot that no other test isolates."""

from __future__ import annotations

import pytest

from registry.config.schema import ModelSpec
from registry.errors import UnknownModel
from registry.events import UnloadReason
from registry.roster import Roster
from registry.slot import Retirement, Slot, State


def slot(name: str, *, state: State = State.UNLOADED) -> Slot:
    return Slot(name=name, spec=ModelSpec(loader="fake"), source=None, state=state)


def test_lookup_of_an_unknown_name_lists_the_known_ones() -> None:
    roster = Roster([slot("b"), slot("a")])
    with pytest.raises(UnknownModel) as caught:
        roster.lookup("c")
    assert caught.value.known == ["a", "b"]
    assert str(caught.value) == "model 'c' is not in the registry; known models: a, b"
    assert roster.names() == ["a", "b"]
    assert [s.name for s in roster.slots()] == ["b", "a"]  # models.yaml's order


def test_a_name_is_added_once() -> None:
    roster = Roster([slot("a")])
    with pytest.raises(ValueError, match="'a' is already in the roster"):
        roster.add(slot("a"))


def test_replace_keeps_the_place_and_retires_the_old_slot_with_its_replacement() -> None:
    old = slot("a")
    roster = Roster([old, slot("b")])
    new = slot("a")
    assert roster.replace(new) is old
    assert [s for s in roster] == [new, roster.lookup("b")]
    assert old.retirement == Retirement(retired=True, replacement=new)
    assert old.retirement.why() == (
        "replaced by a new version in models.yaml",
        UnloadReason.RELOAD,
    )
    assert not new.retirement.due


def test_remove_retires_the_slot_with_no_replacement() -> None:
    gone = slot("a")
    roster = Roster([gone, slot("b")])
    assert roster.remove("a") is gone
    assert roster.names() == ["b"]
    assert gone.retirement == Retirement(retired=True, replacement=None)
    assert gone.retirement.why() == ("removed from models.yaml", UnloadReason.RELOAD)
    error = roster.unknown("a", removed=True)
    assert str(error) == "model 'a' was removed from the registry; known models: b"


def test_an_unload_request_stops_new_leases_and_the_first_reason_stands() -> None:
    model = slot("m", state=State.LOADED)
    assert model.ready and not model.retirement.due
    model.retirement.request_unload(UnloadReason.BUDGET)
    model.retirement.request_unload(UnloadReason.ADMIN)
    assert not model.ready and model.retirement.due
    assert model.retirement.why() == ("the memory budget was lowered", UnloadReason.BUDGET)
    assert model.retirement.cancel_unload()
    assert not model.retirement.cancel_unload()
    assert model.ready
    model.retirement.request_unload(UnloadReason.ADMIN)
    assert model.retirement.why() == ("admin request", UnloadReason.ADMIN)
