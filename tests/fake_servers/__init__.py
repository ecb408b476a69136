"""Fake servers for the paid outside services (vast.ai, io.net, Stripe, AfterDark, OCI, an
Ethereum JSON-RPC node): real HTTP servers on loopback that follow the real APIs as written in
the fact sheets, errors included, so the real clients are what the tests exercise."""
