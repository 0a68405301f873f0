"""What ``kmemcache demo`` runs: its settings and their defaults."""

from __future__ import annotations

import dataclasses

from .lbr_layout import X86_LBR_CACHE_ALIGN, X86_LBR_CACHE_SIZE

#: Defaults: the kernel's x86_lbr object, and counts that make the default run
#: take about ten seconds.
DEFAULT_SIZE = X86_LBR_CACHE_SIZE
DEFAULT_ALIGN = X86_LBR_CACHE_ALIGN
DEFAULT_LIVE = 4096
DEFAULT_TASKS = 600_000
DEFAULT_ROUNDS = 30
#: How far past a 64-byte boundary the stand-alone fault check puts its buffer.
FAULT_CHECK_MISALIGN = 8


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What to run.

    Args:
        size: bytes of PMU data per task context.
        align: the alignment the contexts need (XSAVE needs 64).
        live: tasks alive at once, per option.
        tasks: tasks created and exited per option over all rounds (and as
            many alloc+free pairs).
        rounds: timed rounds; each option runs ``tasks / rounds`` of each loop
            per round.
        seed: seed of the random choice of which task exits.
    """

    size: int = DEFAULT_SIZE
    align: int = DEFAULT_ALIGN
    live: int = DEFAULT_LIVE
    tasks: int = DEFAULT_TASKS
    rounds: int = DEFAULT_ROUNDS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "align", "live", "tasks", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if self.align & (self.align - 1):
            raise ValueError(f"align must be a power of two, not {self.align}")

    @property
    def steps_per_round(self) -> int:
        """Tasks created and exited (and alloc+free pairs) per option in one round."""
        return max(1, self.tasks // self.rounds)


__all__ = [
    "DEFAULT_ALIGN",
    "DEFAULT_LIVE",
    "DEFAULT_ROUNDS",
    "DEFAULT_SIZE",
    "DEFAULT_TASKS",
    "FAULT_CHECK_MISALIGN",
    "DemoConfig",
]
