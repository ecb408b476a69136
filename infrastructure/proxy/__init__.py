"""The GPU proxy's outgoing side: where a request may go (``targets``) and how it is sent
(``forwarder``)."""
