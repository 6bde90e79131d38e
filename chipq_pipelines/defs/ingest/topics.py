"""The Kafka topics as assets: where the raw events come from, and where the alerts go back to.

External assets (Dagster never materializes them): they put the topics in the
lineage, upstream of the raw assets that land them, and the quality topic
downstream of the alerts that chipq publishes to it, so the loop
(quality topic → raw/quality_events … ops/threshold_violation_events → quality
topic) is visible. Partitions and retention come from the declared topics file
(``chipq_pipelines/events/topics.yaml``), not from the cluster: definitions load
without a broker.
"""

from __future__ import annotations

import os

import dagster as dg

from chipq_pipelines.defs.shared import KAFKA_INSPECTIONS, KAFKA_QUALITY, OWNER, THRESHOLD_VIOLATIONS
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC, dlq_topic, load_topics


def _topic_asset(key: dg.AssetKey, variable: str, default: str, description: str, **kwargs: object) -> dg.AssetSpec:
    """The topic named by ``$variable`` (else ``default``) as an external asset, its declaration as metadata."""
    name = os.environ.get(variable, "").strip() or default
    declared = load_topics().spec_for(name)
    retention_ms = declared.config.get("retention.ms")
    metadata: dict[str, object] = {
        "topic": dg.MetadataValue.text(name),
        "partitions": dg.MetadataValue.int(declared.partitions),
        "replication_factor": dg.MetadataValue.int(declared.replication_factor),
        "dead_letter_topic": dg.MetadataValue.text(dlq_topic(name)),
    }
    if retention_ms is not None:
        metadata["retention_days"] = dg.MetadataValue.float(round(int(retention_ms) / 86_400_000, 3))
    return dg.AssetSpec(
        key,
        description=f"Kafka topic `{name}`: {description}",
        group_name="kafka",
        kinds={"kafka"},
        owners=[OWNER],
        metadata=metadata,
        **kwargs,  # type: ignore[arg-type]
    )


inspection_topic = _topic_asset(
    KAFKA_INSPECTIONS,
    "CHIPQ_INSPECTION_TOPIC",
    INSPECTION_TOPIC,
    "InspectionEvents (created, completed with defects) published by the inspection services.",
)
quality_topic = _topic_asset(
    KAFKA_QUALITY,
    "CHIPQ_QUALITY_TOPIC",
    QUALITY_TOPIC,
    "QualityEvents: assessments from the platform, and the THRESHOLD_VIOLATED / THRESHOLD_CLEARED "
    "events chipq publishes (so the alerts flow back into raw/quality_events).",
    deps=[THRESHOLD_VIOLATIONS],
)
