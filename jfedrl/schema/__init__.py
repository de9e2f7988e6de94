"""How a configuration is described, read and checked; imports no jax.

`convert` maps the frozen dataclass tree to and from YAML, nested mappings and
dotted flag paths; `checks` holds `ConfigError` and the small `require*` helpers
every section's checks use.
"""
