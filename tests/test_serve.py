"""`jianmu serve`: the real server (uvicorn on a free loopback port, in a thread, or the command in
a subprocess) talked to with httpx and raw sockets: answers identical to `jianmu predict` and
`jianmu verify`, the token gate, limits, every bad photo, malformed and broken uploads, slow and
vanishing clients, metrics, the upload page in headless Chromium; and the micro-batcher alone.
Every wait is bounded. The model is test_predict's tiny one (3 wood species)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from imagefiles import write_image, write_png_header, write_truncated_jpeg
from prometheus_client.parser import text_string_to_metric_families
from test_predict import trained  # noqa: F401 - the tiny trained model, a module fixture
from test_predict_html import _render
from tiny import settings
from typer.testing import CliRunner

from jianmu.bundle import load_model
from jianmu.cli import app as cli
from jianmu.config import ServeConfig
from jianmu.engine.predict import predict
from jianmu.engine.serve import app as serve_app
from jianmu.engine.serve import build_app, exposure_warning, is_loopback, model_paths
from jianmu.engine.serve.answers import IdentifyAnswer, ModelsAnswer
from jianmu.engine.serve.batcher import MicroBatcher
from jianmu.engine.verify import verify
from jianmu.errors import JianmuError
from jianmu.record import bytes_sha256, check_record, json_data, model_sha256, seal

TOKEN = "test-token-0123456789-abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = (
    "serve.max_photo_bytes=200000", "serve.max_photos=6", "serve.max_request_bytes=700000",
    "serve.idle_timeout=1", "serve.request_timeout=4", "serve.batch_wait_ms=20",
)  # fmt: skip
IDENTIFY = "/v1/wood/identify"
DEADLINE = 20.0  # seconds any wait in these tests may take


# --- the server -----------------------------------------------------------------------------------


@contextmanager
def running(application) -> Iterator[str]:
    """``application`` served by uvicorn on a free loopback port in a thread; always stopped."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        sock.close()


@pytest.fixture(scope="module")
def bundle(trained):  # noqa: F811 - the fixture imported above
    return load_model(trained[2])


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token.txt"
    path.write_text(f"  {TOKEN}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(bundle, token_file) -> Iterator[str]:
    """The closed server (a token) with small limits."""
    config = settings(*LIMITS, f"serve.token_file={token_file}")
    with running(build_app(config, {"wood": bundle})) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=DEADLINE) as session:
        yield session


@pytest.fixture(scope="module")
def photos(trained) -> list[Path]:  # noqa: F811
    """Three training photos (they pass the quality gate fitted on them)."""
    base, _, _ = trained
    return sorted((base / "data").rglob("*.jpg"))[:15:5]


def _files(named: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (name, data, "application/octet-stream")) for name, data in named]


