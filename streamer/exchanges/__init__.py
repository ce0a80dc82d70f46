"""Per-exchange protocol code. Each exchange package has a ``mapper`` module
that turns raw frames into normalized events without doing any I/O."""
