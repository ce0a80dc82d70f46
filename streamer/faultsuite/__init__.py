"""``coby faults``: fault scenarios run end to end against real servers, with exact tick accounting.

- :mod:`.servers`: PostgreSQL, Redis and a slowing TCP proxy the suite starts, stops, kills and slows;
- :mod:`.faults`: exchange-side fault plans (disconnect storms, gaps, checksum failures, garbage);
- :mod:`.accounting`: what the exchanges sent against what PostgreSQL holds;
- :mod:`.scenarios`: the scenarios; :mod:`.runner`: runs them.
"""
