"""kiseki: fast experiment tracking. The client SDK and the wire models shared with the service."""

__version__ = "0.1.0"

__all__ = ["__version__"]
