"""The inference queue in front of a model: priority order, cancelled and late requests
dropped before they run, queue wait reported apart from compute."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from speech.inference import InferenceQueue
from switchboard.conversation.engines import DeadlineExceeded, EngineClosed


@pytest.fixture
def queue() -> Iterator[InferenceQueue]:
    queue = InferenceQueue("test-model")
    yield queue
    queue.close()


def blocker(queue: InferenceQueue) -> threading.Event:
    """Occupy the worker until the returned event is set."""
    release = threading.Event()
    queue.submit(lambda: release.wait(10))
    time.sleep(0.05)
    return release


def test_final_requests_run_before_speculative_ones(queue: InferenceQueue) -> None:
    release = blocker(queue)
    ran: list[str] = []

    def job(name: str) -> Callable[[], None]:
        return lambda: ran.append(name)

    futures = [queue.submit(job(name), priority=priority)
               for name, priority in [("spec-1", 1), ("final-1", 0), ("spec-2", 1),
                                      ("final-2", 0)]]
    release.set()
    for future in futures:
        future.result(5)
    assert ran == ["final-1", "final-2", "spec-1", "spec-2"]


async def test_a_cancelled_request_is_dropped_before_it_runs(queue: InferenceQueue) -> None:
    release = blocker(queue)
    ran: list[str] = []
    stale = asyncio.create_task(queue.run(lambda: ran.append("stale")))
    fresh = asyncio.create_task(queue.run(lambda: ran.append("fresh")))
    await asyncio.sleep(0.01)
    assert queue.pending == 2
    stale.cancel()
    await asyncio.sleep(0.01)
    assert queue.pending == 1
    release.set()
    await fresh
    assert ran == ["fresh"]


def test_a_request_past_its_deadline_is_dropped(queue: InferenceQueue) -> None:
    release = blocker(queue)
    ran: list[str] = []
    late = queue.submit(lambda: ran.append("late"), deadline=time.monotonic() + 0.05)
    time.sleep(0.1)
    release.set()
    with pytest.raises(DeadlineExceeded, match="test-model: dropped after waiting"):
        late.result(5)
    assert ran == []


def test_queue_wait_and_compute_are_reported_apart(queue: InferenceQueue) -> None:
    release = blocker(queue)
    def compute() -> str:
        time.sleep(0.1)
        return "done"

    future = queue.submit(compute)
    time.sleep(0.2)
    release.set()
    timed = future.result(5)
    assert timed.value == "done"
    assert timed.queue_ms >= 190 and timed.compute_ms >= 95  # waited 200 ms, computed 100


def test_errors_reach_the_caller_and_the_worker_goes_on(queue: InferenceQueue) -> None:
    def broken() -> None:
        raise ValueError("bad audio")

    with pytest.raises(ValueError, match="bad audio"):
        queue.submit(broken).result(5)
    assert queue.submit(lambda: 42).result(5).value == 42


def test_a_closed_queue_refuses_work() -> None:
    queue = InferenceQueue("closing")
    queue.close()
    assert not queue.alive
    with pytest.raises(EngineClosed, match="closing is closed"):
        queue.submit(lambda: None)


# --- batching (the GPU path) ---------------------------------------------------------------


class Batches:
    """A batch function that holds its first batch until released, and logs every batch."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.release = threading.Event()
        self.first_started = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        self.seen.append(list(items))
        if len(self.seen) == 1:
            self.first_started.set()
            self.release.wait(10)
        return [item.upper() for item in items]


@pytest.fixture
def batches() -> Iterator[tuple[InferenceQueue, Batches]]:
    work = Batches()
    queue = InferenceQueue("test-batch", batch=work, max_batch=3)
    yield queue, work
    work.release.set()
    queue.close()


def test_a_lone_item_runs_at_once_and_later_ones_gather(
        batches: tuple[InferenceQueue, Batches]) -> None:
    queue, work = batches
    first = queue.submit_item("a")
    assert work.first_started.wait(5)  # an idle worker waits for nobody
    later = [queue.submit_item(x, priority=p)
             for x, p in [("s1", 1), ("f1", 0), ("s2", 1), ("f2", 0), ("s3", 1)]]
    work.release.set()

    assert first.result(5).value == "A"
    assert [f.result(5).value for f in later] == ["S1", "F1", "S2", "F2", "S3"]
    assert work.seen == [["a"], ["f1", "f2", "s1"], ["s2", "s3"]]  # finals first, 3 at most
    assert list(queue.batch_sizes) == [1, 3, 2]


def test_a_cancelled_item_is_left_out_of_its_batch(
        batches: tuple[InferenceQueue, Batches]) -> None:
    queue, work = batches
    queue.submit_item("a")
    assert work.first_started.wait(5)
    kept, dropped = queue.submit_item("b"), queue.submit_item("c")
    dropped.cancel()
    work.release.set()

    assert kept.result(5).value == "B"
    assert work.seen[1] == ["b"]


def test_a_failing_batch_fails_each_of_its_items() -> None:
    def broken(items: list[str]) -> list[str]:
        raise RuntimeError("CUDA out of memory")

    queue = InferenceQueue("broken", batch=broken, max_batch=4)
    try:
        futures = [queue.submit_item(x) for x in "abc"]
        for future in futures:
            with pytest.raises(RuntimeError, match="out of memory"):
                future.result(5)
    finally:
        queue.close()


def test_batches_need_a_batch_function() -> None:
    with pytest.raises(ValueError):
        InferenceQueue("nope", max_batch=4)
    queue = InferenceQueue("plain")
    try:
        with pytest.raises(TypeError):
            queue.submit_item("x")
    finally:
        queue.close()
