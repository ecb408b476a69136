"""The schema migrations (``NNNN_name.sql``), shipped as package data and read through
``importlib.resources`` by ``infrastructure.db.migrate`` (docs/adr/0020-installable-package.md)."""
