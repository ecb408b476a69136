"""GPU marketplace adapters, one module per provider (``domain.marketplace.GpuProvider``)."""
