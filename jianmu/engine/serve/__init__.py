"""``jianmu serve``: the HTTP service of the capture terminals.

:func:`serve` checks what it is asked to expose (a host other than loopback needs a token, or
``serve.insecure``), then runs uvicorn with the application of :mod:`.app` in one process, or in
``serve.workers`` processes that each load the models (:func:`app_from_environment`). Endpoints:
``POST /v1/{model}/identify``, ``GET /v1/models``, ``GET /healthz``, ``GET /metrics``, ``GET /``
(the upload page) and FastAPI's ``/docs``. With an ONNX bundle nothing here imports torch.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image

from jianmu.bundle import load_model
from jianmu.config import Config, ServeConfig
from jianmu.engine.serve.app import build_app, load_token
from jianmu.engine.serve.metrics import MULTIPROCESS_FOLDER
from jianmu.errors import JianmuError

ENVIRONMENT = "JIANMU_SERVE"
"""What the server processes of ``serve.workers > 1`` are started with (JSON: config, models)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Announce = Callable[[str, str], None]
"""``announce(kind, line)``: kind ``warning`` or ``info``."""


def serve(
    config: Config,
    models: Sequence[str | Path] | Mapping[str, str | Path],
    announce: Announce | None = None,
) -> None:
    """Serve ``models`` (``NAME=PATH`` or a path, named by its file stem) until stopped, as the
    ``serve:`` settings say.

    Raises:
        JianmuError: no model or a bad one, a repeated name, an unusable token file, a host other
            than loopback without a token (unless ``serve.insecure``).
    """
    import uvicorn

    settings = config.serve
    _quiet_bomb_warnings()
    named = model_paths(models)
    token = load_token(settings.token_file)
    warning = exposure_warning(settings, token is not None)
    say = announce or (lambda kind, line: None)
    if warning:
        say("warning", warning)
    options = {
        "host": settings.host,
        "port": settings.port,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": 5,
        "ssl_certfile": str(settings.ssl_certfile) if settings.ssl_certfile else None,
        "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        "access_log": False,
        "server_header": False,
        "log_level": "info",
    }
    scheme = "https" if settings.ssl_certfile else "http"
    where = f"{scheme}://{settings.host}:{settings.port}"
    locked = "token required" if token else "no token"
    if settings.workers == 1:
        app = build_app(config, named)
        say("info", f"serving {', '.join(named)} on {where} ({locked}); Ctrl-C stops")
        uvicorn.run(app, **options)
        return
    for path in named.values():  # one clear error here rather than one per server process
        load_model(path)
    folder = tempfile.mkdtemp(prefix="jianmu-metrics-")
    saved = {key: os.environ.get(key) for key in (ENVIRONMENT, MULTIPROCESS_FOLDER)}
    os.environ[MULTIPROCESS_FOLDER] = folder
    os.environ[ENVIRONMENT] = json.dumps(
        {"config": config.model_dump(mode="json"), "models": {k: str(v) for k, v in named.items()}}
    )
    say("info", f"serving {', '.join(named)} on {where} ({locked}), {settings.workers} processes")
    try:
        uvicorn.run(
            f"{__name__}:app_from_environment", factory=True, workers=settings.workers, **options
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def app_from_environment():
    """The application of one server process of several (``serve.workers``)."""
    settings = json.loads(os.environ[ENVIRONMENT])
    _quiet_bomb_warnings()
    return build_app(Config.model_validate(settings["config"]), settings["models"])


def _quiet_bomb_warnings() -> None:
    """A photo over the pixel limit is answered "too large"; Pillow's warning about it would only
    fill the server's log (once per such photo)."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def model_paths(models: Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    """Name -> path of ``NAME=PATH`` arguments and plain paths (named by their file stem).

    Raises:
        JianmuError: none given, a name that is not a plain word, a name given twice.
    """
    if isinstance(models, Mapping):
        pairs = [(str(name), Path(path)) for name, path in models.items()]
    else:
        pairs = [_model_argument(str(model)) for model in models]
    if not pairs:
        raise JianmuError("give one or more models to serve: NAME=PATH or PATH")
    named: dict[str, Path] = {}
    for name, path in pairs:
        if not _NAME.fullmatch(name):
            raise JianmuError(
                f"model name {name!r}: use letters, digits, '_', '.' or '-' (NAME=PATH names one)"
            )
        if name in named:
            raise JianmuError(f"model name {name!r} given twice ({named[name]} and {path})")
        named[name] = path
    return named


def _model_argument(text: str) -> tuple[str, Path]:
    name, equals, path = text.partition("=")
    if equals and name and "/" not in name and "\\" not in name:
        return name, Path(path)
    return Path(text).stem, Path(text)


def exposure_warning(settings: ServeConfig, has_token: bool) -> str | None:
    """The warning of serving openly beyond this host (``serve.insecure``), else None.

    Raises:
        JianmuError: a host other than loopback without a token or ``serve.insecure``.
    """
    if has_token or is_loopback(settings.host):
        return None
    if not settings.insecure:
        raise JianmuError(
            f"refusing to serve on {settings.host} without a token: anyone who can reach it "
            "could use it; give --token-file FILE, or --insecure to serve openly anyway"
        )
    return (
        f"serving on {settings.host} without a token (--insecure): anyone who reaches it can use it"
    )


def is_loopback(host: str) -> bool:
    """Only this machine can connect: ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


__all__ = ["app_from_environment", "build_app", "exposure_warning", "model_paths", "serve"]