def _metrics(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _count(metrics: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(
        value for (found, keys), value in metrics.items() if found == name and wanted <= set(keys)
    )


def _plain(value):
    return json.loads(json.dumps(json_data(value)))


# --- answers: the same as jianmu predict and jianmu verify ----------------------------------------


@pytest.fixture(scope="module")
def specimen_folder(photos, tmp_path_factory) -> Path:
    """One specimen ``S1`` of three good photos, a truncated one and a zero-byte one."""
    folder = tmp_path_factory.mktemp("field") / "S1"
    folder.mkdir()
    for name, source in zip(("a.jpg", "b.jpg", "c.jpg"), photos, strict=True):
        shutil.copy(source, folder / name)
    write_truncated_jpeg(folder / "cut.jpg", seed=3, keep=0.4)
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def _specimen_files(folder: Path) -> list[tuple[str, bytes]]:
    names = ["a.jpg", "b.jpg", "c.jpg", "cut.jpg", "empty.jpg"]  # predict's (natural) order
    return [(name, (folder / name).read_bytes()) for name in names]


def _without_path(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "path"} for record in records]


def test_identify_answers_as_predict_does_with_a_sealed_record(
    client,
    trained,  # noqa: F811 - the fixture imported above
    specimen_folder,
    tmp_path,
):
    expected = predict(
        settings(out=tmp_path / "predict.json"), trained[2], [specimen_folder.parent]
    )
    files = _specimen_files(specimen_folder)
    response = client.post(IDENTIFY, files=_files(files), data={"specimen": "S1"})
    assert response.status_code == 200, response.text
    answer = response.json()
    IdentifyAnswer.model_validate(answer)  # the documented shape

    # identical statuses, answers, probabilities, scores, flags, quality notes, roll-up
    assert [photo["path"] for photo in answer["photos"]] == [name for name, _ in files]
    assert _without_path(answer["photos"]) == _without_path(_plain(expected.images))
    assert [answer["specimen"]] == _plain(expected.specimens)
    assert [photo["status"] for photo in answer["photos"]] == [
        "ok", "ok", "ok", "truncated image", "zero-byte file",
    ]  # fmt: skip
    for key in ("images", "ok", "failed", "identified", "unknown", "ranks", "per_species"):
        assert answer["summary"][key] == expected.summary[key], key

    # the inspection record: sealed, its hash in the answer, every photo's bytes hashed
    record = answer["record"]
    assert answer["record_sha256"] == record["record_sha256"] == answer["summary"]["record_sha256"]
    assert seal(record)["record_sha256"] == answer["record_sha256"]
    assert record["model"]["sha256"] == model_sha256(trained[2])
    assert [(entry["path"], entry["sha256"], entry["abs"]) for entry in record["inputs"]] == [
        (name, bytes_sha256(data), None) for name, data in files
    ]
    # a terminal keeps the record beside the photos: `jianmu record check` then checks them all
    case = tmp_path / "case"
    case.mkdir()
    for name, data in files:
        (case / name).write_bytes(data)
    (case / "S1.record.json").write_text(json.dumps(record), encoding="utf-8")
    check = check_record(case / "S1.record.json")
    assert check.ok and check.inputs_checked == len(files), check.lines()


def test_declared_taxon_is_judged_as_verify_does(client, trained, specimen_folder, tmp_path):  # noqa: F811
    declared = "Tectona grandis"
    config = settings(f"verify.declared={declared}", out=tmp_path / "verify.json")
    expected = verify(config, trained[2], [specimen_folder.parent])
    data = {"specimen": "S1", "declared": declared}
    answer = client.post(IDENTIFY, files=_files(_specimen_files(specimen_folder)), data=data).json()
    keys = ("declared", "decision", "reason", "consequence")
    assert [{k: p.get(k) for k in keys} for p in answer["photos"]] == [
        {k: p.get(k) for k in keys} for p in _plain(expected.images)
    ]
    assert answer["specimen"] == _plain(expected.specimens)[0]
    assert answer["specimen"]["decision"] is not None
    assert answer["summary"]["decisions"] == expected.summary["decisions"]
    assert answer["record"]["command"] == "verify"

    refused = client.post(IDENTIFY, files=_files(_specimen_files(specimen_folder)[:1]),
                          data={"declared": "Nonexistia imaginaria"})  # fmt: skip
    assert refused.status_code == 422 and "Nonexistia imaginaria" in refused.json()["detail"]


def test_concurrent_requests_share_model_runs_and_get_the_same_answers(client, photos):
    files = _files([(path.name, path.read_bytes()) for path in photos])
    alone = client.post(IDENTIFY, files=files).json()
    before = _metrics(client)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post(IDENTIFY, files=files), range(6)))
    after = _metrics(client)
    assert [response.status_code for response in answers] == [200] * 6
    for response in answers:
        assert response.json()["photos"] == alone["photos"]  # whatever batch they ran in
        assert response.json()["specimen"] == alone["specimen"]
    photos_run = _count(after, "jianmu_batch_photos_sum") - _count(
        before, "jianmu_batch_photos_sum"
    )
    runs = _count(after, "jianmu_batch_photos_count") - _count(before, "jianmu_batch_photos_count")
    assert photos_run == 6 * len(photos)
    assert 1 <= runs <= 6


