"""The declared topics file: what the platform's topics are, and clear errors for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from chipq_pipelines.events.errors import TopicsFileError
from chipq_pipelines.events.topics import (
    EVENT_TOPICS,
    TOPICS_FILE,
    dlq_topic,
    load_topics,
    replication_factor_for,
)


def test_the_platforms_topics_are_declared_with_partitions_replication_and_retention() -> None:
    declared = load_topics()
    assert declared.path == TOPICS_FILE
    assert set(declared.names()) == {*EVENT_TOPICS, *(dlq_topic(t) for t in EVENT_TOPICS)}
    for topic in EVENT_TOPICS:
        events, dlq = declared.get(topic), declared.get(dlq_topic(topic))
        assert events is not None and dlq is not None
        assert events.partitions == 6 and dlq.partitions == 1
        assert events.replication_factor == 3 and events.config["min.insync.replicas"] == "2"
        assert int(events.config["retention.ms"]) == 7 * 24 * 3600 * 1000
        assert int(dlq.config["retention.ms"]) > int(events.config["retention.ms"])  # dead letters wait for a person


def test_the_file_ships_with_the_package() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["chipq_pipelines"]
    relative = TOPICS_FILE.relative_to(Path(__file__).resolve().parents[2] / "chipq_pipelines")
    assert any(relative.match(pattern) for pattern in patterns), patterns


def test_replication_follows_the_cluster() -> None:
    spec = load_topics().get(EVENT_TOPICS[0])
    assert spec is not None
    assert replication_factor_for(spec.replication_factor, brokers=1) == 1
    assert replication_factor_for(spec.replication_factor, brokers=5) == 3
    assert replication_factor_for(spec.replication_factor, brokers=1, override=2) == 2
    # acks=all keeps working with one replica away, and on one broker at all
    assert spec.with_replication(3).config["min.insync.replicas"] == "2"
    assert spec.with_replication(2).config["min.insync.replicas"] == "1"
    assert spec.with_replication(1).config["min.insync.replicas"] == "1"


def test_a_topic_the_file_does_not_declare_gets_the_defaults() -> None:
    declared = load_topics()
    spec = declared.spec_for("inspection-isolated-env", partitions=3)
    assert (spec.partitions, spec.replication_factor) == (3, 3)
    assert spec.config == {"min.insync.replicas": "2", "cleanup.policy": "delete"}
    assert declared.spec_for(EVENT_TOPICS[0], partitions=2).partitions == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topics: [", "is not valid YAML"),
        ("defaults: {}\n", "topics: Field required"),
        ("topics:\n  - name: a\n    partitions: 0\n", "topics[0].partitions: Input should be greater than 0"),
        ("topics:\n  - name: a b\n    partitions: 1\n", "topics[0].name: 'a b' is not a Kafka topic name"),
        ("topics:\n  - {name: a, partitions: 1}\n  - {name: a, partitions: 2}\n", "declared more than once: a"),
        (
            "topics:\n  - {name: a, partitions: 1, retention: 5}\n",
            "topics[0].retention: Extra inputs are not permitted",
        ),
    ],
)
def test_a_bad_file_names_itself_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(TopicsFileError) as caught:
        load_topics(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TopicsFileError, match="cannot be read"):
        load_topics(tmp_path / "nowhere.yaml")


def test_config_values_are_kafkas_text(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - {name: a, partitions: 1, config: {retention.ms: 1000, preallocate: true}}\n")
    assert load_topics(path).topics[0].config == {"retention.ms": "1000", "preallocate": "true"}
