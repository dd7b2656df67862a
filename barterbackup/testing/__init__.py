"""Test support shipped with the package (the txtorcon way).

- :mod:`barterbackup.testing.tornet`: a private Tor network on 127.0.0.1
  (four authorities plus client tors) for integration tests and the demo.
- :mod:`barterbackup.testing.faketor`: a fake of the ``txtorcon.Tor`` calls
  the Tor transport makes, computing onion addresses as Tor does.
- :mod:`barterbackup.testing.fakes`: other shared fakes.
"""
