"""Configuration: a TOML file, validated strictly into a `Config`."""

from runtime.config.loader import load_config, parse_config
from runtime.config.schema import AgentSpec, Config, ConfigError

__all__ = ["AgentSpec", "Config", "ConfigError", "load_config", "parse_config"]
