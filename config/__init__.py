"""Configuration: the settings schema and its TOML loader."""

from config.settings import ConfigError, Settings, load, parse_duration, parse_listen, parse_size

__all__ = ["ConfigError", "Settings", "load", "parse_duration", "parse_listen", "parse_size"]
