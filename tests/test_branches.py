"""engine.branches.run_branches: a fan-out's branches run together, in order, and the first
failure stops the rest at once."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from deliberate.engine.branches import run_branches


async def waits_for_its_cancel(name: int, cancelled: list[int]) -> None:
    """A branch that never answers; it notes its name in ``cancelled`` when cancelled."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


async def test_branches_run_together_and_answer_in_order() -> None:
    started: list[int] = []
    go = asyncio.Event()

    async def branch(i: int) -> int:
        started.append(i)
        await go.wait()  # none finishes before all have started: they run concurrently
        await asyncio.sleep(0.01 * (3 - i))  # finish in reverse order
        return i * 10

    async def release() -> None:
        while len(started) < 3:
            await asyncio.sleep(0)
        go.set()

    results, _ = await asyncio.gather(run_branches([branch(i) for i in range(3)]), release())
    assert results == [0, 10, 20]
    assert sorted(started) == [0, 1, 2]


async def test_a_failing_branch_stops_the_one_awaited_first_and_its_error_is_raised() -> None:
    """Branch 0 (the one the caller awaits first) would wait forever; branch 2 fails. The failure
    comes out at once, as itself with its own cause, and branches 0 and 1 were cancelled."""
    cancelled: list[int] = []

    async def fails() -> None:
        await asyncio.sleep(0)
        try:
            raise KeyError("root")
        except KeyError as exc:
            raise ValueError("branch 2 broke") from exc

    with pytest.raises(ValueError, match="branch 2 broke") as info:
        await asyncio.wait_for(run_branches([waits_for_its_cancel(0, cancelled), waits_for_its_cancel(1, cancelled),
                                             fails()]), timeout=5)
    assert isinstance(info.value.__cause__, KeyError)
    assert sorted(cancelled) == [0, 1]


async def test_the_first_failure_wins_over_later_ones() -> None:
    """Branch 0 fails first; branch 1, cancelled by it, fails too while it stops: branch 0's
    error is the one raised."""
    async def fails_first() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("first")

    async def fails_while_stopping() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("second") from None

    with pytest.raises(RuntimeError, match="first"):
        await run_branches([fails_while_stopping(), fails_first()])


async def test_a_failure_is_a_failure_after_the_caller_handled_a_cancel_of_its_own() -> None:
    """A caller that caught an earlier cancel (without ``uncancel``) still gets a branch's error,
    not a cancellation (which the engine would report as the user's interrupt)."""
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("the branch broke")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def caller() -> None:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # handled; me.cancelling() stays 1
        await run_branches([forever(), fails()])

    with pytest.raises(ValueError, match="the branch broke"):
        await asyncio.wait_for(caller(), timeout=5)


async def test_a_cancel_the_awaited_branch_swallows_still_cancels_the_caller() -> None:
    cancelled: list[int] = []

    async def swallows() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "swallowed"
        return "unreachable"

    task = asyncio.create_task(run_branches([swallows(), waits_for_its_cancel(1, cancelled)]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert cancelled == [1]  # the branch that kept waiting


async def test_cancelling_the_caller_cancels_every_branch() -> None:
    cancelled: list[int] = []
    task = asyncio.create_task(run_branches([waits_for_its_cancel(i, cancelled) for i in range(3)]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == [0, 1, 2]


async def test_branches_cancelled_before_they_start_are_closed() -> None:
    """A coroutine never started and never closed warns "was never awaited" when collected:
    each one the caller handed in ends closed."""
    async def branch() -> None:
        await asyncio.sleep(0)

    coros = [branch() for _ in range(3)]
    task = asyncio.create_task(run_branches(coros))
    await asyncio.sleep(0)  # the caller has made the branch tasks; none has run yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [inspect.getcoroutinestate(c) for c in coros] == [inspect.CORO_CLOSED] * 3
