"""The manager's hash index: its segment, its generation and its growth (layout:
:mod:`shmstore._layout`). Probing, inserting and rebuilding are the hot functions'
(:mod:`shmstore._hot`); this class decides when the index grows and switches readers to
the new one."""

from __future__ import annotations

from types import ModuleType

from . import _layout as L
from ._segment import Segment, unlink_segment

__all__ = ["INITIAL_CAPACITY", "Index"]

INITIAL_CAPACITY = 1024
#: Capacity below which the index grows fourfold, not twofold.
FOURFOLD_BELOW = 1 << 16


class Index:
    """The index segments of one store, named under ``prefix``; ``header`` is the
    store's ``ctl`` words, where the generation is published for readers. With
    ``visited``, each index has its segment of visited bytes (SIEVE) beside it."""

    def __init__(
        self, prefix: str, header: memoryview, hot: ModuleType, visited: bool = False
    ) -> None:
        self._prefix = prefix
        self._header = header
        self._hot = hot
        self._segment: Segment | None = None
        self._visited_segment: Segment | None = None
        self._with_visited = visited
        #: The current index's words (``memoryview`` cast to ``"Q"``).
        self.slots = L.no_index()
        #: Its visited bytes, one per slot (a writable ``memoryview``), or ``None``.
        self.visited: memoryview | None = None
        self.capacity = 0
        self.used = 0  # slots not empty: live entries and tombstones
        self.rebuild(INITIAL_CAPACITY)

    @property
    def generation(self) -> int:
        return int(self._header[L.W_INDEX_GEN])

    def make_room(self, live: int, new_keys: int) -> None:
        """Rebuild the index larger if ``new_keys`` more slots would take it past
        :data:`~shmstore._layout.MAX_LOAD`; ``live``: the keys in it now.

        :raises StoreFullError: ``/dev/shm`` has no room for a larger index.
        """
        if self.used + new_keys <= L.MAX_LOAD * self.capacity:
            return
        capacity = max(INITIAL_CAPACITY, self.capacity)
        # Fourfold while small, where the index's bytes are few and a rebuild in pure
        # Python re-inserts every key; twofold from FOURFOLD_BELOW slots on, where the
        # index's bytes per key matter (the memory at 200,000 values: see README).
        while live + new_keys > L.MAX_LOAD * capacity:
            capacity *= 4 if capacity < FOURFOLD_BELOW else 2
        self.rebuild(capacity)

    def rebuild(self, capacity: int) -> None:
        """Copy the live slots into a new index of ``capacity`` slots (a power of two)
        and switch readers to it. The old one is unlinked; readers that still map it
        keep their mapping and see the generation change."""
        generation = self.generation + 1
        made: list[Segment] = []
        try:
            segment = Segment.create(
                L.index_name(self._prefix, generation), capacity * L.SLOT_WORDS * 8
            )
            made.append(segment)
            segment.reserve(0, segment.size)
            new = memoryview(segment.buf).cast("Q")
            marks = visited = None
            if self._with_visited:
                # Made before the switch: a reader that maps i<gen> finds v<gen>.
                marks = Segment.create(L.visited_name(self._prefix, generation), capacity)
                made.append(marks)
                marks.reserve(0, marks.size)
                visited = memoryview(marks.buf)
                live = self._hot.rebuild(self.slots, new, self.visited, visited)
            else:
                live = self._hot.rebuild(self.slots, new)
        except BaseException:
            for made_segment in made:
                made_segment.close()
                unlink_segment(made_segment.name)
            raise
        self._header[L.W_INDEX_GEN] = generation
        retired = (self._segment, self._visited_segment)
        self._segment, self.slots, self.capacity, self.used = segment, new, capacity, live
        self._visited_segment, self.visited = marks, visited
        for old in retired:
            if old is not None:
                old.close()
                unlink_segment(old.name)

    def close(self) -> None:
        self.slots = L.no_index()
        self.visited = None
        for segment in (self._segment, self._visited_segment):
            if segment is not None:
                segment.close()
                unlink_segment(segment.name)
        self._segment = self._visited_segment = None
