"""Threshold rules (versioned YAML) and SPC: what counts as a quality violation.

No Dagster and no DuckDB here: the alerts domain (``defs/alerts``) reads the
marts, calls these functions and stores the violations in the outbox.
"""

from chipq_pipelines.rules.evaluate import Violation, evaluate_day, evaluate_lot, violation_event_id
from chipq_pipelines.rules.loader import RULES_ENV, RulesError, RuleSet, load_rules, parse_rules
from chipq_pipelines.rules.spc import Baseline, LotPoint, evaluate_spc, freeze_baseline

__all__ = [
    "RULES_ENV",
    "Baseline",
    "LotPoint",
    "RuleSet",
    "RulesError",
    "Violation",
    "evaluate_day",
    "evaluate_lot",
    "evaluate_spc",
    "freeze_baseline",
    "load_rules",
    "parse_rules",
    "violation_event_id",
]
