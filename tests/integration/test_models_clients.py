"""Real OIP v2 clients against a real server: Triton's ``tritonclient.http`` (binary tensors
and JSON) and ``tritonclient.grpc`` (raw contents), plus grpclib with typed contents.

The server is the real app under uvicorn with the ``inference.GRPCInferenceService`` servicer
on a grpclib ``Server``, both on one event loop in a background thread (as
``aiserve-gpuproxyd`` runs them), on loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.grpc_inference.generated import inference as pb
from interfaces.grpc_inference.service import InferenceService
from interfaces.http.app import create_app
from tests.integration.test_models_support import (
    add_user,
    dense_onnx,
    sklearn_classifier,
    sklearn_to_onnx,
)
from tests.support.http import JWT_SECRET
from tests.support.pg import free_port

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOL = 1e-5


@dataclasses.dataclass
class Served:
    http: str  # host:port
    grpc: str
    key: str
    other_key: str
    classifier: Any
    x: np.ndarray
    reference: Any

    def h(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def meta(self) -> dict[str, str]:
        """gRPC metadata keys are lower case."""
        return {"x-api-key": self.key}


@contextlib.contextmanager
def serving(container: Container) -> Iterator[tuple[int, int]]:
    """The app (lifespan on) and the OIP gRPC servicer on one loop; (HTTP port, gRPC port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    http_port, grpc_port = sock.getsockname()[1], free_port()
    started, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        server = uvicorn.Server(
            uvicorn.Config(create_app(container), lifespan="on", log_config=None, access_log=False)
        )
        grpc = Server([InferenceService(container)])
        await grpc.start("127.0.0.1", grpc_port)
        serve = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serve.done():
            await asyncio.sleep(0.01)
        started.set()
        while not stop.is_set() and not serve.done():
            await asyncio.sleep(0.05)
        server.should_exit = True
        await serve
        grpc.close()
        await grpc.wait_closed()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced in the test thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="models-server", daemon=True)
    thread.start()
    try:
        assert started.wait(30), "server did not start"
        if failure:
            raise failure[0]
        yield http_port, grpc_port
    finally:
        stop.set()
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path_factory.mktemp("clients") / "data"),
            "JWT_SECRET": JWT_SECRET,
            "RATE_LIMIT_PER_MINUTE": "100000",
        },
        env_file=None,
    )
    c = bootstrap(settings)
    try:
        _, key = add_user(c, "alice")
        _, other = add_user(c, "bob")
        classifier, x = sklearn_classifier()
        dense, reference = dense_onnx()
        with serving(c) as (http_port, grpc_port):
            base = f"http://127.0.0.1:{http_port}"
            for name, content in (("clf", sklearn_to_onnx(classifier, 4)), ("dense", dense)):
                created = httpx.post(
                    f"{base}/api/v1/models/upload",
                    files={"model": (f"{name}.onnx", content)},
                    data={"name": name},
                    headers={"X-API-Key": key},
                    timeout=60,
                )
                assert created.status_code == 201, created.text
            yield Served(
                f"127.0.0.1:{http_port}",
                f"127.0.0.1:{grpc_port}",
                key,
                other,
                classifier,
                x,
                reference,
            )
    finally:
        c.close()


# ------------------------------------------------------------------ tritonclient.http


def test_triton_http_client_metadata(served: Served) -> None:
    client = httpclient.InferenceServerClient(url=served.http)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.get_server_metadata()["name"] == "gpuproxy"
        assert client.is_model_ready("clf", headers=served.h())
        meta = client.get_model_metadata("clf", headers=served.h())
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("clf", headers={"X-API-Key": served.other_key})
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_http_client_infers_like_sklearn(served: Served, binary: bool) -> None:
    client = httpclient.InferenceServerClient(url=served.http)
    try:
        x = served.x[:16]
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=binary),
            httpclient.InferRequestedOutput("label", binary_data=not binary),
        ]
        result = client.infer("clf", [tensor], outputs=outputs, headers=served.h(), request_id="r1")
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), served.classifier.predict_proba(x), atol=TOL
        )
        assert result.as_numpy("label").tolist() == served.classifier.predict(x).tolist()
        assert result.get_response()["id"] == "r1"
        everything = client.infer("clf", [tensor], headers=served.h())  # all outputs, binary
        assert everything.as_numpy("probabilities").shape == (16, 2)
        versioned = client.infer(
            "dense", [_dense_input(httpclient)], model_version="1", headers=served.h()
        )
        np.testing.assert_allclose(
            versioned.as_numpy("y"), served.reference(np.ones((2, 4))), atol=TOL
        )
    finally:
        client.close()


