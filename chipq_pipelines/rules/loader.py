"""Load and validate the threshold rules file (YAML), naming the line of any mistake.

The shipped file is ``chipq_pipelines/rules/rules.yaml``; ``CHIPQ_RULES`` points at
another one. Validation walks the YAML node tree, so every error says
``<file>:<line>: <where>: <what is wrong>``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from chipq_pipelines.errors import ChipqError

RULES_ENV = "CHIPQ_RULES"
LEVELS = ("WARNING", "CRITICAL")
DIRECTIONS = ("below", "above")
LOT_METRICS = ("mean_quality_score", "min_quality_score", "pass_rate", "defect_density", "critical_defects")
DAY_METRICS = ("defect_rate",)
SPC_RULES = (
    "spc_we1_beyond_3sigma",
    "spc_we2_2of3_beyond_2sigma",
    "spc_we3_4of5_beyond_1sigma",
    "spc_we4_8_in_a_row",
    "spc_u_chart_defects_per_chip",
    "spc_p_chart_failing_fraction",
)


class RulesError(ChipqError, ValueError):
    """The rules file is malformed; the message names the file and line."""

    def __init__(self, source: str, line: int | None, where: str, reason: str) -> None:
        location = f"{source}:{line}" if line else source
        super().__init__(f"{location}: {where}: {reason}" if where else f"{location}: {reason}")
        self.source = source
        self.line = line
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class ThresholdRule:
    """A fixed limit on one mart metric, with a limit per alert level."""

    rule: str
    metric: str
    direction: str
    levels: dict[str, float]
    per_defect_type: dict[str, dict[str, float]] = field(default_factory=dict)
    description: str = ""

    def limits_for(self, defect_type: str | None = None) -> dict[str, float]:
        if defect_type is not None and defect_type in self.per_defect_type:
            return self.per_defect_type[defect_type]
        return self.levels

    def breaches(self, observed: float, limit: float) -> bool:
        return observed < limit if self.direction == "below" else observed > limit


@dataclass(frozen=True)
class SpcBaselineValues:
    """Frozen SPC centre lines: lot-mean score (and its sigma), defects per chip, failing fraction.

    ``u_sigma_z`` / ``p_sigma_z`` are Laney's over-dispersion factors of the u- and
    p-chart (1 = plain Poisson / binomial); None = derive them from the baseline's lots.
    """

    mean_score: float
    sigma_score: float
    u_bar: float
    p_bar: float
    u_sigma_z: float | None = None
    p_sigma_z: float | None = None


@dataclass(frozen=True)
class SpcSettings:
    enabled: bool = True
    min_baseline_lots: int = 20
    baseline_lots: int = 30
    min_sigma: float = 0.005
    #: WE4 counts a lot as "below" only under mu - this many sigma (0 = the textbook centre line).
    we4_margin_sigma: float = 0.5
    level: str = "WARNING"
    rules: tuple[str, ...] = SPC_RULES
    baseline: SpcBaselineValues | None = None


@dataclass(frozen=True)
class RuleSet:
    """The whole rules file: its version, fixed lot and day rules, and SPC settings."""

    version: str
    source: str
    lot_rules: tuple[ThresholdRule, ...]
    day_rules: tuple[ThresholdRule, ...]
    spc: SpcSettings
    digest: str = ""

    @property
    def rule_names(self) -> list[str]:
        names = [r.rule for r in self.lot_rules + self.day_rules]
        return names + (list(self.spc.rules) if self.spc.enabled else [])


def shipped_rules_text() -> str:
    return resources.files("chipq_pipelines.rules").joinpath("rules.yaml").read_text(encoding="utf-8")


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The rules in ``path``, else in ``$CHIPQ_RULES``, else the shipped ``rules.yaml``."""
    path = path or os.environ.get(RULES_ENV) or None
    if path is None:
        return parse_rules(shipped_rules_text(), "chipq_pipelines/rules/rules.yaml")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        where = f"{RULES_ENV}={path}" if os.environ.get(RULES_ENV) == str(path) else str(path)
        raise RulesError(where, None, "", f"cannot read the rules file ({exc.strerror or exc})") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate rules YAML; raises ``RulesError`` naming the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RulesError(source, mark.line + 1 if mark else None, "", f"invalid YAML: {exc.problem}") from None
    if root is None:
        raise RulesError(source, 1, "", "the file is empty")
    parser = _Parser(source)
    top = parser.mapping(root, "", required={"version"}, allowed={"version", "lot_rules", "day_rules", "spc"})
    version_node = top["version"]
    version = parser.scalar(version_node, "version")
    if not str(version).strip():
        raise RulesError(source, _line(version_node), "version", "must not be empty")
    lot_rules = tuple(parser.rules(top.get("lot_rules"), "lot_rules", LOT_METRICS, per_type=False))
    day_rules = tuple(parser.rules(top.get("day_rules"), "day_rules", DAY_METRICS, per_type=True))
    names = [r.rule for r in lot_rules + day_rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RulesError(source, _line(root), "", f"rule names must be unique; repeated: {', '.join(duplicates)}")
    spc = parser.spc(top.get("spc"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return RuleSet(str(version), source, lot_rules, day_rules, spc, digest)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node, where: str, reason: str) -> RulesError:
        return RulesError(self.source, _line(node), where, reason)

    def mapping(
        self, node: yaml.Node, where: str, *, required: set[str] = frozenset(), allowed: set[str] | None = None
    ) -> dict[str, yaml.Node]:  # type: ignore[assignment]
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where or "top level", "must be a mapping (key: value)")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                raise self.fail(key_node, _join(where, key), "appears twice")
            if allowed is not None and key not in allowed:
                raise self.fail(
                    key_node, _join(where, key), f"unknown key; expected one of {', '.join(sorted(allowed))}"
                )
            out[key] = value_node
        for key in sorted(required - out.keys()):
            raise self.fail(node, where or "top level", f"missing required key {key!r}")
        return out

    def scalar(self, node: yaml.Node, where: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, "must be a single value")
        return yaml.safe_load(yaml.serialize(node))

    def number(self, node: yaml.Node, where: str, *, low: float | None = None) -> float:
        value = self.scalar(node, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, where, f"must be a number, not {value!r}")
        if low is not None and value < low:
            raise self.fail(node, where, f"must be >= {low}, not {value!r}")
        return float(value)

    def text(self, node: yaml.Node, where: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.scalar(node, where)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, where, f"must be text, not {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(node, where, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def levels(self, node: yaml.Node, where: str, direction: str) -> dict[str, float]:
        items = self.mapping(node, where, allowed=set(LEVELS))
        if not items:
            raise self.fail(node, where, "needs a limit for WARNING and/or CRITICAL")
        levels = {level: self.number(n, _join(where, level), low=0.0) for level, n in items.items()}
        if len(levels) == 2:
            warning, critical = levels["WARNING"], levels["CRITICAL"]
            worse = critical <= warning if direction == "below" else critical >= warning
            if not worse:
                raise self.fail(node, where, f"CRITICAL ({critical}) must be beyond WARNING ({warning}) ({direction})")
        return levels

    def rules(self, node: yaml.Node | None, where: str, metrics: tuple[str, ...], *, per_type: bool):
        if node is None:
            return
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, where, "must be a list of rules")
        allowed = {"rule", "metric", "direction", "levels", "description"} | (
            {"per_defect_type"} if per_type else set()
        )
        for index, item in enumerate(node.value):
            here = f"{where}[{index}]"
            fields = self.mapping(item, here, required={"rule", "metric", "direction", "levels"}, allowed=allowed)
            name = self.text(fields["rule"], f"{here}.rule")
            if name.startswith("spc_"):
                raise self.fail(fields["rule"], f"{here}.rule", "the spc_ prefix is reserved for SPC rules")
            here = f"{where}[{name}]"
            metric = self.text(fields["metric"], f"{here}.metric", metrics)
            direction = self.text(fields["direction"], f"{here}.direction", DIRECTIONS)
            levels = self.levels(fields["levels"], f"{here}.levels", direction)
            by_type: dict[str, dict[str, float]] = {}
            if "per_defect_type" in fields:
                types = self.mapping(fields["per_defect_type"], f"{here}.per_defect_type")
                by_type = {t: self.levels(n, f"{here}.per_defect_type.{t}", direction) for t, n in types.items()}
            description = self.text(fields["description"], f"{here}.description") if "description" in fields else ""
            yield ThresholdRule(name, metric, direction, levels, by_type, description)

    def spc(self, node: yaml.Node | None) -> SpcSettings:
        if node is None:
            return SpcSettings(enabled=False)
        keys = {
            "enabled", "min_baseline_lots", "baseline_lots", "min_sigma", "we4_margin_sigma", "level", "rules",
            "baseline",
        }  # fmt: skip
        fields = self.mapping(node, "spc", allowed=keys)
        settings: dict[str, Any] = {}
        if "enabled" in fields:
            enabled = self.scalar(fields["enabled"], "spc.enabled")
            if not isinstance(enabled, bool):
                raise self.fail(fields["enabled"], "spc.enabled", f"must be true or false, not {enabled!r}")
            settings["enabled"] = enabled
        for key in ("min_baseline_lots", "baseline_lots"):
            if key in fields:
                value = self.number(fields[key], f"spc.{key}", low=1)
                if value != int(value):
                    raise self.fail(fields[key], f"spc.{key}", f"must be a whole number, not {value}")
                settings[key] = int(value)
        if settings.get("min_baseline_lots", 20) < 20:
            raise self.fail(fields["min_baseline_lots"], "spc.min_baseline_lots", "must be at least 20 lots")
        if settings.get("baseline_lots", 30) < settings.get("min_baseline_lots", 20):
            raise self.fail(fields.get("baseline_lots", node), "spc.baseline_lots", "must be >= min_baseline_lots")
        if "min_sigma" in fields:
            settings["min_sigma"] = self.number(fields["min_sigma"], "spc.min_sigma", low=0.0)
        if "we4_margin_sigma" in fields:
            settings["we4_margin_sigma"] = self.number(fields["we4_margin_sigma"], "spc.we4_margin_sigma", low=0.0)
        if "level" in fields:
            settings["level"] = self.text(fields["level"], "spc.level", LEVELS)
        if "rules" in fields:
            rules_node = fields["rules"]
            if not isinstance(rules_node, yaml.SequenceNode):
                raise self.fail(rules_node, "spc.rules", "must be a list of SPC rule names")
            settings["rules"] = tuple(
                self.text(n, f"spc.rules[{i}]", SPC_RULES) for i, n in enumerate(rules_node.value)
            )
        if "baseline" in fields:
            required = {"mean_score", "sigma_score", "u_bar", "p_bar"}
            values = self.mapping(
                fields["baseline"], "spc.baseline", required=required, allowed=required | {"u_sigma_z", "p_sigma_z"}
            )
            numbers = {
                k: self.number(n, f"spc.baseline.{k}", low=1.0 if k.endswith("sigma_z") else 0.0)
                for k, n in values.items()
            }
            if numbers["p_bar"] > 1 or numbers["mean_score"] > 1:
                raise self.fail(fields["baseline"], "spc.baseline", "mean_score and p_bar must be within [0, 1]")
            # A configured baseline has no lots to estimate over-dispersion from: plain Poisson / binomial unless set.
            numbers.setdefault("u_sigma_z", 1.0)
            numbers.setdefault("p_sigma_z", 1.0)
            settings["baseline"] = SpcBaselineValues(**numbers)
        return SpcSettings(**settings)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
