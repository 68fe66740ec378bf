"""The FastAPI application of ``jianmu serve``: routes, the token gate, and the identify path.

A request's photos are read into memory (:mod:`.uploads`), decoded in the server's thread pool
(the decoder of ``jianmu predict``, from bytes), run through the model in micro-batches with the
photos of concurrent requests (:mod:`.batcher`), then judged, rolled up and sealed in an
inspection record by :func:`jianmu.engine.predict.judge`, in the pool again: the event loop only
moves bytes. Nothing of a request is kept after its answer, so servers scale by processes and
machines.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from jianmu.bundle import ModelBundle, load_model
from jianmu.config import Config
from jianmu.data.inputs import InputImage
from jianmu.data.stream import collect_batch, decode_safely, default_workers
from jianmu.engine.predict import Labels, build_labels, decode_photo, judge, rule_settings
from jianmu.engine.serve.answers import Health, IdentifyAnswer, ModelInfo, ModelsAnswer
from jianmu.engine.serve.batcher import MicroBatcher
from jianmu.engine.serve.metrics import CONTENT_TYPE, ServiceMetrics, route_of
from jianmu.engine.serve.uploads import FIELDS, PHOTOS, Upload, UploadError, read_upload
from jianmu.engine.verify import model_declarations
from jianmu.errors import JianmuError, did_you_mean
from jianmu.record import bytes_sha256, json_data, model_sha256, upload_entry
from jianmu.report.upload_page import CONTENT_SECURITY_POLICY, sheet_html, upload_page

OPEN_PATHS = ("/healthz",)
# 499: the client went away before its answer (nginx's code; it is never received).
CLIENT_CLOSED = 499
MIN_TOKEN_LENGTH = 16
DEFAULT_SPECIMEN = "1"  # the label of a specimen sent without one


@dataclass
class ServedModel:
    """A model loaded for serving: its bundle, records' labels, hash and batcher."""

    name: str
    bundle: ModelBundle
    labels: Labels
    sha256: str
    batcher: MicroBatcher

    def info(self, config: Config) -> ModelInfo:
        bundle = self.bundle
        return ModelInfo(
            name=self.name,
            format=bundle.kind,
            sha256=self.sha256,
            classes=bundle.classes,
            species=bundle.species,
            taxonomy=bundle.meta.get("taxonomy"),
            input_size=bundle.spec.input_size,
            settings=json_data(rule_settings(config, bundle, self.labels)),
            extended=bundle.extension_summary(),
        )


def load_token(path: str | Path | None) -> bytes | None:
    """The bearer token in ``path`` (surrounding white space dropped); None without a file.

    Raises:
        JianmuError: unreadable, empty or shorter than 16 characters.
    """
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise JianmuError(f"--token-file {path}: cannot read ({error})") from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise JianmuError(
            f"--token-file {path}: the token has {len(token)} characters; use at least "
            f"{MIN_TOKEN_LENGTH} (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token.encode("utf-8")


def authorized(header: bytes | None, token: bytes) -> bool:
    """``Authorization: Bearer <token>`` (terminals), or HTTP Basic with the token as the
    password (browsers on the upload page), compared in constant time."""
    scheme, _, given = (header or b"").partition(b" ")
    given = given.strip()
    if scheme.lower() == b"basic":
        try:
            given = base64.b64decode(given, validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            given = b""
    elif scheme.lower() != b"bearer":
        given = b""
    return hmac.compare_digest(given, token)


class _Gate:
    """ASGI middleware: the token check of every path but /healthz, and the request metrics."""

    def __init__(self, app, token: bytes | None, metrics: ServiceMetrics) -> None:
        self.app = app
        self.token = token
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = {"code": 500}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                answered["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if self.token is not None and scope["path"] not in OPEN_PATHS:
                header = dict(scope["headers"]).get(b"authorization")
                if not authorized(header, self.token):
                    self.metrics.fault("unauthorized")
                    await _refusal(scope["path"])(scope, receive, sending)
                    return
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            self.metrics.request(route_of(scope["path"]), answered["code"], elapsed)


def _refusal(path: str) -> Response:
    # A browser asks for the token (as the password) on the pages; clients get the Bearer scheme.
    scheme = 'Basic realm="jianmu"' if path in ("/", "/docs") else 'Bearer realm="jianmu"'
    detail = "missing or wrong token: send Authorization: Bearer <token>"
    return JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": scheme})


_IDENTIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [PHOTOS],
                    "properties": {
                        PHOTOS: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "the photos of one specimen (the field repeated)",
                        },
                        "declared": {
                            "type": "string",
                            "description": "the declared taxon: judged as jianmu verify",
                        },
                        "specimen": {"type": "string", "description": "the specimen's label"},
                    },
                }
            }
        },
    }
}


