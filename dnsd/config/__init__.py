"""Config: YAML with line marks -> validated, frozen model (dnsd.model). Entry point: load_config;
read_document gives a config file as plain data, for tools that write a variant of it."""
from dnsd.config.errors import ConfigError, Problem
from dnsd.config.build import load_config, parse_config_text
from dnsd.config.yamlnodes import read_document
from dnsd.config.zone import carry_serial

__all__ = ["ConfigError", "Problem", "carry_serial", "load_config", "parse_config_text", "read_document"]
