"""Configuration: the schema, parsing and validation, and the registries of configurable parts."""
