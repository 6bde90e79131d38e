"""A realistic, deterministic fab event generator, and its publisher (``chipq simulate``).

``generate`` builds the stream (no Kafka); ``publish_simulation`` sends it;
``simulate_command`` is what the CLI calls.
"""

from chipq_pipelines.simulate.excursions import Excursion, GroundTruth, LotStats
from chipq_pipelines.simulate.generator import DEFAULT_START, Simulation, SimulationConfig, generate
from chipq_pipelines.simulate.publish import PublishReport, publish_simulation, simulate_command, write_truth
from chipq_pipelines.simulate.stream import MessShares, PoisonRecord, StreamCounts

__all__ = [
    "DEFAULT_START",
    "Excursion",
    "GroundTruth",
    "LotStats",
    "MessShares",
    "PoisonRecord",
    "PublishReport",
    "Simulation",
    "SimulationConfig",
    "StreamCounts",
    "generate",
    "publish_simulation",
    "simulate_command",
    "write_truth",
]
