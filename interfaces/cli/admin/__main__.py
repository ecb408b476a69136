"""``python -m interfaces.cli.admin``."""

from interfaces.cli.admin.main import main

raise SystemExit(main())
