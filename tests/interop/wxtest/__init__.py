"""Black-box interop harness for Waxwing.

The scenarios in ``tests/interop/test_*.py`` know nothing of the server's
internals: they start the real ``waxwing`` binary (or, with
``WAXWING_TEST_SUBJECT=prosody``, a Prosody) on ephemeral loopback ports with
a private data directory, and talk to it with slixmpp or with raw sockets.

Modules:

- ``subjects``: starting and stopping the server under test, its CLI.
- ``client``: a thin wrapper around ``slixmpp.ClientXMPP`` whose waits are
  all events/futures bounded by ``STEP_TIMEOUT`` (no sleeps).
- ``raw``: a socket + ssl XMPP stream for transcript-level checks.
- ``scram``: a minimal SCRAM client and TLS channel-binding helpers.
"""

import os

# Upper bound for one protocol step (a login, an IQ round trip, a stanza that
# must arrive). Generous because CI runs on 2 cores with two xdist workers.
STEP_TIMEOUT = float(os.environ.get("WAXWING_TEST_STEP_TIMEOUT", "30"))

# Upper bound for the server to print `waxwing: ready`.
STARTUP_TIMEOUT = float(os.environ.get("WAXWING_TEST_STARTUP_TIMEOUT", "60"))

DOMAIN = "localhost"
