"""Fit a run to a wall-clock budget (``--time_limit_minutes``).

After every epoch the trainer asks how many epochs in all the budget allows, given the time
spent so far and the duration of the last epoch. The answer never exceeds the planned
``--epochs`` and never drops below the epochs already done (then the run stops). When it
differs from the current length, the per-iteration schedules (lr, weight decay, teacher
momentum) and the per-epoch teacher temperature are rebuilt for the new length, so the run
still ends on the schedules' final values (lr at ``min_lr``, momentum at 1) instead of being
cut off half-way down its cosine. The configuration is never changed: the fitted length is a
new :class:`RunLength`, which the checkpoint records next to the flags the user gave.

The first epoch of a process is slower (compilation, cold caches, worker start-up), so its
duration only decides whether a second epoch fits at all; fitting starts after the second.
The budget belongs to one process: a resumed run gets a new budget from its restart, and its
plan is ``--epochs`` again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trainer.train.flags import TrainConfig

logger = logging.getLogger(__name__)


def affordable_epochs(
    done: int, planned: int, elapsed_s: float, epoch_s: float, limit_s: float
) -> int:
    """Total epochs that fit: ``done`` plus as many ``epoch_s``-long epochs as the time left allows.

    Clamped to ``[done, planned]``; no limit (``limit_s <= 0``) gives ``planned``.
    """
    if limit_s <= 0:
        return planned
    if epoch_s <= 0:
        raise ValueError(f"epoch_s must be > 0, got {epoch_s}")
    more = int(max(limit_s - elapsed_s, 0.0) // epoch_s)
    return max(done, min(planned, done + more))


@dataclass(frozen=True)
class RunLength:
    """The epochs that set the schedules' lengths: as asked (:meth:`of`) or fitted to a budget."""

    epochs: int
    warmup_epochs: int
    warmup_teacher_temp_epochs: int

    @classmethod
    def of(cls, cfg: TrainConfig) -> RunLength:
        return cls(cfg.epochs, cfg.warmup_epochs, cfg.warmup_teacher_temp_epochs)


@dataclass
class TimeBudget:
    """Tracks a run against its budget and decides its length after each epoch."""

    limit_s: float
    started_s: float
    planned_epochs: int
    warmup_epochs: int
    warmup_teacher_temp_epochs: int
    epochs_this_process: int = 0
    durations_s: list[float] = field(default_factory=list)

    @classmethod
    def for_config(cls, cfg: TrainConfig, started_s: float) -> TimeBudget:
        return cls(
            cfg.time_limit_minutes * 60.0,
            started_s,
            cfg.epochs,
            cfg.warmup_epochs,
            cfg.warmup_teacher_temp_epochs,
        )

    def epochs_after(self, done: int, now_s: float, epoch_s: float, pending_s: float = 0.0) -> int:
        """Total epochs to run, given ``done`` finished epochs and the last one's duration.

        ``pending_s`` is work still due for the finished epoch (its checkpoint and probes),
        counted as spent. Past the first epoch, the mean duration of the epochs since the
        second one is used, so one slow epoch (a probe or checkpoint epoch) does not flip the
        plan back and forth.
        """
        self.epochs_this_process += 1
        elapsed = now_s - self.started_s + pending_s
        if self.epochs_this_process == 1:  # warm-up epoch: only decide whether to go on
            total = affordable_epochs(done, self.planned_epochs, elapsed, epoch_s, self.limit_s)
            return self.planned_epochs if total > done else done
        self.durations_s.append(epoch_s)
        mean_s = sum(self.durations_s) / len(self.durations_s)
        return affordable_epochs(done, self.planned_epochs, elapsed, mean_s, self.limit_s)

    def fit(self, epochs: int) -> RunLength:
        """The run's new length: ``epochs`` with the planned warm-ups, clipped so that at least the
        last epoch follows the cosine (the lr warm-up never takes the whole run)."""
        if not 1 <= epochs <= self.planned_epochs:
            raise ValueError(f"epochs must be in [1, {self.planned_epochs}], got {epochs}")
        return RunLength(
            epochs,
            min(self.warmup_epochs, epochs - 1),
            min(self.warmup_teacher_temp_epochs, epochs),
        )
