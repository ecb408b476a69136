"""Live streams over WebSocket (``/ws``): ledger events per user, and streaming inference."""
