"""acr-mirror: move a fleet's container images into a private registry and rewrite every reference."""

__version__ = "0.2.0"
