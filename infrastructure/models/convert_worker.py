"""The conversion worker: ``python -m infrastructure.models.convert_worker JOB.json``.

Runs in its own process (started by ``converter.SubprocessConverter``) because loading a
scikit-learn pickle runs code from the file, and a TorchScript or ONNX file that crashes a
native library must not take the server down. The job names the format, the source, the
destination and the options; the worker validates the source, writes the ONNX model, checks it
with the ONNX checker and loads it with ONNX Runtime, and writes its signature (or the
reason it failed) to the result file named in the job.

Exit codes: 0 converted; 2 the file is not a servable model (the result says why); 3 what
the conversion needs is not installed; anything else is a crash.
"""

from __future__ import annotations

import importlib
import json
import re
import resource
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

USER_ERROR = 2
UNAVAILABLE = 3


class RefusedError(Exception):
    """The file is not a model we can serve; the message says why."""


class MissingError(Exception):
    """A library the conversion needs is not installed."""


def signature_of(path: Path) -> dict[str, Any]:
    """Check the ONNX file and read its signature through ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from infrastructure.models.tensors import dims, oip_datatype

    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise RefusedError(f"not a valid ONNX model: {_short(exc)}") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise RefusedError(
            "ONNX models with external data files are not supported: save it as one file"
        )
    domains = sorted({node.domain or "ai.onnx" for node in model.graph.node})
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RefusedError(f"ONNX Runtime cannot load the model: {_short(exc)}") from None
    specs: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for kind, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        for arg in args:
            datatype = oip_datatype(arg.type)
            if datatype is None:
                raise RefusedError(
                    f"{kind[:-1]} {arg.name!r} is a {arg.type}, not a tensor: only tensor "
                    "inputs and outputs can be served"
                )
            specs[kind].append(
                {"name": arg.name, "datatype": datatype, "shape": list(dims(arg.shape))}
            )
    if not specs["inputs"] or not specs["outputs"]:
        raise RefusedError("the model has no inputs or no outputs")
    return {**specs, "op_domains": domains}


def from_torchscript(source: Path, dest: Path, shape: list[int] | None) -> None:
    try:
        torch: Any = importlib.import_module("torch")  # untyped here: torch is optional
    except ImportError:
        raise MissingError(
            "PyTorch is not installed on this server (pip install '.[torch]')"
        ) from None
    if not zipfile.is_zipfile(source):
        raise RefusedError("not a TorchScript archive (a .pt/.pth file saved by torch.jit.save)")
    try:
        module = torch.jit.load(str(source), map_location="cpu")
    except Exception as exc:
        if _is_state_dict(source):
            raise RefusedError(
                "this file is a bare state dict (weights only): it cannot be served without "
                "its model code; save the model with torch.jit.script(model).save(path) or "
                "export it to ONNX, and upload that"
            ) from None
        raise RefusedError(f"not a TorchScript model: {_short(exc)}") from None
    if not shape:
        raise RefusedError("TorchScript models need input_shape (e.g. 1,4) to be converted to ONNX")
    module.eval()
    example = torch.zeros(*shape)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(dest),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                dynamo=False,  # the TorchScript exporter: it takes ScriptModules as they are
            )
    except Exception as exc:
        raise RefusedError(
            f"cannot convert to ONNX with input_shape {shape}: {_short(exc)}"
        ) from None


def _is_state_dict(source: Path) -> bool:
    torch: Any = importlib.import_module("torch")
    try:
        loaded = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(loaded, dict)


def from_sklearn(source: Path, dest: Path, n_features: int | None) -> None:
    try:
        import joblib
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.base import BaseEstimator, is_classifier
    except ImportError as exc:
        raise MissingError(
            f"scikit-learn or skl2onnx is not installed on this server ({exc})"
        ) from None
    try:
        model = joblib.load(source)  # runs code from the file: why this is a separate process
    except Exception as exc:
        raise RefusedError(f"cannot load the pickle: {_short(exc)}") from None
    if not isinstance(model, BaseEstimator):
        raise RefusedError(f"the pickle holds a {type(model).__name__}, not a scikit-learn model")
    features = n_features or getattr(model, "n_features_in_", None)
    if not features:
        raise RefusedError("cannot tell the number of input features: send n_features")
    options = {id(model): {"zipmap": False}} if is_classifier(model) else None
    try:
        onnx_model = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, int(features)]))],
            options=options,
        )
    except Exception as exc:
        raise RefusedError(f"skl2onnx cannot convert this model: {_short(exc)}") from None
    dest.write_bytes(onnx_model.SerializeToString())


def _short(exc: BaseException) -> str:
    """The first line of a library's error, without server file paths."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return re.sub(r"(/[^\s:'\"]+)+", "<file>", line)[:300]


def run(job: dict[str, Any]) -> dict[str, Any]:
    source, dest, fmt = Path(job["source"]), Path(job["dest"]), job["format"]
    if fmt == "pytorch":
        from_torchscript(source, dest, job.get("input_shape"))
    elif fmt == "sklearn":
        from_sklearn(source, dest, job.get("n_features"))
    elif fmt == "onnx":
        shutil.copyfile(source, dest)
    else:
        raise RefusedError(f"unknown format {fmt!r}")
    return signature_of(dest)


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")  # library deprecation chatter is not the caller's problem
    job = json.loads(Path(argv[1]).read_text())
    if job.get("memory_bytes"):  # a runaway pickle cannot take the machine's memory
        limit = int(job["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result_path = Path(job["result"])
    try:
        result: dict[str, Any] = {"ok": True, "signature": run(job)}
        code = 0
    except RefusedError as exc:
        result, code = {"ok": False, "error": str(exc)}, USER_ERROR
    except MissingError as exc:
        result, code = {"ok": False, "error": str(exc)}, UNAVAILABLE
    except MemoryError:
        result, code = (
            {"ok": False, "error": "the model needs more memory than allowed"},
            USER_ERROR,
        )
    result_path.write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