def build_app(config: Config, models: Mapping[str, str | Path | ModelBundle]) -> FastAPI:
    """The application serving ``models`` (name -> bundle or its path) as ``config`` says.

    Raises:
        JianmuError: no model, a bad name or model, an unusable token file.
    """
    if not models:
        raise JianmuError("give one or more models to serve (NAME=PATH or PATH)")
    token = load_token(config.serve.token_file)
    metrics = ServiceMetrics()
    served: dict[str, ServedModel] = {}
    for name, model in models.items():
        bundle = model if isinstance(model, ModelBundle) else load_model(model)
        labels = build_labels(config, bundle)
        batcher = MicroBatcher(
            partial(bundle.outputs, views=labels.views),
            config.serve.max_batch,
            config.serve.batch_wait_ms / 1000,
            name,
            partial(metrics.batch, name),
        )  # fmt: skip
        served[name] = ServedModel(name, bundle, labels, model_sha256(bundle.path), batcher)
    pool = ThreadPoolExecutor(config.predict.workers or default_workers(), "jianmu-serve")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            for entry in served.values():
                entry.batcher.close()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="jianmu",
        summary="Identification of specimens from photos, for the capture terminals.",
        lifespan=lifespan,
    )
    page = upload_page(list(served))

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        """Alive and serving (no token needed)."""
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response)
    async def metrics_text() -> Response:
        """Prometheus text: requests, latencies, photos, failures by reason, model batches."""
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def upload() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/v1/models", response_model=ModelsAnswer)
    async def list_models() -> dict:
        """The models served: classes, taxonomy version, bundle hash, thresholds in force."""
        return {"models": [entry.info(config) for entry in served.values()]}

    @app.post(
        "/v1/{model}/identify",
        response_model=IdentifyAnswer,
        openapi_extra=_IDENTIFY_BODY,
        responses={code: {"description": text} for code, text in _REFUSALS.items()},
    )
    async def identify(model: str, request: Request, sheet: bool = False) -> Any:
        """The photos of one specimen (``photos``, repeated): each photo's answer and the
        specimen's, as ``jianmu predict`` gives them (with ``declared``: as ``jianmu verify``),
        and the sealed inspection record. ``?sheet=true`` adds the inspection sheet (HTML)."""
        entry = served.get(model)
        if entry is None:
            metrics.fault("unknown_model")
            hint = did_you_mean(model, served, list_known=True)
            return JSONResponse({"detail": f"no model {model!r}{hint}"}, 404)
        try:
            upload = await read_upload(
                request.headers.get("content-type", ""),
                request.headers.get("content-length"),
                request.stream(),
                config.serve,
            )
        except UploadError as error:
            metrics.fault(error.reason)
            return JSONResponse({"detail": error.detail}, error.status)
        except ClientDisconnect:
            metrics.fault("disconnected")
            return Response(status_code=CLIENT_CLOSED)
        if not upload.photos:
            metrics.fault("bad_request")
            fields = ", ".join(FIELDS)
            detail = f"no photos: send one or more parts named '{PHOTOS}' (optional: {fields})"
            return JSONResponse({"detail": detail}, 422)
        loop = asyncio.get_running_loop()
        try:
            statuses, body = await _identify(config, entry, upload, sheet, pool, loop)
        except JianmuError as error:  # a declared name that matches nothing, or several
            metrics.fault("bad_request")
            return JSONResponse({"detail": str(error)}, 422)
        for status in statuses:
            metrics.photo(entry.name, status)
        # Encoded in the pool; the response model above documents it (and the tests check it).
        return Response(body, media_type="application/json")

    app.add_middleware(_Gate, token=token, metrics=metrics)
    return app


