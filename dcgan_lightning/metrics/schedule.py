"""When a run evaluates: by training images shown, or as often as a share of the wall time allows,
and always after its last batch (so metrics.json and the best checkpoint describe its end).

Counted in training batches, the same on every rank. The fixed schedules (`every_n_kimg`,
`every_n_epochs`) depend on the batch and epoch counts alone. The automatic one (neither set)
plans the next evaluation from measured times: rank 0's plan, broadcast by the caller, so every
rank validates after the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FIRST_EVAL_FRACTION = 0.1  # automatic: the first evaluation, before any cost is known, 10% in


@dataclass
class EvaluationSchedule:
    """`every_n_kimg`: evaluate each time the images shown (all ranks) cross a multiple of it;
    `every_n_epochs`: after every n-th epoch. Neither: automatic, evaluations kept to `max_share`
    of the wall time, one reserved for the end.

    The automatic plan after each evaluation: with E seconds spent evaluating so far, e the last
    evaluation's cost and W the wall time, the next one comes once the wall time reaches
    (E + 2e) / max_share - 2e, so that it and the final evaluation still fit in the share, and not
    before e (1 - max_share) / max_share more seconds of training (no bursts to catch up); none
    when the final evaluation would come less than half a gap after it. The first one comes 10%
    into the run, before any cost is known: a run shorter than ~20 evaluations spends more than
    the share (the first and the final evaluation always run).
    """

    images_per_batch: int
    every_n_kimg: float | None = None
    every_n_epochs: int | None = None
    max_share: float = 0.1
    next_batch: int = 0  # automatic: the batch count after which the next evaluation runs
    evaluations: list[int] = field(default_factory=list)  # batch counts evaluated at
    eval_seconds: float = 0.0
    wall_offset: float = 0.0  # wall seconds of the sessions before a resume
    total_batches: float = math.inf  # the run's planned batches

    def __post_init__(self) -> None:
        if self.every_n_kimg is not None and self.every_n_kimg <= 0:
            raise ValueError(f"metrics.every_n_kimg must be > 0 or null, got {self.every_n_kimg}")
        if self.every_n_epochs is not None and self.every_n_epochs < 1:
            raise ValueError(f"metrics.eval_every_n_epochs must be >= 1, got {self.every_n_epochs}")
        if self.every_n_kimg is not None and self.every_n_epochs is not None:
            raise ValueError("set metrics.every_n_kimg or metrics.eval_every_n_epochs, not both")
        if not 0 < self.max_share < 1:
            raise ValueError(f"metrics.max_share must be in (0, 1), got {self.max_share}")

    @property
    def automatic(self) -> bool:
        return self.every_n_kimg is None and self.every_n_epochs is None

    def start(self, total_batches: float) -> None:
        """Automatic: the first evaluation 10% into the run (not before the first batch)."""
        self.total_batches = total_batches
        if self.automatic and not self.evaluations:
            first = FIRST_EVAL_FRACTION * total_batches
            self.next_batch = max(1, math.ceil(first)) if math.isfinite(first) else 1

    def kimg(self, batches: int) -> float:
        return batches * self.images_per_batch / 1000

    def due(self, batches: int, last: bool, epochs_ended: int | None = None) -> bool:
        """Evaluate after `batches` batches? `last`: the run's last batch; `epochs_ended`: the
        epochs completed with this batch, when it ends one (else None). No collective."""
        if last:
            return True
        if self.every_n_epochs is not None:
            return epochs_ended is not None and epochs_ended % self.every_n_epochs == 0
        if self.every_n_kimg is None:
            return batches >= self.next_batch
        every = self.every_n_kimg * 1000
        before = (batches - 1) * self.images_per_batch
        return math.floor(batches * self.images_per_batch / every) > math.floor(before / every)

    def record(self, batches: int, seconds: float) -> None:
        """An evaluation after `batches` batches took `seconds`."""
        self.evaluations.append(batches)
        self.eval_seconds += seconds

    def plan(self, batches: int, last_seconds: float, wall_seconds: float) -> int:
        """Automatic: the batch count of the next evaluation, from the last one's cost and the
        training time per batch so far (rank 0's clock; the caller broadcasts the result)."""
        train_seconds = max(wall_seconds - self.eval_seconds, 1e-9)
        per_batch = train_seconds / max(batches, 1)
        reserve = 2 * last_seconds  # the next evaluation and the final one
        target_wall = max(
            (self.eval_seconds + reserve) / self.max_share - reserve,
            wall_seconds + last_seconds * (1 - self.max_share) / self.max_share,
        )
        gap = max(1, math.ceil((target_wall - wall_seconds) / per_batch))
        if batches + 1.5 * gap > self.total_batches:  # the final evaluation comes soon enough
            return batches + 2 * gap
        return batches + gap

    def summary(self, wall_seconds: float) -> str:
        """The end-of-run line: how many evaluations, where, and their share of the wall time."""
        share = self.eval_seconds / wall_seconds if wall_seconds > 0 else 0.0
        where = ", ".join(f"{self.kimg(b):g}" for b in self.evaluations)
        how = f"automatic, max_share={self.max_share:g}"
        if self.every_n_kimg is not None:
            how = f"every {self.every_n_kimg:g} kimg"
        elif self.every_n_epochs is not None:
            how = f"every {self.every_n_epochs} epochs"
        return (
            f"Evaluation took {self.eval_seconds:.1f} s of {wall_seconds:.1f} s wall time "
            f"({100 * share:.1f}%): {len(self.evaluations)} evaluations ({how}) at kimg [{where}]"
        )

    def state_dict(self, wall_seconds: float) -> dict:
        """What a resumed run needs to continue the plan and the share's accounting."""
        return {
            "next_batch": self.next_batch,
            "evaluations": list(self.evaluations),
            "eval_seconds": self.eval_seconds,
            "wall_seconds": wall_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = state["next_batch"]
        self.evaluations = list(state["evaluations"])
        self.eval_seconds = state["eval_seconds"]
        self.wall_offset = state["wall_seconds"]