def test_models_health_and_metrics(client, server, trained, bundle):  # noqa: F811
    models = client.get("/v1/models").json()
    ModelsAnswer.model_validate(models)
    [wood] = models["models"]
    assert wood["name"] == "wood" and wood["classes"] == bundle.classes
    assert wood["sha256"] == model_sha256(trained[2])
    assert wood["taxonomy"] == bundle.meta["taxonomy"] and wood["taxonomy"]["version"]
    assert wood["settings"]["unknown_rule"] == bundle.calibration(1).rule
    assert wood["settings"]["species_threshold"] == pytest.approx(bundle.calibration(1).threshold)
    assert wood["settings"]["quality_gate"] == "on"

    assert httpx.get(f"{server}/healthz", timeout=DEADLINE).json() == {"status": "ok"}  # no token

    before = _metrics(client)
    files = _files([("good.jpg", (trained[0] / "data").rglob("*.jpg").__next__().read_bytes()),
                    ("nothing.jpg", b""), ("notes.jpg", b"plain text")])  # fmt: skip
    assert client.post(IDENTIFY, files=files).status_code == 200
    after = _metrics(client)
    route = {"route": "/v1/{model}/identify"}
    assert _count(after, "jianmu_requests_total", code="200", **route) == 1 + _count(
        before, "jianmu_requests_total", code="200", **route
    )
    assert _count(after, "jianmu_request_seconds_count", **route) == 1 + _count(
        before, "jianmu_request_seconds_count", **route
    )
    for status, added in (("ok", 1), ("failed", 2)):
        assert _count(after, "jianmu_photos_total", model="wood", status=status) == added + _count(
            before, "jianmu_photos_total", model="wood", status=status
        )
    for reason in ("zero-byte file", "not an image"):
        found = _count(after, "jianmu_photo_failures_total", reason=reason)
        assert found == 1 + _count(before, "jianmu_photo_failures_total", reason=reason)


# --- closed to strangers --------------------------------------------------------------------------


def test_every_endpoint_but_healthz_needs_the_token(server, photos, monkeypatch):
    files = _files([(photos[0].name, photos[0].read_bytes())])
    with httpx.Client(base_url=server, timeout=DEADLINE) as stranger:
        for method, path in (
            ("GET", "/"),
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("GET", "/docs"),
            ("GET", "/openapi.json"),
            ("GET", "/nowhere"),
        ):
            assert stranger.request(method, path).status_code == 401, path  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789-abcdefgh"},
                        {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": TOKEN},
                        {"Authorization": f"Token {TOKEN}"}):  # fmt: skip
            refused = stranger.post(IDENTIFY, files=files, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
        page = stranger.get("/")
        assert page.headers["www-authenticate"].startswith("Basic")  # a browser asks for it
        assert stranger.get("/healthz").status_code == 200
        # the browser's answer: the token as the password (any user name)
        basic = base64.b64encode(f"inspector:{TOKEN}".encode()).decode()
        assert stranger.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert stranger.post(IDENTIFY, files=files, headers=AUTH).status_code == 200
        metrics = _metrics(httpx.Client(base_url=server, headers=AUTH))
    assert _count(metrics, "jianmu_request_faults_total", reason="unauthorized") >= 12

    compared = []
    real = serve_app.hmac.compare_digest
    monkeypatch.setattr(
        serve_app.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b)
    )
    assert serve_app.authorized(f"Bearer {TOKEN}".encode(), TOKEN.encode())
    assert not serve_app.authorized(b"Bearer nope", TOKEN.encode())
    assert not serve_app.authorized(None, TOKEN.encode())
    assert len(compared) == 3  # constant time, whatever the header


