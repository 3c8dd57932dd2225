"""honeytrap: a low-interaction honeypot that serves unserved ports on demand."""

__version__ = "2.0.0"
