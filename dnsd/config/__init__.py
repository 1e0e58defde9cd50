"""Config: YAML with line marks -> validated, frozen model (dnsd.model). Entry point: load_config."""
from dnsd.config.errors import ConfigError, Problem
from dnsd.config.build import load_config, parse_config_text
from dnsd.config.zone import carry_serial

__all__ = ["ConfigError", "Problem", "carry_serial", "load_config", "parse_config_text"]
