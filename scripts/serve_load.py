"""Load on ``jianmu serve`` (issue 16): throughput, latency, errors and memory under concurrency.

    python scripts/serve_load.py MODEL.onnx [--levels 1,4,16] [--seconds 30] [--photos 3]
        [--size 1600x1200] [--workers 1] [--json out.json]

Starts the real server (``jianmu serve MODEL --port P`` in its own process, loopback only), makes
``--photos`` photo-like JPEGs of ``--size`` (:func:`predict_speed.make_photos`: a colour field,
fibre texture and grain, as a camera writes), and for each concurrency C of ``--levels`` runs C
clients for ``--seconds`` seconds, each posting the same specimen of those photos to
``/v1/NAME/identify`` as fast as it is answered. Per level: photos/s, p50/p95/p99 latency per
request, errors (any answer but 200, or no answer), and the server's resident memory (all its
processes) at the start and end of the level. Then ``jianmu predict`` on the same photos (96 file
names, in a fresh process, model loading not timed: :func:`predict_speed._in_child`), and the
ratio of the server's photos/s at the highest level to it.

The warm-up (``--warmup`` seconds) runs at the highest concurrency, so that the memory of that
many requests at once is taken before the levels: the growth from the first level's start to the
last one's end is what the server keeps. Every loop is bounded in time; the server is stopped at
the end, whatever happens. The clients share the machine with the server: on a 2-core CPU they
take some of its time (the body of a request is encoded once and sent as bytes, to keep their
share small).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict_speed import _in_child, link_copies, make_photos  # noqa: E402

NAME = "model"
PREDICT_FILES = 96


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the bundle to serve (.onnx)")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the levels")
    parser.add_argument("--photos", type=int, default=3, help="photos per request (a specimen)")
    parser.add_argument("--size", default="1600x1200", help="WxH of each photo")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a.b=v")
    parser.add_argument("--no-predict", action="store_true", help="skip the jianmu predict run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.lower().split("x"))
    levels = [int(level) for level in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="jianmu-load-") as scratch:
        work = Path(scratch)
        photos = make_photos(work / "photos", args.photos, (width, height), seed=16)
        report = {"model": str(args.model), "size": args.size, "photos_per_request": args.photos}
        with _server(args.model, args.workers, args.overrides) as (url, pid):
            report["levels"] = asyncio.run(_levels(url, pid, photos, levels, args))
        first, last = report["levels"][0], report["levels"][-1]
        report["rss_growth"] = last["rss_end_mib"] / first["rss_start_mib"] - 1
        if not args.no_predict:
            folder = link_copies(photos, work / "predict", PREDICT_FILES)
            report["predict"] = _in_child(args.model, folder, None, None, args.overrides)
            top = report["levels"][-1]
            report["ratio_to_predict"] = top["photos_per_s"] / report["predict"]["images_per_s"]
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


class _server:
    """``jianmu serve`` in its own process on a free loopback port; stopped on exit."""

    def __init__(self, model: Path, workers: int, overrides: list[str]) -> None:
        self.command = [sys.executable, "-m", "jianmu", "serve", f"{NAME}={model}"]
        self.command += ["--host", "127.0.0.1", "--workers", str(workers)]
        self.command += [f"--set={override}" for override in overrides]

    def __enter__(self) -> tuple[str, int]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [*self.command, "--port", str(port)], stdout=subprocess.DEVNULL, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"jianmu serve exited ({self.process.returncode})")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url, self.process.pid
            except httpx.HTTPError:
                time.sleep(0.2)
        self.__exit__()
        raise SystemExit("jianmu serve did not answer /healthz within 120 s")

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


async def _levels(url: str, pid: int, photos: list[Path], levels: list[int], args) -> list[dict]:
    body, content_type = _multipart(photos)
    headers = {"content-type": content_type}
    limits = httpx.Limits(max_connections=max(levels) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        # warm-up at the highest concurrency: the memory of that many requests at once is taken
        # before the first level, so that growth over the levels shows what is kept, not that
        await _load(client, body, headers, max(levels), args.warmup)
        results = []
        for concurrency in levels:
            rss_start = _tree_rss_mib(pid)
            latencies, errors, seconds = await _load(
                client, body, headers, concurrency, args.seconds
            )
            rss_end = _tree_rss_mib(pid)
            p50, p95, p99 = (
                np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
            )
            results.append(
                {
                    "concurrency": concurrency,
                    "requests": len(latencies),
                    "photos_per_s": len(latencies) * len(photos) / seconds,
                    "p50_ms": float(p50),
                    "p95_ms": float(p95),
                    "p99_ms": float(p99),
                    "errors": errors,
                    "rss_start_mib": rss_start,
                    "rss_end_mib": rss_end,
                }
            )
        return results


async def _load(client, body: bytes, headers: dict, concurrency: int, seconds: float):
    """``concurrency`` clients posting ``body`` until ``seconds`` have passed: the latencies of
    the answered requests (200), the count of the others, and the seconds it took."""
    path = f"/v1/{NAME}/identify"
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def client_loop() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers=headers)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def _multipart(photos: list[Path]) -> tuple[bytes, str]:
    """The request body of a specimen of ``photos``, encoded once."""
    request = httpx.Request(
        "POST",
        "http://load/",
        files=[("photos", (path.name, path.read_bytes(), "image/jpeg")) for path in photos],
        data={"specimen": "load"},
    )
    buffer = io.BytesIO(request.read())
    return buffer.getvalue(), request.headers["content-type"]


def _tree_rss_mib(pid: int) -> float:
    """The resident memory of ``pid`` and its child processes (the server's workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry.name) == pid or int(fields.get("PPid", "0").strip()) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


def _table(report: dict) -> str:
    lines = [
        f"model {report['model']}, {report['photos_per_request']} photos of {report['size']} per "
        "request",
        "",
        "| C | requests | photos/s | p50 ms | p95 ms | p99 ms | errors | RSS start MiB | "
        "RSS end MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in report["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['requests']} | {level['photos_per_s']:.1f} | "
            f"{level['p50_ms']:.0f} | {level['p95_ms']:.0f} | {level['p99_ms']:.0f} | "
            f"{level['errors']} | {level['rss_start_mib']:.0f} | {level['rss_end_mib']:.0f} |"
        )
    lines.append(
        f"\nserver memory after the warm-up to the end: {report['rss_growth']:+.1%} (target < +10%)"
    )
    if "predict" in report:
        lines += [
            "",
            f"jianmu predict on the same photos: {report['predict']['images_per_s']:.1f} photos/s",
            f"server at C = {report['levels'][-1]['concurrency']} / predict: "
            f"{report['ratio_to_predict']:.2f} (target >= 0.8)",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
