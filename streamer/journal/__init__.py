"""The durability journal: every received frame is appended here before it is processed.

See :mod:`streamer.journal.log` for the file format and
:mod:`streamer.journal.records` for what is recorded.
"""
