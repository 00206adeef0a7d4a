"""The roster: the registry's models by name, the one owner of the name -> Slot mapping.

The manager builds it from models.yaml and changes it only on a reload (add, replace,
remove); admission and the housekeeping loop read it. A slot that leaves the roster is
marked retired here, so "retired" means exactly "no longer in the roster"; the lifecycle
then unloads it after its last request (Lifecycle.retire).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from registry.errors import UnknownModel
from registry.slot import Slot


class Roster:
    """Slots by name, in models.yaml's order (a replaced entry keeps its place)."""

    def __init__(self, slots: Iterable[Slot] = ()) -> None:
        self._slots: dict[str, Slot] = {}
        for slot in slots:
            self.add(slot)

    def __iter__(self) -> Iterator[Slot]:
        return iter(list(self._slots.values()))

    def names(self) -> list[str]:
        """The names, sorted."""
        return sorted(self._slots)

    def slots(self) -> list[Slot]:
        """The slots, in models.yaml's order."""
        return list(self._slots.values())

    def lookup(self, name: str) -> Slot:
        """The slot of `name`, or UnknownModel listing the known names."""
        slot = self._slots.get(name)
        if slot is None:
            raise self.unknown(name)
        return slot

    def unknown(self, name: str, *, removed: bool = False) -> UnknownModel:
        """The error for a name that is not (or no longer) here, with the known names."""
        return UnknownModel(name, self._slots, removed=removed)

    # ------------------------------------------------------------------ changes

    def add(self, slot: Slot) -> None:
        """A new entry."""
        if slot.name in self._slots:
            raise ValueError(f"{slot.name!r} is already in the roster")
        self._slots[slot.name] = slot

    def replace(self, slot: Slot) -> Slot:
        """`slot` takes its name's place; returns the old slot, retired with `slot` as its
        replacement (its waiting requests move over)."""
        old = self._slots[slot.name]
        self._slots[slot.name] = slot
        old.retirement.retire(slot)
        return old

    def remove(self, name: str) -> Slot:
        """The entry is gone; returns its slot, retired with no replacement."""
        old = self._slots.pop(name)
        old.retirement.retire(None)
        return old
