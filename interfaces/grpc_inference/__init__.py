"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``) for hosted models.

- ``service.InferenceService``: the servicer, built from the container (add it to a grpclib
  ``Server`` beside the other services);
- ``messages``: the protobuf (upb) message classes the servicer parses and builds;
- ``generated``: betterproto output of ``protos/grpc_predict_v2.proto``
  (``python -m interfaces.grpc_inference.generate``; do not edit), and its descriptor set
  ``generated/grpc_predict_v2.binpb`` for server reflection.
"""
