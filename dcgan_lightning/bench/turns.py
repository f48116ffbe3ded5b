"""Loops that take turns: each in its own thread of one process, `chunk` batches at a time.

Timed one after another, two runs of a small loop on a shared VM differ by up to +-25%: its
speed drifts over seconds, more than the loop overheads the `overhead` section compares. Taking
turns every `chunk` batches (~0.1 s), every loop meets the same drift. Each loop's timed window,
batches [warmup, warmup + n), starts once every loop has reached it; a loop is timed only during
its turns, while the others wait (a wait releases the GIL). A loop that has timed its n batches
leaves the rotation and waits until every loop has, so that its last batch and its teardown
(epoch-end plots, checkpoints) do not run during another's turn. Threads of the loops themselves
(Rich's redraw thread, W&B's) may still run during another's turn: their cost is spread, not
hidden.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import torch

WAIT_SECONDS = 600  # a loop that never arrives (it failed before its window) ends the wait
current: Turns | None = None  # the rotation `BatchTimer(turn=...)` joins (set by the section)


def now(device: torch.device) -> float:
    """Seconds on the wall clock once `device` has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Turns:
    """The rotation of `names`, in that order; `window(name)` is what each loop marks."""

    def __init__(
        self, names: Sequence[str], warmup: int, n: int, chunk: int, device: torch.device
    ) -> None:
        self.members, self.warmup, self.n, self.chunk = list(names), warmup, n, chunk
        self.device = device
        self.seconds = {name: [0.0, 0.0] for name in names}  # (wall, CPU) during its turns
        self._cond = threading.Condition()
        self._arrived: set[str] = set()
        self._left: set[str] = set()
        self._turn: str | None = None
        self._started: dict[str, tuple[float, float]] = {}

    def window(self, name: str) -> TurnWindow:
        return TurnWindow(self, name)

    def timing(self, name: str) -> dict[str, float]:
        """{"wall": s/batch, "cpu": CPU s/batch} of `name`'s timed window."""
        wall, cpu = self.seconds[name]
        return {"wall": wall / self.n, "cpu": cpu / self.n}

    # -- the rotation, called from the loops' threads -----------------------------------------
    def arrive(self, name: str) -> None:
        with self._cond:
            self._arrived.add(name)
            self._start_if_all_in()
            self._wait(lambda: self._turn == name)
        self._begin(name)

    def pass_turn(self, name: str) -> None:
        self._end(name)
        with self._cond:
            self._turn = self._next(name)
            self._cond.notify_all()
            self._wait(lambda: self._turn == name)
        self._begin(name)

    def finish(self, name: str) -> None:
        """`name` has timed its window: out of the rotation; back once every loop is."""
        self._end(name)
        self.leave(name)
        with self._cond:
            self._wait(lambda: len(self._left) == len(self.members))

    def leave(self, name: str) -> None:
        """Out of the rotation (also for a loop that ended early); idempotent."""
        with self._cond:
            if name in self._left:
                return
            self._left.add(name)
            if self._turn == name:
                self._turn = self._next(name)
            self._start_if_all_in()
            self._cond.notify_all()

    def _start_if_all_in(self) -> None:
        if self._turn is None and self._arrived | self._left == set(self.members):
            self._turn = next((m for m in self.members if m not in self._left), None)
            self._cond.notify_all()

    def _next(self, name: str) -> str | None:
        """The next member after `name` still in the rotation (`name` itself if alone)."""
        i = self.members.index(name)
        later = self.members[i + 1 :] + self.members[: i + 1]
        return next((m for m in later if m not in self._left), None)

    def _wait(self, ready: Callable[[], bool]) -> None:
        if not self._cond.wait_for(ready, timeout=WAIT_SECONDS):
            raise TimeoutError(f"a loop did not take its turn within {WAIT_SECONDS} s")

    def _begin(self, name: str) -> None:
        self._started[name] = (now(self.device), time.process_time())

    def _end(self, name: str) -> None:
        wall, cpu = self._started.pop(name)
        self.seconds[name][0] += now(self.device) - wall
        self.seconds[name][1] += time.process_time() - cpu


class TurnWindow:
    """`Window`'s interface (`mark` at every batch's start, `timing`) for one loop of `Turns`."""

    def __init__(self, turns: Turns, name: str) -> None:
        self.turns, self.name = turns, name

    def mark(self, batch_idx: int, device: torch.device) -> None:
        k = batch_idx - self.turns.warmup
        if k == 0:
            self.turns.arrive(self.name)
        elif k == self.turns.n:
            self.turns.finish(self.name)
        elif 0 < k < self.turns.n and k % self.turns.chunk == 0:
            self.turns.pass_turn(self.name)

    def timing(self) -> dict[str, float]:
        return self.turns.timing(self.name)


def run_in_turns(turns: Turns, jobs: dict[str, Callable[[], object]]) -> None:
    """Run each job (a loop that marks `turns.window(name)`) in its own thread; re-raise the
    first failure once all have ended."""
    errors: list[BaseException] = []

    def run(name: str, job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as error:
            errors.append(error)
        finally:
            turns.leave(name)

    threads = [threading.Thread(target=run, args=item, name=item[0]) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
