"""One presenter per answer: typed msgspec Structs built from domain and read-model data.

REST returns them (so OpenAPI shows them), and the other doors (agents/MCP, CLIs, WebSocket,
gRPC conversion) render the same Struct with ``msgspec.to_builtins`` where they answer the
same thing (ADR 0025). Money is a USD string with six decimals; times are ISO 8601 strings.
"""
