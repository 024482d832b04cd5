"""The bilevel engine: configuration, events, sessions, levels. No UI imports here."""

__version__ = "0.1.0"