def test_beyond_loopback_needs_a_token_or_insecure(trained, tmp_path):  # noqa: F811
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(trained[2]), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without a token" in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) <= 2  # one red line (wrapped at most once)

    warning = exposure_warning(ServeConfig(host="0.0.0.0", insecure=True), has_token=False)
    assert warning and "anyone" in warning
    assert exposure_warning(ServeConfig(host="192.168.1.20"), has_token=True) is None
    assert all(map(is_loopback, ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.20", "example.org", "")))

    short = tmp_path / "short.txt"
    short.write_text("hunter2\n", encoding="utf-8")
    for token_file, words in ((short, "at least 16"), (tmp_path / "absent.txt", "cannot read")):
        result = runner.invoke(cli, ["serve", str(trained[2]), "--token-file", str(token_file)])
        assert result.exit_code == 2 and words in result.output
    result = runner.invoke(cli, ["serve", str(tmp_path / "gone.onnx")])
    assert result.exit_code == 2 and "model not found" in result.output


def test_model_names():
    assert model_paths(["wood=/m/a.onnx", "/m/insect.onnx", "seed=x=y.onnx"]) == {
        "wood": Path("/m/a.onnx"), "insect": Path("/m/insect.onnx"), "seed": Path("x=y.onnx"),
    }  # fmt: skip
    assert model_paths({"w": "a.onnx"}) == {"w": Path("a.onnx")}
    for bad, words in ((["a.onnx", "b/a.onnx"], "given twice"), (["bad name=a.onnx"], "letters"),
                       ([], "one or more")):  # fmt: skip
        with pytest.raises(JianmuError, match=words):
            model_paths(bad)


# --- limits, bad photos, broken requests ----------------------------------------------------------


def test_limits_are_413_and_bad_requests_say_why(client, photos):
    good = (photos[0].name, photos[0].read_bytes())
    cases = [
        (_files([good, ("big.jpg", os.urandom(200_001))]), {}, 413, "'big.jpg' is over the limit"),
        (_files([good] * 7), {}, 413, "more than 6 photos"),
        (_files([("a", os.urandom(190_000))] * 4), {}, 413, "the request is over the limit"),
        ([("photo", ("a.jpg", good[1], "image/jpeg"))], {}, 400, "did you mean 'photos'?"),
        ([("specimen", (None, b"S1"))], {}, 422, "no photos"),  # multipart, without photos
        (_files([good]), {"declared": "x" * 2000}, 413, "field 'declared' is over the limit"),
    ]
    for files, data, status, words in cases:
        response = client.post(IDENTIFY, files=files, data=data)
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["detail"], response.json()
    # no Content-Length (chunked): counted as it arrives
    body = httpx.Request("POST", "http://x/", files=_files([("a", os.urandom(190_000))] * 4))
    chunks = (body.read()[start : start + 65536] for start in range(0, 800_000, 65536))
    response = client.post(
        IDENTIFY, content=chunks, headers={"content-type": body.headers["content-type"]}
    )
    assert response.status_code == 413 and "request is over the limit" in response.json()["detail"]
    assert client.post(IDENTIFY, json={"photos": []}).status_code == 415
    missing = client.post("/v1/wod/identify", files=_files([good]))
    assert missing.status_code == 404 and "did you mean 'wood'?" in missing.json()["detail"]
    metrics = _metrics(client)
    assert _count(metrics, "jianmu_request_faults_total", reason="too_large") >= 5
    assert client.post(IDENTIFY, files=_files([good])).status_code == 200  # still answering


def test_every_bad_photo_is_answered_in_its_own_record(client, photos, tmp_path):
    write_truncated_jpeg(tmp_path / "cut.jpg", seed=2, keep=0.5)
    write_png_header(tmp_path / "bomb.png", 12_000, 12_000)
    write_image(tmp_path / "tiny.png", seed=1, size=(8, 8))
    named = [
        ("good.jpg", photos[1].read_bytes()),
        ("empty.jpg", b""),
        ("cut.jpg", (tmp_path / "cut.jpg").read_bytes()),
        ("notes.jpg", b"not a picture, just text\n"),
        ("bomb.png", (tmp_path / "bomb.png").read_bytes()),
        ("tiny.png", (tmp_path / "tiny.png").read_bytes()),
    ]
    response = client.post(IDENTIFY, files=_files(named))
    assert response.status_code == 200
    statuses = [photo["status"] for photo in response.json()["photos"]]
    assert statuses[:5] == [
        "ok", "zero-byte file", "truncated image", "not an image",
        f"too large ({12_000 * 12_000} pixels)",
    ]  # fmt: skip
    assert statuses[5].startswith("too small to judge (8x8 px")
    assert response.json()["specimen"]["ok_images"] == 1
    # a request of nothing readable is answered too: no answer, and why
    nothing = client.post(IDENTIFY, files=_files(named[1:3])).json()
    assert nothing["specimen"]["verdict"] is None and nothing["specimen"]["ok_images"] == 0


def _raw(server: str, head: str, body: bytes = b"", timeout: float = DEADLINE) -> socket.socket:
    host, port = server.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=timeout)
    connection.sendall(head.encode("latin-1") + body)
    return connection


def _head(length: int, boundary: str = "XyZ") -> str:
    return (
        f"POST {IDENTIFY} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data{'; boundary=' + boundary if boundary else ''}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )


def _answer_of(connection: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and b'"}' in received:
                break
    finally:
        connection.close()
    return received


def test_malformed_multipart_is_400(server, client, photos):
    part = b'--XyZ\r\nContent-Disposition: form-data; name="photos"; filename="a.jpg"\r\n\r\n'
    whole = part + photos[0].read_bytes() + b"\r\n--XyZ--\r\n"
    nameless = b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n"
    cases = {  # case: (boundary, body)
        "no boundary": ("", whole),
        "no closing boundary": ("XyZ", part + b"x" * 100),
        "garbage": ("XyZ", b"\x00\x01 not multipart!!"),
        "a part without a name": ("XyZ", nameless),
    }
    for case, (boundary, body) in cases.items():
        answer = _answer_of(_raw(server, _head(len(body), boundary), body))
        assert answer.startswith(b"HTTP/1.1 400"), (case, answer[:300])
        assert b"malformed multipart" in answer, case
    assert _answer_of(_raw(server, _head(len(whole)), whole)).startswith(b"HTTP/1.1 200")
    assert _count(_metrics(client), "jianmu_request_faults_total", reason="malformed") >= 4


def test_vanishing_and_slow_clients_do_not_stop_the_others(server, client, photos):
    files = _files([(photos[0].name, photos[0].read_bytes())])
    before = _metrics(client)
    part = b'--XyZ\r\nContent-Disposition: form-data; name="photos"; filename="a.jpg"\r\n\r\n'
    # a client that goes away halfway through its upload
    gone = _raw(server, _head(150_000), part + b"\xff" * 50_000)
    gone.close()
    # a slow client: half a body, then nothing (the server gives up after serve.idle_timeout)
    slow = _raw(server, _head(150_000), part + b"\xff" * 10_000)
    started = time.monotonic()
    others = [client.post(IDENTIFY, files=files) for _ in range(3)]
    answered_others = time.monotonic() - started
    assert [response.status_code for response in others] == [200] * 3
    assert answered_others < 1.0  # while the slow client still holds its connection
    answer = _answer_of(slow)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in answer
    deadline = time.monotonic() + DEADLINE
    while True:
        after = _metrics(client)
        counted = {
            reason: _count(after, "jianmu_request_faults_total", reason=reason)
            - _count(before, "jianmu_request_faults_total", reason=reason)
            for reason in ("disconnected", "timeout")
        }
        if counted == {"disconnected": 1, "timeout": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counted == {"disconnected": 1, "timeout": 1}
    assert client.post(IDENTIFY, files=files).status_code == 200


# --- the command, in its own processes ------------------------------------------------------------


def test_the_command_serves_with_several_processes_and_no_torch(trained, token_file, photos):  # noqa: F811
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "jianmu", "serve", f"wood={trained[2]}", "--port", str(port),
               "--workers", "2", "--token-file", str(token_file)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with httpx.Client(base_url=url, headers=AUTH, timeout=DEADLINE) as session:
            files = _files([(photos[0].name, photos[0].read_bytes())])
            for _ in range(4):
                assert session.post(IDENTIFY, files=files).status_code == 200
            # the processes share their counts: any of them answers for all
            for _ in range(4):
                counted = _count(_metrics(session), "jianmu_requests_total",
                                 route="/v1/{model}/identify", code="200")  # fmt: skip
                assert counted == 4
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            output = process.communicate(timeout=DEADLINE)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate(timeout=DEADLINE)[0].decode()
    assert "serving wood on http://127.0.0.1" in output and "2 processes" in output

    code = (
        "import sys; from jianmu.config import load_config; "
        "from jianmu.engine.serve import build_app; "
        f"build_app(load_config(), {{'wood': {str(trained[2])!r}}}); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- the upload page ------------------------------------------------------------------------------

_PAGE_PROBE = r"""
(() => {
  const result = document.getElementById("result");
  const status = document.getElementById("status");
  if (!window.probeStarted) {
    window.probeStarted = true;
    const chosen = new DataTransfer();
    for (const [name, encoded] of PHOTOS) {
      const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
      chosen.items.add(new File([bytes], name, {type: "image/jpeg"}));
    }
    const input = document.getElementById("photos");
    input.files = chosen.files;
    input.dispatchEvent(new Event("change"));
    window.chosenShown = document.querySelectorAll("#chosen img").length;
    document.querySelector("input[name=specimen]").value = "S 7";
    document.getElementById("send").click();
    return "pending";
  }
  if (!result.dataset.verdict && status.className !== "error") return "pending";
  const all = (selector) => [...result.querySelectorAll(selector)];
  return JSON.stringify({
    chosen: window.chosenShown,
    title: document.querySelector("h1").textContent,
    verdict: result.dataset.verdict,
    status: status.textContent,
    error: status.className === "error",
    heading: all(".sheet h3").map((node) => node.textContent),
    badge: all(".sheet h3 .verdict").map((node) => node.textContent),
    chinese: all(".sheet .zh").map((node) => node.textContent),
    candidates: all(".sheet .candidates tbody tr").map((row) => row.cells[0].textContent),
    pictures: all(".sheet .photos img").map((img) => [img.alt, img.complete, img.naturalWidth]),
    text: result.innerText,
    fetched: performance.getEntriesByType("resource").map((entry) => entry.name),
  });
})()
"""


def _identified_specimen(url: str, trained) -> tuple[list[tuple[str, bytes]], dict]:  # noqa: F811
    """The photos of a training specimen the model names a species for (a Chinese name to show),
    and the API's answer to them."""
    folders = sorted({path.parent for path in (trained[0] / "data").rglob("*.jpg")})
    for folder in folders:
        named = [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]
        answer = httpx.post(
            f"{url}{IDENTIFY}", files=_files(named), data={"specimen": "S 7"}, timeout=DEADLINE
        ).json()
        if answer["specimen"]["chinese_name"]:
            return named, answer
    raise AssertionError(f"the model names no species for any of {len(folders)} specimens")


def test_the_upload_page_identifies_in_a_browser(bundle, trained):  # noqa: F811
    with running(build_app(settings(*LIMITS), {"wood": bundle})) as url:
        page = httpx.get(f"{url}/", timeout=DEADLINE)
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert "<script src" not in page.text and "<link" not in page.text
        named, expected = _identified_specimen(url, trained)
        encoded = json.dumps([[name, base64.b64encode(data).decode()] for name, data in named])
        rendered, console = _render(f"{url}/", _PAGE_PROBE.replace("PHOTOS", encoded))
    assert console == [] and not rendered["error"], (console, rendered["status"])
    specimen = expected["specimen"]
    assert rendered["chosen"] == len(named)
    assert rendered["title"] == "Identify a specimen · 鉴定样本"
    assert rendered["verdict"] == specimen["verdict"]
    assert rendered["status"].startswith(specimen["verdict"])
    shown = re.search(r"record ([0-9a-f]{16})$", rendered["status"]).group(1)
    assert re.search(f"inspection record {shown}[0-9a-f]{{48}}", rendered["text"])  # the footer
    assert rendered["heading"] and rendered["heading"][0].startswith("Specimen S 7")
    assert rendered["candidates"] == [entry["species"] for entry in specimen["top"]]
    assert rendered["chinese"] == [specimen["chinese_name"]]  # 柚木, 降香黄檀, ...
    assert [alt for alt, _, _ in rendered["pictures"]] == [name for name, _ in named]
    assert all(complete and width > 0 for _, complete, width in rendered["pictures"])
    assert all(name.startswith((url, "data:", "blob:")) for name in rendered["fetched"])


# --- the micro-batcher ----------------------------------------------------------------------------


def _model(log: list[int]):
    """A stand-in model: logits are each image's first pixel; it logs each run's size."""

    def run(images: np.ndarray):
        log.append(len(images))
        return images[:, :1, 0, 0], images[:, 0, 0, :2]

    return run


def _images(*values: float) -> np.ndarray:
    return np.stack([np.full((1, 2, 2), value, np.float32) for value in values])


def test_batcher_waits_for_announced_photos_only():
    log: list[int] = []
    batcher = MicroBatcher(_model(log), max_batch=8, wait=2.0)
    try:
        started = time.monotonic()
        alone = batcher.submit(_images(1.0)).result(DEADLINE)
        assert time.monotonic() - started < 1.0  # nothing announced: no wait
        assert alone[0].tolist() == [[1.0]]
        with batcher.expect() as first, batcher.expect() as second:
            one = first.submit(_images(2.0, 3.0))
            time.sleep(0.1)
            two = second.submit(_images(4.0))
        logits = one.result(DEADLINE)[0], two.result(DEADLINE)[0]
        assert [row.tolist() for row in logits] == [[[2.0], [3.0]], [[4.0]]]
        assert log == [1, 3]  # the two requests ran together
        with batcher.expect():  # announced, then withdrawn (the request failed): no wait
            pass
        started = time.monotonic()
        batcher.submit(_images(5.0)).result(DEADLINE)
        assert time.monotonic() - started < 1.0
    finally:
        batcher.close()


def test_batcher_splits_large_requests_and_passes_errors_on():
    log: list[int] = []
    batcher = MicroBatcher(_model(log), max_batch=2, wait=0.0)
    try:
        logits, embeddings = batcher.submit(_images(1, 2, 3, 4, 5)).result(DEADLINE)
        assert logits[:, 0].tolist() == [1, 2, 3, 4, 5] and embeddings.shape == (5, 2)
        assert log == [2, 2, 1]
    finally:
        batcher.close()

    def broken(images):
        raise RuntimeError("the model failed")

    batcher = MicroBatcher(broken, max_batch=4, wait=0.0)
    try:
        with pytest.raises(RuntimeError, match="the model failed"):
            batcher.submit(_images(1.0)).result(DEADLINE)
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_images(1.0))