def _dense_input(module: Any) -> Any:
    tensor = module.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
    return tensor


def test_triton_http_client_errors(served: Served) -> None:
    client = httpclient.InferenceServerClient(url=served.http)
    try:
        wrong = httpclient.InferInput("input", [2, 4], "FP64")
        wrong.set_data_from_numpy(np.zeros((2, 4), dtype=np.float64))
        with pytest.raises(InferenceServerException, match="FP32"):
            client.infer("clf", [wrong], headers=served.h())
        narrow = httpclient.InferInput("input", [2, 3], "FP32")
        narrow.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException, match=r"input: FP32\[\?, 4\]"):
            client.infer("clf", [narrow], headers=served.h())
        with pytest.raises(InferenceServerException):
            client.infer("clf", [_dense_input(httpclient)])  # no credentials
        with pytest.raises(InferenceServerException):
            client.infer("nope", [_dense_input(httpclient)], headers=served.h())
    finally:
        client.close()


# ------------------------------------------------------------------ tritonclient.grpc


def test_triton_grpc_client(served: Served) -> None:
    client = grpcclient.InferenceServerClient(url=served.grpc)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.get_server_metadata().name == "gpuproxy"
        assert client.is_model_ready("clf", headers=served.meta())
        meta = client.get_model_metadata("clf", headers=served.meta())
        assert [i.name for i in meta.inputs] == ["input"]
        assert list(meta.inputs[0].shape) == [-1, 4]
        x = served.x[:8]
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(
            "clf",
            [tensor],
            outputs=[grpcclient.InferRequestedOutput("probabilities")],
            headers=served.meta(),
        )
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), served.classifier.predict_proba(x), atol=TOL
        )
        both = client.infer("clf", [tensor], headers={"authorization": f"Bearer {served.key}"})
        assert both.as_numpy("label").tolist() == served.classifier.predict(x).tolist()

        with pytest.raises(InferenceServerException) as no_key:
            client.infer("clf", [tensor])
        assert "UNAUTHENTICATED" in str(no_key.value.status())
        narrow = grpcclient.InferInput("input", [1, 3], "FP32")
        narrow.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException) as bad:
            client.infer("clf", [narrow], headers=served.meta())
        assert "INVALID_ARGUMENT" in str(bad.value.status())
        assert "FP32[?, 4]" in bad.value.message()
        with pytest.raises(InferenceServerException) as missing:
            client.infer("clf", [tensor], headers={"x-api-key": served.other_key})
        assert "NOT_FOUND" in str(missing.value.status())
    finally:
        client.close()


def test_grpc_typed_contents_round_trip(served: Served) -> None:
    async def call() -> pb.ModelInferResponse:
        host, port = served.grpc.split(":")
        channel = Channel(host, int(port))
        try:
            stub = pb.GrpcInferenceServiceStub(channel, metadata={"x-api-key": served.key})
            request = pb.ModelInferRequest(
                model_name="dense",
                id="typed",
                inputs=[
                    pb.ModelInferRequestInferInputTensor(
                        name="x",
                        datatype="FP32",
                        shape=[2, 4],
                        contents=pb.InferTensorContents(fp32_contents=[1.0] * 8),
                    )
                ],
            )
            response = await stub.model_infer(request)
            with pytest.raises(GRPCError) as wrong:
                await stub.model_infer(
                    pb.ModelInferRequest(
                        model_name="dense",
                        inputs=[
                            pb.ModelInferRequestInferInputTensor(
                                name="x",
                                datatype="INT64",
                                shape=[1, 4],
                                contents=pb.InferTensorContents(int64_contents=[1] * 4),
                            )
                        ],
                    )
                )
            assert wrong.value.status is Status.INVALID_ARGUMENT
            return response
        finally:
            channel.close()

    response = asyncio.run(call())
    assert response.id == "typed"
    assert not response.raw_output_contents
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("y", "FP32", [2, 3])
    np.testing.assert_allclose(
        np.asarray(out.contents.fp32_contents).reshape(2, 3),
        served.reference(np.ones((2, 4))),
        atol=TOL,
    )


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """``interfaces/grpc_inference/generated`` is what the generator makes from the proto now."""
    pytest.importorskip("grpc_tools")
    from interfaces.grpc_inference.generate import OUT, generate

    generate(tmp_path)
    for name in ("inference/__init__.py", "grpc_predict_v2.binpb"):
        assert (tmp_path / name).read_bytes() == (OUT / name).read_bytes(), (
            f"{name} is stale: run python -m interfaces.grpc_inference.generate"
        )
