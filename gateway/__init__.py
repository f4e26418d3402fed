"""The I/O shell around the pure alarm core: transports, journal, sinks, notifiers, web."""

__version__ = "0.1.0"
