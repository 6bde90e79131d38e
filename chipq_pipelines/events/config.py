"""Kafka connection settings: one typed object, loaded from the environment.

``KafkaConfig(bootstrap_servers=...)`` for code, ``KafkaConfig.from_env()`` for
services. The SASL password is a ``SecretStr``: it never shows in ``repr``,
logs or error messages, and is only revealed in the librdkafka config dict.

``ENV_VARS`` is the one table of settings that come from the environment.
``from_env`` reads them with pydantic-settings (``KafkaEnvironment``, built from
that table) and validates them with ``KafkaConfig``; the Dagster ``KafkaResource``
takes its connection fields, defaults and variables from the same two places.
A ``KafkaConfig`` built in code reads no environment variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from chipq_pipelines.events.errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

#: ``KafkaConfig`` field -> environment variable: what ``from_env`` reads (through ``KafkaEnvironment``),
#: what errors name, and what the Dagster ``KafkaResource`` binds. ``client_id`` is set in code only.
ENV_VARS: dict[str, str] = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "schema_registry_url": "SCHEMA_REGISTRY_URL",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
}


class KafkaConfig(BaseModel):
    """How to reach Kafka (and optionally a Schema Registry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    schema_registry_url: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    client_id: str = "chipq"

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("must list at least one host:port")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://", "mock://")):
            raise ValueError(f"{value!r} must start with http://, https:// or mock://")
        return value

    @field_validator("security_protocol")
    @classmethod
    def _check_protocol(cls, value: str) -> str:
        upper = value.strip().upper()
        if upper not in SECURITY_PROTOCOLS:
            raise ValueError(f"{value!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
        return upper

    @field_validator("sasl_mechanism")
    @classmethod
    def _check_mechanism(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        upper = value.strip().upper()
        if upper not in SASL_MECHANISMS:
            raise ValueError(f"{value!r} is not one of {', '.join(SASL_MECHANISMS)}")
        return upper

    @field_validator("ssl_ca_location")
    @classmethod
    def _check_ca(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not Path(value).is_file():
            raise ValueError(f"no CA file at {value!r}")
        return value

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
            if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and (
                not self.sasl_username or self.sasl_password is None
            ):
                raise ValueError(f"sasl_username and sasl_password are required with SASL {self.sasl_mechanism}")
        return self

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaConfig:
        """Read the ``KAFKA_*`` and ``SCHEMA_REGISTRY_URL`` variables (unset or blank ones keep defaults).

        ``environ`` replaces ``os.environ`` (tests, a service's own mapping).
        """
        if environ is None:
            settings = KafkaEnvironment()
        else:  # every variable passed, absent ones as None, so that none is taken from os.environ
            settings = KafkaEnvironment(**{variable: environ.get(variable) for variable in ENV_VARS.values()})
        try:
            return cls(**settings.model_dump(exclude_none=True))
        except ConfigError as exc:
            fields = exc.variable.split(", ")
            variables = ", ".join(ENV_VARS.get(f, f) for f in fields)
            raise ConfigError(variables, exc.reason) from None

    def librdkafka_config(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka settings for a Producer/Consumer/AdminClient (secrets revealed here only)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(overrides)
        return conf

    def schema_registry_config(self) -> dict[str, Any]:
        """Settings for ``confluent_kafka.schema_registry.SchemaRegistryClient``."""
        if self.schema_registry_url is None:
            raise ConfigError("SCHEMA_REGISTRY_URL", "is not set")
        return {"url": self.schema_registry_url}


def _config_error(exc: ValidationError) -> ConfigError:
    """The first problem, named by its field; never echoes a secret."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:  # model-level rule (the SASL combination)
        return ConfigError("security_protocol, sasl_mechanism, sasl_username, sasl_password", message)
    if field == "sasl_password":
        message = "invalid value (not shown)"
    return ConfigError(field, message)


def is_secret(field: str) -> bool:
    """True for a ``KafkaConfig`` field that holds a secret (a ``SecretStr``: never printed)."""
    annotation = KafkaConfig.model_fields[field].annotation
    return SecretStr in (get_args(annotation) or (annotation,))


class _EnvironmentSettings(BaseSettings):
    """The base of ``KafkaEnvironment``: exact variable names; values passed in, else ``os.environ``."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)  # no .env file, no secrets directory


def _environment_fields() -> dict[str, Any]:
    """One field per ``ENV_VARS`` entry, aliased to its variable: the raw text, or ``None`` when unset or blank."""
    fields: dict[str, Any] = {}
    for field, variable in ENV_VARS.items():
        annotation = SecretStr | None if is_secret(field) else str | None
        fields[field] = (annotation, Field(default=None, validation_alias=variable))
    return fields


#: The variables of ``ENV_VARS`` as pydantic-settings reads them (the password as a ``SecretStr``).
#: ``KafkaConfig`` validates the values, so every error names the variable through ``ENV_VARS``.
KafkaEnvironment: type[_EnvironmentSettings] = create_model(
    "KafkaEnvironment", __base__=_EnvironmentSettings, __module__=__name__, **_environment_fields()
)
