"""The gRPC interface (grpclib + betterproto): ``protos/gpuproxy.proto`` over the same services.

- ``server``: the grpclib server (TLS, health, reflection) run next to the HTTP app;
- ``service``: ``GPUProxyService`` RPCs, each translating to an application service;
- ``proxy``: the proxy RPCs over the process's shared ``ProxyRuntime``;
- ``calls``/``auth``/``errors``/``convert``: per-call context, credentials, status mapping,
  and exact money and message conversion; ``queries``: the few reads REST does inline;
- ``client``/``views``: the CLI's gRPC transport, answering in the REST JSON shapes;
- ``generated``: betterproto output of ``make protos`` (do not edit).
"""
