"""KafkaResource: KafkaConfig's fields, defaults and variables, from the one table; the password kept out of repr."""

from __future__ import annotations

import dagster as dg
import pytest

from chipq_pipelines.defs.resources import KafkaResource, default_resources
from chipq_pipelines.events.config import ENV_VARS, KafkaConfig

SECRET = "s3cr3t-pa55word"
SASL_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "chipq",
    "KAFKA_SASL_PASSWORD": SECRET,
    "SCHEMA_REGISTRY_URL": "mock://resources",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_every_kafka_config_field_but_client_id_is_a_resource_field_with_its_default() -> None:
    resource_fields = KafkaResource.model_fields
    for name, field in KafkaConfig.model_fields.items():
        if name == "client_id":
            assert name not in resource_fields
            continue
        assert name in resource_fields, name
        assert resource_fields[name].default == field.default, name
        assert resource_fields[name].description == f"${ENV_VARS[name]}"
    assert KafkaResource().config() == KafkaConfig()


def test_default_resources_bind_the_same_variables_as_from_env(clean_env: pytest.MonkeyPatch) -> None:
    for variable, value in SASL_ENV.items():
        clean_env.setenv(variable, value)
    clean_env.setenv("KAFKA_SSL_CA_LOCATION", "  ")  # blank: unset, as in from_env
    kafka = default_resources()["kafka"]
    bound = {name: getattr(kafka, name) for name in ENV_VARS if isinstance(getattr(kafka, name), dg.EnvVar)}
    assert bound == {name: var for name, var in ENV_VARS.items() if var in SASL_ENV}
    assert all(isinstance(value, dg.EnvVar) and value == ENV_VARS[name] for name, value in bound.items())
    assert kafka.ssl_ca_location is None
    with kafka.process_config_and_initialize_cm() as resolved:  # EnvVars resolved as when a run starts
        assert resolved.config() == KafkaConfig.from_env()
        assert resolved.config().librdkafka_config()["sasl.password"] == SECRET
        assert SECRET not in repr(resolved) and SECRET not in str(resolved)


def test_the_password_is_not_in_the_resource_repr() -> None:
    kafka = KafkaResource(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="chipq", sasl_password=SECRET
    )
    assert SECRET not in repr(kafka) and SECRET not in str(kafka)
    assert kafka.config().sasl_password is not None
    assert kafka.config().sasl_password.get_secret_value() == SECRET


def test_empty_optional_fields_are_unset_and_bad_values_name_the_field() -> None:
    assert KafkaResource(schema_registry_url="", sasl_mechanism="").config() == KafkaConfig()
    with pytest.raises(ValueError, match="security_protocol"):
        KafkaResource(security_protocol="TLS").config()
