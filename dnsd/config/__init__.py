"""Config: YAML with line marks -> validated, frozen model (dnsd.model). Entry point: load_config."""
from dnsd.config.errors import ConfigError, Problem
from dnsd.config.build import load_config, parse_config_text

__all__ = ["ConfigError", "Problem", "load_config", "parse_config_text"]
