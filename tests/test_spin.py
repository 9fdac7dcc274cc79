"""The manager's wait (shmstore._spin.IdleSpin) and the poll both sides share: a busy
store is polled before blocking, a quiet one blocks at once. Driven by a scripted
selector and clock, so no test depends on how fast this machine is."""

from __future__ import annotations

from shmstore._spin import IdleSpin, spin_until

BUDGET_NS = 100_000


class _Loop:
    """A selector and clock: each poll (``select(0)``) takes 10 µs; a blocking select
    takes ``block_ns`` and returns an event. ``ready_after`` polls find an event."""

    def __init__(self) -> None:
        self.now = 0
        self.calls: list[float | None] = []
        self.ready_after: int | None = None
        self.block_ns = 0

    def clock(self) -> int:
        return self.now

    def select(self, timeout: float | None) -> list[str]:
        self.calls.append(timeout)
        if timeout == 0:
            self.now += 10_000
            polls = self.calls.count(0)
            return ["event"] if self.ready_after is not None and polls >= self.ready_after else []
        self.now += self.block_ns
        return ["event"]

    def wait(self, spin: IdleSpin, block_ns: int) -> tuple[list[str], list[float | None]]:
        self.calls, self.block_ns = [], block_ns
        return spin.wait(None), self.calls


def test_a_quiet_store_blocks_at_once() -> None:
    loop = _Loop()
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock)
    events, calls = loop.wait(spin, block_ns=5_000_000)
    assert events == ["event"]
    assert calls == [0, None]  # one poll, then the blocking wait


def test_after_a_short_wait_it_polls_for_the_budget_before_blocking() -> None:
    loop = _Loop()
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock)
    loop.wait(spin, block_ns=20_000)  # ended within the budget: requests come often
    events, calls = loop.wait(spin, block_ns=20_000)
    assert events == ["event"]
    polls = calls.count(0)
    assert calls[-1] is None and polls == BUDGET_NS // 10_000


def test_after_a_long_wait_it_blocks_at_once_again() -> None:
    loop = _Loop()
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock)
    loop.wait(spin, block_ns=20_000)
    loop.wait(spin, block_ns=5_000_000)  # polled, then blocked long: the store went quiet
    _, calls = loop.wait(spin, block_ns=20_000)
    assert calls == [0, None]


def test_an_event_found_while_polling_is_returned_without_blocking() -> None:
    loop = _Loop()
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock)
    loop.wait(spin, block_ns=20_000)
    loop.calls, loop.ready_after = [], 3
    events = spin.wait(None)
    assert events == ["event"]
    assert loop.calls == [0, 0, 0]


def test_spin_until_returns_the_first_true_result_or_the_last_false_one() -> None:
    loop = _Loop()
    results = iter([0, "", "found", "later"])
    assert spin_until(lambda: next(results), BUDGET_NS, loop.clock) == "found"

    def never() -> bool:
        loop.now += 30_000
        return False

    assert spin_until(never, BUDGET_NS, loop.clock) is False
    assert loop.now == 120_000  # stopped at the first look past the budget


class _Work:
    """The loop's own work: ``steps`` steps of it, each taking 20 µs."""

    def __init__(self, loop: _Loop, steps: int) -> None:
        self.loop, self.steps, self.done = loop, steps, 0

    def __call__(self) -> bool:
        if self.done == self.steps:
            return False
        self.done += 1
        self.loop.now += 20_000
        return True


def test_work_is_done_a_step_at_a_time_with_a_poll_after_each_before_blocking() -> None:
    loop = _Loop()
    work = _Work(loop, steps=3)
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock, work)
    events, calls = loop.wait(spin, block_ns=5_000_000)
    assert events == ["event"] and work.done == 3
    assert calls == [0, 0, 0, 0, None]  # a poll before each step and after the last


def test_a_request_that_arrives_during_the_work_waits_for_one_step_only() -> None:
    loop = _Loop()
    work = _Work(loop, steps=100)
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock, work)
    loop.ready_after = 2
    assert spin.wait(None) == ["event"]
    assert loop.calls == [0, 0] and work.done == 1
    loop.ready_after, loop.calls = None, []
    loop.wait(spin, block_ns=5_000_000)
    assert work.done == 100  # the rest, at the next wait


def test_the_work_does_not_count_against_the_budget() -> None:
    loop = _Loop()
    work = _Work(loop, steps=0)
    spin = IdleSpin(loop.select, BUDGET_NS, loop.clock, work)
    loop.wait(spin, block_ns=20_000)  # a short wait: the next one polls
    work.steps = 50  # a millisecond of work
    _, calls = loop.wait(spin, block_ns=20_000)
    assert calls.count(0) == 51 + BUDGET_NS // 10_000  # then a whole budget of polls
