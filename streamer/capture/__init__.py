"""Recorded exchange sessions (``coby-capture/1``): reading, writing and replaying them.

``reader`` and ``writer`` depend only on the standard library and orjson;
``replay`` serves a capture through :mod:`streamer.local.server`. Import the
submodule you need (``from streamer.capture.reader import load_capture``).
"""
