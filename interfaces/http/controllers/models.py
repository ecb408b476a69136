"""Hosted models: upload (multipart, streamed), list, show, delete, predict.

- ``POST /api/v1/models/upload``: fields ``model`` (the file), ``name`` (default: the file
  name's stem), ``format`` (``onnx`` | ``pytorch`` | ``sklearn``; default: from the
  extension), ``input_shape`` (TorchScript, e.g. ``1,4``), ``n_features`` (scikit-learn,
  when the model does not record it). The body is streamed to a staging file under
  ``DATA_DIR/uploads`` (never held in memory), with the size and quota limits checked as
  bytes arrive; answer 201 ``{"model_id", "converted_to", "status", ...}``.
- ``GET /api/v1/models`` (with the caller's quota), ``GET``/``DELETE /api/v1/models/{id}``
  (id or name; other users' models are 404).
- ``POST /api/v1/models/{id}/predict``: ``{"input": [...]}`` (one row or a batch; an object
  by input name for several inputs) → ``{"output", "outputs", "latency_ms", "runtime",
  "used_gpu"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, Response, Router, delete, get, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from msgspec import Meta, Struct
from multipart import parse_options_header

from domain.models import (
    EXTENSIONS,
    ConvertOptions,
    UploadForm,
    UploadFormError,
    check_name,
    format_of,
    parse_features,
    parse_shape,
)
from domain.pan import refuse_pan
from infrastructure.identity.auth import Principal
from infrastructure.models.staging import receive_multipart
from infrastructure.models.tensors import to_json
from interfaces.http.openapi import AUTHED, binary_body, errors, operation
from interfaces.http.security import client_address, provide_principal
from interfaces.model_input import inputs_by_name
from interfaces.presenters.models import (
    Deleted,
    Model,
    ModelList,
    Prediction,
    Quota,
    present_model,
)

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

FORM_SLACK = 1_048_576  # multipart framing and small fields around the file
OutputName = Annotated[str, Meta(min_length=1, max_length=256)]
UPLOAD = operation(
    body=binary_body(
        "multipart/form-data",
        "Fields: `model` (the file), `name`, `format` (onnx, pytorch, sklearn), "
        "`input_shape` (TorchScript, e.g. 1,4), `n_features` (scikit-learn)",
    )
)


class PredictBody(Struct, forbid_unknown_fields=True):
    input: Any
    outputs: Annotated[list[OutputName], Meta(max_length=64)] | None = None


def _form(filename: str, fields: dict[str, str]) -> UploadForm:
    fmt = format_of(filename, fields.get("format") or None)
    name = check_name(refuse_pan(fields.get("name") or Path(filename).stem or "model", "name"))
    shape = fields.get("input_shape", "").strip()
    features = fields.get("n_features", "").strip()
    options = ConvertOptions(
        input_shape=parse_shape(shape) if shape else None,
        n_features=parse_features(features) if features else None,
    )
    filename = refuse_pan(Path(filename).name[:255], "filename")
    return UploadForm(name=name, format=fmt, filename=filename, options=options)


@post(
    "/models/upload",
    status_code=201,
    request_max_body_size=None,  # checked while streaming, against the caller's limits
    summary="Upload a model (ONNX, TorchScript or scikit-learn; served as ONNX)",
    operation_class=UPLOAD,
    responses=errors(*AUTHED, 402, 409, 413, 503),
    description=(
        "Uploads a model as multipart/form-data (field `model`): ONNX is served as is; TorchScript "
        "(with `input_shape`) and scikit-learn models are converted to ONNX. The body is streamed "
        "to disk and checked against the file-size limit and the caller's quotas as it arrives, so "
        "an oversized upload stops early. The model belongs to the caller. 400 for a bad form, "
        "format or model; 409 when the caller already has a model of that `name`; 413 over the "
        "file-size or storage quota; 429 over the uploads-per-hour or per-day quota; 503 when the "
        "model store fails."
    ),
)
async def upload_model(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
) -> Response[Model]:
    service = c.model_service()
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind.lower() != "multipart/form-data" or not params.get("boundary"):
        raise UploadFormError("send multipart/form-data with the file in field 'model'")
    length = request.content_length
    if length is not None and length > service.limits.file_bytes + FORM_SLACK:
        raise service.limits.file_too_large(length)
    is_admin = principal.is_admin
    ticket = await sync_to_thread(service.begin_upload, principal.user_id, length)
    folder = c.settings.db.data_dir / "uploads"
    staged = folder / f"{ticket.upload_id}.upload"

    def on_filename(filename: str, fields: dict[str, str]) -> None:
        declared = fields.get("format") or None
        if declared is None and Path(filename).suffix.lower() not in EXTENSIONS:
            return  # a format field may still follow the file: decided at the end
        service.check_file(format_of(filename, declared), is_admin=is_admin)

    async def too_large(received: int) -> Exception:
        return await sync_to_thread(service.too_large, ticket, received)

    try:
        await sync_to_thread(folder.mkdir, parents=True, exist_ok=True)
        got = await receive_multipart(
            request.stream(),
            params["boundary"],
            staged,
            max_file_bytes=ticket.max_bytes,
            too_large=too_large,
            on_filename=on_filename,
        )
        form = _form(got.filename, got.fields)
        record = await sync_to_thread(
            service.complete_upload,
            ticket,
            staged,
            form,
            is_admin=is_admin,
            upload_bytes=got.size,
        )
    except BaseException:
        await sync_to_thread(service.abort_upload, ticket)
        raise
    finally:
        await sync_to_thread(staged.unlink, missing_ok=True)
    return Response(present_model(record), status_code=201)


@get(
    "/models",
    sync_to_thread=True,
    summary="Your models, and your upload quota",
    responses=errors(401, 429),
    description=(
        "The caller's models (id, name, format, status, signature, size) and their upload quota: "
        "used and allowed storage and uploads. Own models only; changes nothing."
    ),
)
def list_models(c: NamedDependency[Container], principal: NamedDependency[Principal]) -> ModelList:
    service = c.model_service()
    models = [present_model(r) for r in service.list_models(principal.user_id)]
    quota = Quota(**service.quota(principal.user_id))
    return ModelList(models=models, count=len(models), quota=quota)


@get(
    "/models/{model_id:str}",
    sync_to_thread=True,
    summary="One of your models, with signature",
    responses=errors(*AUTHED, 404),
    description=(
        "One of the caller's models by id or name: format, status, the input and output signature "
        "(names, types, shapes) and size. Changes nothing. 404 for an unknown model or one of "
        "another user."
    ),
)
def get_model(
    c: NamedDependency[Container], principal: NamedDependency[Principal], model_id: FromPath[str]
) -> Model:
    return present_model(c.model_service().lookup(principal.user_id, model_id))


@delete(
    "/models/{model_id:str}",
    status_code=200,
    sync_to_thread=True,
    summary="Delete a model",
    responses=errors(*AUTHED, 404),
    description=(
        "Deletes one of the caller's models, by id or name, from storage and from serving; its "
        "quota is freed. 404 for an unknown model or one of another user."
    ),
)
def delete_model(
    c: NamedDependency[Container], principal: NamedDependency[Principal], model_id: FromPath[str]
) -> Deleted:
    service = c.model_service()
    record = service.lookup(principal.user_id, model_id)
    service.delete(principal.user_id, record.model_id)
    return Deleted(model_id=record.model_id, name=record.name, deleted=True)


@post(
    "/models/{model_id:str}/predict",
    status_code=200,
    summary="Run a prediction",
    responses=errors(*AUTHED, 402, 404, 413, 503),
    description=(
        "Runs one of the caller's models on `input` (one row or a batch; an object keyed by input "
        "name for a model with several inputs) and answers the outputs, latency and runtime "
        "(`used_gpu` says whether a GPU ran it). Each prediction costs the per-request fee, taken "
        "from a credit lease as proxy fees are. 400 when the input does not fit the model's "
        "signature; 402 when credits or guard rails refuse the fee; 404 for an unknown model; 413 "
        "over the body limit; 503 when the model store is unavailable."
    ),
)
async def predict(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    model_id: FromPath[str],
    data: JSONBody[PredictBody],
) -> Prediction:
    service = c.model_service()
    record = await service.find(principal.user_id, model_id)
    inputs = inputs_by_name(record, data.input)
    caller = principal.caller(client_address(request.scope), request.headers.get("user-agent", ""))
    _, result = await service.predict(
        principal.user_id, model_id, inputs, outputs=tuple(data.outputs or ()), caller=caller
    )
    row = result.rows is None
    outputs = {name: to_json(value, row=row) for name, value in result.outputs.items()}
    return Prediction(
        model_id=record.model_id,
        output=next(iter(outputs.values())),
        outputs=outputs,
        latency_ms=round(result.latency_ms, 3),
        runtime=result.runtime,
        used_gpu=result.used_gpu,
    )


def router(max_request_bytes: int) -> Router:
    """The model routes; JSON bodies up to ``max_request_bytes`` (uploads stream)."""
    return Router(
        path="/api/v1",
        tags=["models"],
        dependencies={"principal": Provide(provide_principal)},
        request_max_body_size=max_request_bytes,
        route_handlers=[upload_model, list_models, get_model, delete_model, predict],
    )
