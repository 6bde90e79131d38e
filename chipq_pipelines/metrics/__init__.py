"""Prometheus metrics of the pipeline's health (``chipq metrics``): Kafka, the pipeline group, the analysts' view.

No Dagster here, and the writer's warehouse file is never opened.
"""
