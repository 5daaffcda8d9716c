"""The HTTP API of the update server (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

Admin endpoints need ``Authorization: Bearer <admin token>``. Device endpoints
are open, as Alibaba's HTTPS download URLs and Tencent's query are to a device
that knows its product key. Every error is JSON ``{"error": ..., "hint": ...}``
with a 4xx status that says which kind.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse

from otaflash import versions
from otaflash.errors import InputError, OtaflashError
from otaflash.server.service import (
    FROM_APP,
    FROM_SERVER_PUSH,
    Conflict,
    NotFound,
    Unavailable,
    UpdateService,
)
from otaflash.server.store import DuplicatePackage, PackageSpec, UnknownBlob, UploadTooLarge

__all__ = ["create_app"]

DEFAULT_MAX_UPLOAD = 1 << 30  # Alibaba's per-file limit is 1,000 MB
NAME_CHARS = "A-Z a-z 0-9 _ . : @ -"

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
VersionStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.+-]+$")]


class DeltaIn(BaseModel):
    fromVersion: VersionStr = Field(description="the exact device version this delta applies to")
    sha256: Sha256 = Field(description="SHA-256 of an uploaded patch file")
    name: FileName | None = None


class PublishIn(BaseModel):
    productKey: Name
    module: Name = "default"
    version: VersionStr = Field(description="target version: integer or dotted")
    sha256: Sha256 = Field(description="SHA-256 of the uploaded full image")
    name: FileName | None = Field(None, description="file name shown to people")
    deltas: list[DeltaIn] = Field(default_factory=list, max_length=64)
    makeDeltasFrom: list[VersionStr] = Field(
        default_factory=list,
        max_length=64,
        description="versions to make deltas from with the delta engine (when built in)",
    )
    forced: bool = False
    scope: Literal["formal", "test"] = "formal"
    serials: list[Name] = Field(default_factory=list, max_length=100_000)
    title: str = Field("", max_length=256)
    description: str = Field("", max_length=8192)
    rollout: int = Field(100, ge=0, le=100, description="percent of devices admitted")
    enabled: bool = True
    signature: str | None = Field(None, max_length=65536, description="reserved for signing")


class PatchIn(BaseModel):
    enabled: bool


class InformIn(BaseModel):
    version: VersionStr
    module: Name = "default"


class ProgressIn(BaseModel):
    step: int | str = Field(description='"1".."100", "-1".."-4" (string as Alibaba, or int)')
    desc: str = Field("", max_length=4096)
    module: Name = "default"


class NotifyIn(BaseModel):
    module: Name = "default"
    version: VersionStr | None = Field(
        None, description="the device's version if the server has no inform from it"
    )


class Offer(BaseModel):
    """Alibaba's ``data`` fields plus ours (see otaflash.alibaba)."""

    size: int
    version: str
    url: str
    signMethod: str
    sign: str
    md5: str | None = None
    sha256: str
    isDiff: int | None = None
    fromVersion: str | None = None
    module: str | None = None
    from_: int = Field(alias="from")
    forced: bool
    title: str
    desc: str
    imageSize: int
    imageSha256: str
    packageId: int
    signature: str | None = None


class QueryOut(BaseModel):
    update: Offer | None


class UploadOut(BaseModel):
    sha256: str
    md5: str
    size: int


class ErrorOut(BaseModel):
    error: str
    hint: str | None = None


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


