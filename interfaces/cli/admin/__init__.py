"""``aiserve-gpuproxy-admin``: the operator CLI (users, credits, audit, replay, projections).

One module per concern (users, usage, ledger, statements, projections), the parser and entry
point in ``main``, shared pieces in ``base``."""

from interfaces.cli.admin.main import build_parser, main

__all__ = ["build_parser", "main"]