_REFUSALS = {
    401: "missing or wrong token",
    404: "no such model",
    408: "the request body came too slowly",
    413: "over a limit: bytes per photo, photos per request, request size",
    415: "not multipart/form-data",
    422: "no photos, or a declared name that matches no species or several",
}


async def _identify(
    config: Config, entry: ServedModel, upload: Upload, sheet: bool, pool, loop
) -> tuple[list[str], bytes]:
    """Decode in the pool, run the model in a batch shared with concurrent requests, then judge,
    seal and encode the answer in the pool: each photo's status, and the answer's JSON."""
    started = time.perf_counter()
    bundle = entry.bundle
    labels = entry.labels
    declared = upload.fields.get("declared")
    if declared:
        declarations = await loop.run_in_executor(pool, model_declarations, bundle, declared, None)
        labels = build_labels(config, bundle, declarations)
    specimen = upload.fields.get("specimen") or DEFAULT_SPECIMEN
    images = [InputImage(Path(name), specimen) for name, _ in upload.photos]
    paths = [image.path for image in images]
    with entry.batcher.expect() as slot:
        decoded = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _decode, data, path, bundle, sheet)
                for path, (_, data) in zip(paths, upload.photos, strict=True)
            )
        )
        batch = await loop.run_in_executor(pool, collect_batch, 0, paths, decoded, bundle.spec)
        if len(batch.images):
            logits, embeddings = await asyncio.wrap_future(slot.submit(batch.images))
        else:
            logits = np.zeros((0, bundle.num_classes), np.float32)
            embeddings = np.zeros((0, 0), np.float32)
    answer = partial(_answer, config, entry, labels, (batch, logits, embeddings), images, upload)
    return await loop.run_in_executor(pool, answer, sheet, started)


def _answer(
    config: Config,
    entry: ServedModel,
    labels: Labels,
    decoded: tuple,
    images: list[InputImage],
    upload: Upload,
    sheet: bool,
    started: float,
) -> tuple[list[str], bytes]:
    """The photos judged and sealed (:func:`jianmu.engine.predict.judge`), as JSON."""
    batch = decoded[0]
    inputs = [
        upload_entry(name, (kept or {}).get("sha256") or bytes_sha256(data), len(data))
        for (name, data), kept in zip(upload.photos, batch.extras, strict=True)
    ]
    thumbnails: dict[str, bytes] = {}
    seconds = time.perf_counter() - started
    result = judge(config, entry.bundle, labels, decoded, images, inputs, thumbnails, entry.sha256,
                   seconds)  # fmt: skip
    specimen = result.specimens[0]
    answer = json_data(
        {
            "model": entry.name,
            "specimen": specimen,
            "photos": result.images,
            "summary": result.summary,
            "record_sha256": result.record["record_sha256"],
            "record": result.record,
            "sheet": sheet_html(result.images, specimen, result.summary, thumbnails)
            if sheet
            else None,
        }
    )
    body = json.dumps(answer, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return [photo["status"] for photo in answer["photos"]], body


def _decode(data: bytes, name: Path, bundle: ModelBundle, thumbnail: bool):
    decode = partial(_from_bytes, data, min_side=bundle.min_image_side, thumbnail=thumbnail)
    return decode_safely(decode, name, bundle.spec)


def _from_bytes(data: bytes, name: Path, spec, min_side: int, thumbnail: bool):
    return decode_photo(data, name, spec, min_side, thumbnail)