def _json(content: Any, status: int = 200) -> Response:
    # Skips FastAPI's response re-validation on the hot paths.
    return Response(
        json.dumps(content, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
    )


def query_offer(
    service: UpdateService, pk: str, dn: str, params: dict[str, str], base_url: str
) -> dict[str, Any]:
    """The device query, shared by the documented route and the fast path."""
    version = params.get("version")
    if version is None:
        raise InputError(
            "invalid request: query parameter 'version' (the device's current version) is missing"
        )
    try:
        source = int(params.get("from", "3"))
    except ValueError:
        raise InputError("invalid request: 'from' must be 0, 1, 2 or 3") from None
    delta = params.get("delta", "true").lower()
    if delta not in _BOOLS:
        raise InputError("invalid request: 'delta' must be true or false")
    offer = service.query(
        pk,
        dn,
        params.get("module", "default"),
        version,
        source=source,
        accept_delta=_BOOLS[delta],
        base_url=base_url,
    )
    return {"update": offer}


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
_QUERY_PATH = re.compile(r"^/api/v1/devices/([^/]+)/([^/]+)/update$")


class QueryFastPath:
    """Serves the device query (the one hot endpoint) without FastAPI's per-request
    dependency and validation machinery: about 3x the queries per second. It
    answers exactly as the documented route does (same function, same errors)."""

    def __init__(self, app: Any, service: UpdateService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        match = _QUERY_PATH.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        raw = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        params = {key: values[-1] for key, values in raw.items()}
        try:
            status, body = (
                200,
                query_offer(self.service, match[1], match[2], params, _base_url(scope)),
            )
        except OtaflashError as error:
            status, body = _status_of(error), {"error": str(error), "hint": error.hint}
        payload = json.dumps(body, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _base_url(scope: Any) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return f"{scope.get('scheme', 'http')}://{value.decode('latin-1')}/"
    host, port = scope["server"]
    return f"{scope.get('scheme', 'http')}://{host}:{port}/"


def _status_of(exc: OtaflashError) -> int:
    if isinstance(exc, UnauthorizedError):
        return 401
    if isinstance(exc, UploadTooLarge):
        return 413
    if isinstance(exc, NotFound | UnknownBlob):
        return 404
    if isinstance(exc, Conflict | DuplicatePackage):
        return 409
    if isinstance(exc, Unavailable):
        return 503
    return 400


class LargeFileResponse(FileResponse):
    # 1 MiB reads: a quarter of the thread hops of Starlette's 64 KiB default.
    chunk_size = 1 << 20


def create_app(
    service: UpdateService, *, admin_token: str, max_upload: int = DEFAULT_MAX_UPLOAD
) -> QueryFastPath:
    """The ASGI app: the FastAPI app behind the query fast path (``.app`` is FastAPI)."""
    return QueryFastPath(_create_api(service, admin_token, max_upload), service)


def _create_api(  # noqa: PLR0915 - every route in one place, as the OpenAPI lists them
    service: UpdateService, admin_token: str, max_upload: int
) -> FastAPI:
    if not admin_token:
        raise InputError("the admin token must not be empty")
    app = FastAPI(
        title="otaflash update server",
        version="1",
        description=__doc__,
        responses={400: {"model": ErrorOut}, 404: {"model": ErrorOut}},
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        return _error(
            400,
            "invalid request: " + "; ".join(problems),
            "see the API description at /docs",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(OtaflashError)
    async def _ours(_request: Request, exc: OtaflashError) -> JSONResponse:
        return _error(_status_of(exc), str(exc), exc.hint)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), admin_token.encode()
        ):
            raise UnauthorizedError

    Admin = Depends(admin)

    # -- admin ----------------------------------------------------------------

    @app.post(
        "/api/v1/uploads",
        status_code=201,
        response_model=UploadOut,
        dependencies=[Admin],
        tags=["admin"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload(request: Request) -> Response:
        """Uploads one file (full image or delta) as the raw request body.

        Size, MD5 and SHA-256 are computed while it streams in; the answer's
        ``sha256`` names it in a publish request. Over ``--max-upload`` → 413."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload:
            raise UploadTooLarge(max_upload)
        writer = service.blobs.writer(max_upload)
        try:
            async for chunk in request.stream():
                writer.write(chunk)
            if writer.size == 0:
                raise InputError("the upload is empty: send the file as the request body")
            blob = writer.finish()
        except BaseException:
            writer.abort()
            raise
        service.store.add_blob(blob)
        return _json({"sha256": blob.sha256, "md5": blob.md5, "size": blob.size}, 201)

    @app.post("/api/v1/packages", status_code=201, dependencies=[Admin], tags=["admin"])
    def publish(body: PublishIn) -> dict[str, Any]:
        """Publishes a package: the full image, deltas, and the rule that selects devices."""
        if body.scope == "test" and not body.serials:
            raise InputError("a test package needs the serial numbers of its test devices")
        made = [
            (source, service.make_delta(body.productKey, body.module, source, body.sha256))
            for source in body.makeDeltasFrom
            if source not in {d.fromVersion for d in body.deltas}
        ]
        sources = [d.fromVersion for d in body.deltas] + [source for source, _ in made]
        if len(set(sources)) != len(sources):
            raise InputError("two deltas are made from the same version")
        if body.version in sources:
            raise InputError("a delta cannot start from the target version itself")
        spec = PackageSpec(
            product_key=body.productKey,
            module=body.module,
            version=body.version,
            full=body.sha256,
            full_name=body.name or f"{body.productKey}-{body.module}-{body.version}.bin",
            deltas=[
                (d.fromVersion, d.sha256, d.name or f"{d.fromVersion}-to-{body.version}.patch")
                for d in body.deltas
            ]
            + [(source, sha, f"{source}-to-{body.version}.patch") for source, sha in made],
            forced=body.forced,
            scope=body.scope,
            serials=body.serials,
            title=body.title,
            description=body.description,
            rollout=body.rollout,
            enabled=body.enabled,
            signature=body.signature,
        )
        return service.store.create_package(spec).to_json()

    @app.get("/api/v1/packages", dependencies=[Admin], tags=["admin"])
    def list_packages(
        product: Annotated[str | None, Query(max_length=64)] = None,
        module: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """Every package, optionally of one product (and module)."""
        found = service.store.list_packages(product, module)
        return {"packages": [p.to_json() for p in found]}

    @app.get("/api/v1/packages/{package_id}", dependencies=[Admin], tags=["admin"])
    def get_package(package_id: int) -> dict[str, Any]:
        package = service.store.get_package(package_id)
        if package is None:
            raise NotFound(f"no package {package_id}")
        return package.to_json()

    @app.patch("/api/v1/packages/{package_id}", dependencies=[Admin], tags=["admin"])
    def patch_package(package_id: int, body: PatchIn) -> dict[str, Any]:
        """Enables or disables a package (a disabled one is offered to no device)."""
        package = service.store.set_enabled(package_id, body.enabled)
        if package is None:
            raise NotFound(f"no package {package_id}")
        return package.to_json()

    @app.delete(
        "/api/v1/packages/{package_id}", status_code=204, dependencies=[Admin], tags=["admin"]
    )
    def delete_package(package_id: int) -> Response:
        """Deletes a package and the files no other package uses."""
        if not service.store.delete_package(package_id, service.blobs):
            raise NotFound(f"no package {package_id}")
        return Response(status_code=204)

    @app.get("/api/v1/devices/{pk}/{dn}", dependencies=[Admin], tags=["admin"])
    def device(
        pk: Annotated[str, Path(max_length=64)], dn: Annotated[str, Path(max_length=64)]
    ) -> dict[str, Any]:
        """What a device reported: versions per module and its progress history."""
        service.require_product(pk)
        versions.validate_serial(dn)
        return {
            "productKey": pk,
            "deviceName": dn,
            "modules": service.store.device_state(pk, dn),
            "progress": service.store.progress_of(pk, dn),
        }

    @app.post("/api/v1/devices/{pk}/{dn}/push", dependencies=[Admin], tags=["admin"])
    def push(pk: str, dn: str, body: NotifyIn) -> dict[str, Any]:
        """Server push (``from`` 2): sends the device its offer on its MQTT upgrade topic."""
        return {"sent": service.notify(pk, dn, body.module, FROM_SERVER_PUSH, body.version)}

    @app.post("/api/v1/devices/{pk}/{dn}/trigger", dependencies=[Admin], tags=["app"])
    def trigger(pk: str, dn: str, body: NotifyIn) -> dict[str, Any]:
        """App trigger (``from`` 1): an app asks the server to notify one device."""
        return {"sent": service.notify(pk, dn, body.module, FROM_APP, body.version)}

    # -- devices --------------------------------------------------------------

    @app.get("/api/v1/devices/{pk}/{dn}/update", response_model=QueryOut, tags=["device"])
    async def query(
        *,
        request: Request,
        pk: str,
        dn: str,
        version: Annotated[str, Query(max_length=64, description="the device's current version")],
        module: Annotated[str, Query(max_length=64)] = "default",
        source: Annotated[int, Query(alias="from", ge=0, le=3)] = 3,
        delta: Annotated[bool, Query(description="the device can apply deltas")] = True,
    ) -> Response:
        """The update for this device, or ``{"update": null}`` when it is up to date.

        (Served by ``QueryFastPath``; this route documents it and is the fallback.)"""
        params = {
            "version": version,
            "module": module,
            "from": str(source),
            "delta": str(delta).lower(),
        }
        return _json(query_offer(service, pk, dn, params, str(request.base_url)))

    @app.post("/api/v1/devices/{pk}/{dn}/inform", status_code=204, tags=["device"])
    def inform(pk: str, dn: str, body: InformIn) -> Response:
        """The device reports its current version (after boot and after an update)."""
        service.inform(pk, dn, body.module, body.version)
        return Response(status_code=204)

    @app.post("/api/v1/devices/{pk}/{dn}/progress", status_code=204, tags=["device"])
    def report_progress(pk: str, dn: str, body: ProgressIn) -> Response:
        """Update progress: 1..100, or -1 failed, -2 download, -3 verify, -4 flash failed."""
        service.progress(pk, dn, body.module, body.step, body.desc)
        return Response(status_code=204)

    @app.get("/artifacts/{sha256}", tags=["device"])
    def artifact(sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]) -> Response:
        """Downloads a file by SHA-256; supports ``Range`` (206) and ``If-Range``."""
        path = service.blobs.path(sha256)
        if not os.path.isfile(path):
            raise NotFound(f"no file with SHA-256 {sha256}")
        return LargeFileResponse(path, media_type="application/octet-stream")

    @app.get("/healthz", tags=["device"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


class UnauthorizedError(OtaflashError):
    exit_code = 9
    hint = "give the admin token: --token or OTAFLASH_ADMIN_TOKEN"

    def __init__(self) -> None:
        super().__init__("missing or wrong admin token")
