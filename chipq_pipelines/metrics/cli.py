"""``chipq metrics``: serve the pipeline's health to Prometheus."""

from __future__ import annotations

import signal
import threading

import click


@click.command("metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=9465, show_default=True, help="Port of /metrics.")
@click.option(
    "--addr",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 in a container that Prometheus scrapes from outside).",
)
@click.option(
    "--cache-seconds",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Serve one reading of Kafka and the snapshot to scrapes this close together.",
)
def metrics(port: int, addr: str, cache_seconds: float) -> None:
    """Serve the pipeline's health on http://ADDR:PORT/metrics until Ctrl-C or SIGTERM.

    Read at each scrape from Kafka (KAFKA_BOOTSTRAP_SERVERS: watermarks of
    CHIPQ_INSPECTION_TOPIC and CHIPQ_QUALITY_TOPIC, their .dlq topics, and the
    offsets of the CHIPQ_PIPELINE_GROUP group, default chipq-dagster) and from the
    analysts' view (CHIPQ_ANALYST_SNAPSHOT, default $CHIPQ_HOME/analytics.duckdb,
    opened read-only; the writer's warehouse is never touched).

    \b
    Metrics (docs/monitoring.md has them all):
      chipq_pipeline_lag_records{topic,partition}   records the pipeline group has not consumed
      chipq_snapshot_age_seconds                     seconds since the analysts' view was published
      chipq_events_landed_total{topic}               events landed (as of the view)
      chipq_events_rejected_total{topic}             records rejected into ops.rejected_events
      chipq_alerts_published_total{level}            THRESHOLD_VIOLATED events acknowledged by Kafka
      chipq_offset_gap_records{topic}                records lost before landing, not acknowledged
      chipq_dlq_records{topic}                       records in <topic>.dlq
      chipq_metrics_source_up{source}                0 when kafka or the snapshot could not be read

    \b
    Example (deploy/prometheus/ has a scrape config and alerting rules):
      chipq metrics --port 9465 &
      curl -s localhost:9465/metrics | grep chipq_pipeline_lag
    """
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.errors import ConfigError
    from chipq_pipelines.events.prometheus import serve_metrics
    from chipq_pipelines.metrics.collector import PipelineCollector
    from chipq_pipelines.metrics.readings import KafkaReader, PipelineTargets

    try:
        config = KafkaConfig.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    targets = PipelineTargets.from_env()
    kafka = KafkaReader(config, targets.group)
    try:
        server = serve_metrics(PipelineCollector(targets, kafka, cache_seconds=cache_seconds), port, addr)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {addr}:{port}: {exc.strerror or exc}") from exc
    click.echo(
        f"serving chipq metrics on http://{addr}:{server.port}/metrics "
        f"(topics {', '.join(targets.topics)}; group {targets.group}; snapshot {targets.snapshot_path})",
        err=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.close()
        kafka.close()
