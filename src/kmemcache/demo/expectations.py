"""What the change claims, judged on the numbers of one run (never asserted)."""

from __future__ import annotations

import dataclasses

from .measure import paired_ratio
from .workload import DemoResult


@dataclasses.dataclass(frozen=True)
class Claim:
    """One expectation of the change, judged on the measured numbers."""

    text: str
    holds: bool
    evidence: str


def claims(result: DemoResult) -> list[Claim]:
    """The change's claims, checked against this run (never asserted)."""
    o0, o1, o2, o3 = (result.option(i) for i in range(4))
    align = result.config.align
    r30 = paired_ratio(o3.alloc_free_samples, o0.alloc_free_samples)
    r23 = paired_ratio(o2.alloc_free_samples, o3.alloc_free_samples)
    return [
        Claim(
            "option 3 costs no more space per context than option 0",
            o3.bytes_per_object <= o0.bytes_per_object,
            f"{o3.bytes_per_object:.0f} vs {o0.bytes_per_object:.0f} bytes",
        ),
        Claim(
            "option 3 costs no more time than option 0, beyond noise",
            r30[0] <= 1.0 + (r30[2] - r30[1]),
            f"{o3.ns_per_alloc_free:.0f} vs {o0.ns_per_alloc_free:.0f} ns per alloc+free; "
            f"per-round ratio {r30[0]:.2f} (quartiles {r30[1]:.2f} to {r30[2]:.2f})",
        ),
        Claim(
            "option 3 hands out no misaligned context",
            o3.misaligned == 0,
            f"{o3.misaligned} of {o3.contexts_checked}; XSAVE {o3.xsave}",
        ),
        Claim(
            f"option 1 pays at least the alignment ({align} bytes) per context over option 3",
            o1.bytes_per_object - o3.bytes_per_object >= align,
            f"{o1.bytes_per_object:.0f} - {o3.bytes_per_object:.0f} = "
            f"{o1.bytes_per_object - o3.bytes_per_object:.0f} bytes; "
            f"it asks for {o1.requested_bytes}",
        ),
        Claim(
            "option 2 pays for its extra calls",
            r23[0] > 1.0,
            f"{o2.ns_per_alloc_free:.0f} vs {o3.ns_per_alloc_free:.0f} ns per alloc+free; "
            f"per-round ratio {r23[0]:.2f} (quartiles {r23[1]:.2f} to {r23[2]:.2f}); "
            f"struct pmu {o2.pmu_struct_bytes} vs {o3.pmu_struct_bytes} bytes",
        ),
    ]


__all__ = ["Claim", "claims"]
