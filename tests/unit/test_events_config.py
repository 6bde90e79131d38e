"""KafkaConfig: environment, clear errors naming the variable, the password kept secret."""

from __future__ import annotations

import logging

import pytest

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import ConfigError

SECRET = "s3cr3t-pa55word"
SASL_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093, broker-2:9093",
    "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "chipq",
    "KAFKA_SASL_PASSWORD": SECRET,
    "SCHEMA_REGISTRY_URL": "https://registry:8081",
}


def test_defaults_without_environment() -> None:
    config = KafkaConfig.from_env({})
    assert config.bootstrap_servers == "127.0.0.1:9092"
    assert config.schema_registry_url is None
    assert config.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "client.id": "chipq",
        "security.protocol": "PLAINTEXT",
    }


def test_from_env_reads_every_variable_and_builds_the_librdkafka_dict() -> None:
    config = KafkaConfig.from_env(SASL_ENV)
    conf = config.librdkafka_config(**{"group.id": "g"})
    assert conf["bootstrap.servers"] == "broker-1:9093,broker-2:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "chipq"
    assert conf["sasl.password"] == SECRET
    assert conf["group.id"] == "g"
    assert config.schema_registry_config() == {"url": "https://registry:8081"}


def test_guide_constructor_form() -> None:
    assert KafkaConfig(bootstrap_servers="localhost:9092").bootstrap_servers == "localhost:9092"


def test_the_password_never_shows_in_repr_str_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    config = KafkaConfig.from_env(SASL_ENV)
    logging.getLogger("test").warning("config: %s / %r", config, config)
    for text in (repr(config), str(config), caplog.text, config.model_dump_json()):
        assert SECRET not in text


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "no-port-here"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "host:99999"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "MAGIC"}, "KAFKA_SASL_MECHANISM"),
        ({"SCHEMA_REGISTRY_URL": "registry:8081"}, "SCHEMA_REGISTRY_URL"),
        ({"KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "KAFKA_SSL_CA_LOCATION"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaConfig.from_env(env)
    assert str(caught.value).startswith(f"{variable}: ")


def test_sasl_without_credentials_is_an_error_that_hides_the_password() -> None:
    env = {**SASL_ENV, "KAFKA_SASL_USERNAME": ""}
    with pytest.raises(ConfigError) as caught:
        KafkaConfig.from_env(env)
    assert "KAFKA_SASL_USERNAME" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_constructor_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="security_protocol"):
        KafkaConfig(security_protocol="bogus")


# ------------------------------------------------ the environment through pydantic-settings


def test_the_variables_are_read_by_pydantic_settings_from_the_one_table() -> None:
    from pydantic_settings import BaseSettings

    from chipq_pipelines.events.config import ENV_VARS, KafkaEnvironment

    assert issubclass(KafkaEnvironment, BaseSettings)
    assert {name: field.validation_alias for name, field in KafkaEnvironment.model_fields.items()} == ENV_VARS
    assert set(ENV_VARS) == set(KafkaConfig.model_fields) - {"client_id"}


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from chipq_pipelines.events.config import ENV_VARS

    for variable in ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    for variable, value in SASL_ENV.items():
        monkeypatch.setenv(variable, value)
    assert KafkaConfig.from_env() == KafkaConfig.from_env(SASL_ENV)
    assert KafkaConfig.from_env().librdkafka_config()["sasl.password"] == SECRET


def test_variable_names_are_exact_and_blank_ones_keep_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from chipq_pipelines.events.config import ENV_VARS

    for variable in ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("kafka_bootstrap_servers", "lower-case:9092")  # not KAFKA_BOOTSTRAP_SERVERS
    monkeypatch.setenv("bootstrap_servers", "field-name:9092")  # the field's name is not a variable
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "   ")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "")
    assert KafkaConfig.from_env() == KafkaConfig()
    assert KafkaConfig.from_env({"KAFKA_BOOTSTRAP_SERVERS": " ", "KAFKA_SASL_MECHANISM": ""}) == KafkaConfig()


def test_a_given_mapping_is_the_whole_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-the-process:9092")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "mock://from-the-process")
    config = KafkaConfig.from_env({"KAFKA_SASL_USERNAME": "given"})
    assert config.bootstrap_servers == "127.0.0.1:9092"
    assert config.schema_registry_url is None
    assert config.sasl_username == "given"


def test_a_config_built_in_code_reads_no_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in SASL_ENV.items():
        monkeypatch.setenv(variable, value)
    config = KafkaConfig(bootstrap_servers="localhost:9092")
    assert config == KafkaConfig(bootstrap_servers="localhost:9092", security_protocol="PLAINTEXT")
    assert config.schema_registry_url is None and config.sasl_password is None


def test_the_settings_object_hides_the_password_too() -> None:
    from chipq_pipelines.events.config import KafkaEnvironment

    settings = KafkaEnvironment(**SASL_ENV)
    assert settings.sasl_password is not None
    assert SECRET not in repr(settings) and SECRET not in str(settings)


def test_a_bad_process_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigError) as caught:
        KafkaConfig.from_env()
    assert str(caught.value).startswith("KAFKA_SECURITY_PROTOCOL: ")
