"""The WebSocket event feed: the feed itself, its cross-process bus and owner lookups."""
