"""Deterministic simulator, Byzantine behaviours and Twins testing for the consensus core.

No Ray here either: everything runs in one process from a seed.

Example:
    >>> from bft_ray.sim import SimConfig, Simulation
    >>> Simulation(SimConfig(seed=3, max_ticks=100)).run().ok
    True
"""

from .byzantine import BEHAVIORS, Behavior, make_behavior
from .invariants import SAFETY_KINDS, InvariantChecker, Violation
from .network import Crash, NetworkConfig, Partition, SimConfig, SimResult, Simulation

__all__ = [
    "BEHAVIORS",
    "SAFETY_KINDS",
    "Behavior",
    "Crash",
    "InvariantChecker",
    "NetworkConfig",
    "Partition",
    "SimConfig",
    "SimResult",
    "Simulation",
    "Violation",
    "make_behavior",
]
