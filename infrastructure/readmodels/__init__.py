"""Read models: the projection runner, the generation store, rebuild and verify, and the queries
the doors read through (``queries/``)."""
