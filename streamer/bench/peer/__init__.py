"""The ``peer`` benchmark suite: cryptofeed on the same recorded frames as COBY, in the same run.

* :mod:`.frames`: a capture's frames looped N times, and its REST bodies by URL.
* :mod:`.cryptofeed_run`: cryptofeed's own feed handler over those frames, no network
  (one process per run; cryptofeed is the optional ``bench`` extra).
* :mod:`.suite`: runs cryptofeed (no-op and PostgreSQL+Redis backends) and
  ``coby capture replay`` on each capture and writes the figures and ratios.
"""
