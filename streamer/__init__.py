"""COBY streamer: exchange connectors, exact order books, and real-time sinks."""

__version__ = "0.1.0"
