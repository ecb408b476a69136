"""A fake OCI Object Storage API, for the real ``oci`` SDK to talk to.

``FakeObjectStorage`` is a plain ASGI app; ``with running_oci(namespace, bucket) as fake:``
serves it on a loopback port and ``fake.url`` is the endpoint (``OCI_STORAGE_ENDPOINT``).

It follows the real API (``/n/{namespace}/b/{bucket}/...``):

- ``GET /n/``: the namespace, as a JSON string;
- objects: ``PUT``/``GET``/``HEAD``/``DELETE /n/{ns}/b/{bucket}/o/{object}`` (object names
  percent-encoded, ``/`` as ``%2F``); ``GET`` honours ``Range: bytes=a-b``; answers carry
  ``ETag``, ``opc-request-id`` and ``opc-content-md5`` (``PUT`` checks ``Content-MD5`` when
  sent);
- multipart uploads: ``POST /u`` (create), ``PUT /u/{object}?uploadId=&uploadPartNum=``,
  ``POST /u/{object}?uploadId=`` (commit ``partsToCommit``), ``DELETE /u/{object}?uploadId=``
  (abort), ``GET /u`` (list);
- errors: ``{"code", "message"}`` with the real codes (``ObjectNotFound``,
  ``BucketNotFound``, ``NotAuthenticated``, ``NoSuchUpload``, ``InvalidParameter``, …).

Every request must carry an OCI HTTP signature (``Authorization: Signature version="1",
keyId=…,algorithm="rsa-sha256",headers=…,signature=…``). With ``public_key`` set, the signature
is verified (the signing string rebuilt from ``(request-target)`` and the signed headers),
and so is ``x-content-sha256`` when it was signed; otherwise 401 ``NotAuthenticated``.
Requests are recorded in ``fake.requests``; ``fail_next(n, status)`` injects errors.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tests.fake_servers.serving import serve_asgi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE = re.compile(r"^/n/(?P<ns>[^/]+)/b/(?P<bucket>[^/]+)/(?P<kind>[ou])(?:/(?P<obj>[^/]+))?$")
SIGNATURE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    size: int


@dataclass
class _Upload:
    object: str
    parts: dict[int, bytes] = field(default_factory=dict)


class OciError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeObjectStorage:
    def __init__(
        self, namespace: str, buckets: tuple[str, ...], public_key: RSAPublicKey | None = None
    ) -> None:
        self.namespace = namespace
        self.objects: dict[str, dict[str, bytes]] = {b: {} for b in buckets}
        self.uploads: dict[str, _Upload] = {}
        self.public_key = public_key
        self.requests: list[Recorded] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self.url = ""

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode().split("?", 1)[0]
        query = scope.get("query_string", b"").decode()
        method = scope["method"]
        with self._lock:
            self.requests.append(Recorded(method, path, query, headers, len(body)))
            injected = self._failures.pop(0) if self._failures else None
        try:
            if injected is not None:
                raise OciError(injected, "ServiceUnavailable", "injected failure")
            self._authenticate(method, path, query, headers, bytes(body))
            status, extra, payload = self._route(method, path, query, headers, bytes(body))
        except OciError as exc:
            status, extra = exc.status, {"content-type": "application/json"}
            payload = json.dumps({"code": exc.code, "message": exc.message}).encode()
        extra.setdefault("opc-request-id", uuid.uuid4().hex)
        if method == "HEAD":
            extra.setdefault("content-length", str(len(payload)))
            payload = b""
        else:
            extra["content-length"] = str(len(payload))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    # ------------------------------------------------------------------ auth

    def _authenticate(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Signature "):
            raise OciError(
                401,
                "NotAuthenticated",
                "The required information to complete authentication was not provided.",
            )
        params = dict(SIGNATURE_PARAM.findall(auth))
        missing = {"version", "keyId", "algorithm", "headers", "signature"} - params.keys()
        if missing or params["algorithm"] != "rsa-sha256" or params["keyId"].count("/") != 2:
            raise OciError(401, "NotAuthenticated", "Malformed Authorization header")
        signed = params["headers"].split()
        if not {"(request-target)", "date", "host"} <= set(signed):
            raise OciError(
                401, "NotAuthenticated", "date, host and (request-target) must be signed"
            )
        if "x-content-sha256" in signed:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if headers.get("x-content-sha256") != digest:
                raise OciError(401, "NotAuthenticated", "x-content-sha256 does not match the body")
        if self.public_key is None:
            return
        target = path + (f"?{query}" if query else "")
        lines = [
            f"(request-target): {method.lower()} {target}"
            if name == "(request-target)"
            else f"{name}: {headers.get(name, '')}"
            for name in signed
        ]
        try:
            self.public_key.verify(
                base64.b64decode(params["signature"]),
                "\n".join(lines).encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            raise OciError(401, "NotAuthenticated", "The signature does not verify") from None

    # ---------------------------------------------------------------- routing

    def _route(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path in {"/n", "/n/"} and method == "GET":
            return 200, {"content-type": "application/json"}, json.dumps(self.namespace).encode()
        match = ROUTE.match(path)
        if match is None:
            raise OciError(404, "NotFound", f"No such route {method} {path}")
        if unquote(match["ns"]) != self.namespace:
            raise OciError(404, "NamespaceNotFound", f"Namespace {match['ns']} not found")
        bucket = unquote(match["bucket"])
        if bucket not in self.objects:
            raise OciError(
                404,
                "BucketNotFound",
                f"Either the bucket named '{bucket}' does not "
                "exist in the namespace or you are not authorized to access it",
            )
        name = unquote(match["obj"]) if match["obj"] else ""
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if match["kind"] == "o":
            return self._object(method, bucket, name, headers, body)
        return self._multipart(method, bucket, name, params, body)

    def _object(
        self, method: str, bucket: str, name: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        store = self.objects[bucket]
        if not name:
            raise OciError(400, "InvalidParameter", "An object name is required")
        if method == "PUT":
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - OCI's
            sent = headers.get("content-md5")
            if sent and sent != md5:
                raise OciError(400, "InvalidParameter", "The Content-MD5 does not match")
            with self._lock:
                store[name] = body
            return 200, self._object_headers(body), b""
        data = store.get(name)
        if data is None:
            raise OciError(
                404, "ObjectNotFound", f"The object '{name}' was not found in the bucket '{bucket}'"
            )
        if method == "DELETE":
            with self._lock:
                store.pop(name, None)
            return 204, {}, b""
        if method in {"GET", "HEAD"}:
            out = self._object_headers(data)
            out["content-type"] = "application/octet-stream"
            window = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", ""))
            if window and method == "GET":
                start = int(window[1])
                end = int(window[2]) if window[2] else len(data) - 1
                out["content-range"] = f"bytes {start}-{end}/{len(data)}"
                return 206, out, data[start : end + 1]
            return 200, out, data
        raise OciError(405, "MethodNotAllowed", f"{method} is not allowed on objects")

    def _multipart(
        self, method: str, bucket: str, name: str, params: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        json_headers = {"content-type": "application/json"}
        if not name and method == "POST":
            request = json.loads(body or b"{}")
            if not request.get("object"):
                raise OciError(400, "InvalidParameter", "object is required")
            upload_id = str(uuid.uuid4())
            with self._lock:
                self.uploads[upload_id] = _Upload(str(request["object"]))
            answer = {
                "namespace": self.namespace,
                "bucket": bucket,
                "object": request["object"],
                "uploadId": upload_id,
                "timeCreated": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "storageTier": "Standard",
            }
            return 200, json_headers, json.dumps(answer).encode()
        if not name and method == "GET":
            listing = [
                {
                    "namespace": self.namespace,
                    "bucket": bucket,
                    "object": u.object,
                    "uploadId": uid,
                    "timeCreated": "2026-01-01T00:00:00Z",
                }
                for uid, u in self.uploads.items()
            ]
            return 200, json_headers, json.dumps(listing).encode()
        upload = self.uploads.get(params.get("uploadId", ""))
        if upload is None or upload.object != name:
            raise OciError(404, "NoSuchUpload", f"No such upload for object '{name}'")
        if method == "PUT":
            number = int(params.get("uploadPartNum", "0"))
            if not 1 <= number <= 10_000:
                raise OciError(400, "InvalidParameter", "uploadPartNum must be 1..10000")
            with self._lock:
                upload.parts[number] = body
            return 200, {"etag": _etag(body), "opc-content-md5": _md5(body)}, b""
        if method == "POST":
            commit = json.loads(body or b"{}")
            chosen = sorted(commit.get("partsToCommit", []), key=lambda p: p["partNum"])
            data = bytearray()
            for part in chosen:
                stored = upload.parts.get(int(part["partNum"]))
                if stored is None or _etag(stored) != part.get("etag"):
                    raise OciError(400, "InvalidParameter", f"part {part['partNum']} mismatch")
                data.extend(stored)
            with self._lock:
                self.objects[bucket][name] = bytes(data)
                del self.uploads[params["uploadId"]]
            return 200, {"etag": _etag(bytes(data)), "opc-multipart-md5": _md5(bytes(data))}, b""
        if method == "DELETE":
            with self._lock:
                del self.uploads[params["uploadId"]]
            return 204, {}, b""
        raise OciError(405, "MethodNotAllowed", f"{method} is not allowed on uploads")

    @staticmethod
    def _object_headers(data: bytes) -> dict[str, str]:
        return {
            "etag": _etag(data),
            "opc-content-md5": _md5(data),
            "last-modified": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - OCI uses MD5


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@contextlib.contextmanager
def running_oci(
    namespace: str = "testns",
    buckets: tuple[str, ...] = ("models",),
    public_key: RSAPublicKey | None = None,
) -> Iterator[FakeObjectStorage]:
    fake = FakeObjectStorage(namespace, buckets, public_key)
    with serve_asgi(fake, name="fake-oci") as url:
        fake.url = url
        yield fake
