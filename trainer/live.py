"""Live keyword detection: a page that listens to the microphone, and a streaming service.

    python -m trainer.live [--model-dir JOB] [--host 127.0.0.1] [--port 8000]

then open http://127.0.0.1:8000/ and allow the microphone. The page (the `live/` folder,
its JavaScript installed by `make live` or `npm ci --prefix live`) has two modes:

- `/?mode=browser` (the default): the page runs the job's streaming int8 LiteRT model
  (`model_stream_int8.tflite`, 32 ms of audio per call) in the browser with LiteRT.js,
  and applies the smoothing, thresholds and refractory time of the job's detection.json
  itself: nothing but the page and the model leaves the server;
- `/?mode=server`: the page streams 16 kHz PCM over a WebSocket and this server detects
  with the same code as `trainer.detect` (`trainer.scoring.StreamDetector`).

The WebSocket (`/ws`), for any client (a device, a script: `trainer.live_client`):

    server -> {"type": "ready", "labels": [...], "keywords": [...], "sample_rate": 16000,
               "format": "s16le", "max_frame_bytes": 64000, "config": {detection.json}}
    client -> binary frames: 16-bit little-endian mono PCM at 16 kHz, at most
              max_frame_bytes each, any length that is a whole number of samples
    client -> {"type": "end"}    no more audio: the last windows are scored, their events
                                 sent, then {"type": "done", "seconds": S, "events": N};
                                 the next audio starts a new stream at time 0
    client -> {"type": "reset"}  drop the stream so far; the next audio starts at time 0
    server -> {"type": "event", "label": "yes", "time": 12.38, "score": 0.97}
    server -> {"type": "scores", "time": 12.4, "scores": {"yes": 0.91, ...}}  smoothed
              keyword scores of the latest window, after each window scored
    server -> {"type": "error", "message": "..."}  a frame it cannot use (the connection
              stays open)

`time` is seconds of audio since the stream started. Audio is taken at most `MAX_SPEED`
times faster than real time (a client sending faster is read more slowly); a client that
does not read what it is sent for `SEND_TIMEOUT_S` is closed; each client's audio is
scored apart, on a shared pool of threads, so a slow or vanished one never holds up the
others. The server binds to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import pathlib
import sys
import time
from typing import Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402
from aiohttp import WSMsgType, web  # noqa: E402

from pipelines import contract, events  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import scoring  # noqa: E402
from trainer.litert import runtime  # noqa: E402

PAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "live"
DEFAULT_MODEL_DIR = scoring.SHIPPED_MODEL_DIR
MAX_FRAME_BYTES = 64_000  # two seconds of 16-bit audio
HARD_FRAME_BYTES = 4 * MAX_FRAME_BYTES  # beyond this the connection is closed (1009)
MAX_SPEED = 50.0  # audio taken at most this many times faster than real time
SEND_TIMEOUT_S = 10.0
SCORER_THREADS = 2
PAGE_FILES = ("index.html", "app.js", "detector.js", "capture-worklet.js", "style.css")
MODEL_FILES = (runtime.STREAM_INT8_FILE, runtime.INT8_FILE, runtime.STREAM_FLOAT_FILE,
               runtime.FLOAT_FILE)
VENDOR = {"litertjs-core": "node_modules/@litertjs/core",
          "litertjs-wasm-utils": "node_modules/@litertjs/wasm-utils"}


class Session:
    """One client's stream: its detector, and when its audio may be taken."""

    def __init__(self, scorer: scoring.Scorer, config: events.Config,
                 max_speed: float = MAX_SPEED):
        self.scorer, self.config, self.max_speed = scorer, config, max_speed
        self.reset()

    def reset(self) -> None:
        self.detector = scoring.StreamDetector(self.scorer, self.config)
        self.started = time.monotonic()
        self.events = 0

    def due_in(self, samples: int) -> float:
        """Seconds to wait before taking `samples` more, to stay within MAX_SPEED."""
        audio_s = (self.detector.num_samples + samples) / contract.SAMPLE_RATE
        return max(0.0, audio_s / self.max_speed - (time.monotonic() - self.started))


def _messages(update: scoring.Update, columns: dict[str, int]) -> list[dict]:
    """The update's events and its last smoothed scores of the keywords (label: column)."""
    out = [{"type": "event", "label": event.label, "time": event.time, "score": event.score}
           for event in update.events]
    if len(update.times):
        last = update.smoothed[-1]
        out.append({"type": "scores", "time": round(float(update.times[-1]), 4),
                    "scores": {label: round(float(last[column]), 4)
                               for label, column in columns.items()}})
    return out


class LiveServer:
    """The page, the model files, and the WebSocket detector of one job."""

    def __init__(self, model_dir: str, page_dir: pathlib.Path = PAGE_DIR,
                 max_speed: float = MAX_SPEED):
        self.max_speed = max_speed
        self.page_dir = page_dir
        self.scorer = scoring.Scorer(model_dir)
        self.export_dir = self.scorer.export_dir
        _, self.config = self.scorer.operating_point(None)
        self.labels = self.scorer.labels
        self.keywords = events.keywords_of(self.labels)
        self.columns = {label: self.labels.index(label) for label in self.keywords}
        self.pool = concurrent.futures.ThreadPoolExecutor(SCORER_THREADS,
                                                          thread_name_prefix="scorer")

    def page_ready(self) -> Optional[str]:
        """Why the in-browser mode cannot run (None when it can)."""
        for name, folder in VENDOR.items():
            if not (self.page_dir / folder).is_dir():
                return (f"{self.page_dir / folder} missing (install the page's packages: "
                        f"make live, or npm ci --prefix {self.page_dir}); {name} is needed "
                        "for the in-browser mode, the server mode works without it")
        return None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 ** 2)
        app.add_routes([
            web.get("/", self.index), web.get("/ws", self.websocket),
            web.get("/favicon.ico", self.no_icon),
            web.get("/model/config.json", self.model_config),
            web.get("/model/{name}", self.model_file),
            web.get("/vendor/{package}/{path:.+}", self.vendor_file),
            web.get("/{name}", self.page_file)])
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, _app) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def index(self, request: web.Request) -> web.StreamResponse:
        return await self._file(self.page_dir / "index.html")

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def page_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in PAGE_FILES:
            raise web.HTTPNotFound()
        return await self._file(self.page_dir / name)

    async def vendor_file(self, request: web.Request) -> web.StreamResponse:
        folder = VENDOR.get(request.match_info["package"])
        if folder is None:
            raise web.HTTPNotFound()
        root = (self.page_dir / folder).resolve()
        path = (root / request.match_info["path"]).resolve()
        if root not in path.parents:
            raise web.HTTPNotFound()
        return await self._file(path)

    async def model_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in MODEL_FILES:
            raise web.HTTPNotFound()
        return await self._file(pathlib.Path(self.export_dir) / name)

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response({
            "labels": self.labels, "keywords": self.keywords,
            "config": events.config_to_dict(self.config),
            "sample_rate": contract.SAMPLE_RATE, "stream_model": runtime.STREAM_INT8_FILE,
            "stream_hops": runtime.STREAM_HOPS, "frame_samples": runtime.FRAME_SAMPLES,
            "warmup_calls": runtime.WARMUP_CALLS, "page_error": self.page_ready()})

    @staticmethod
    async def _file(path: pathlib.Path) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound()
        response = web.FileResponse(path)
        if path.suffix == ".wasm":
            response.content_type = "application/wasm"
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        session = Session(self.scorer, self.config, self.max_speed)
        loop = asyncio.get_running_loop()

        async def send(message: dict) -> bool:
            try:
                await asyncio.wait_for(ws.send_str(json.dumps(message)), SEND_TIMEOUT_S)
                return True
            except (asyncio.TimeoutError, ConnectionResetError, RuntimeError):
                await ws.close(code=1008, message=b"not reading")
                return False

        await send({"type": "ready", "labels": self.labels, "keywords": self.keywords,
                    "sample_rate": contract.SAMPLE_RATE, "format": "s16le",
                    "max_frame_bytes": MAX_FRAME_BYTES,
                    "config": events.config_to_dict(self.config)})
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                if not await self._audio(message.data, session, send, loop):
                    break
            elif message.type == WSMsgType.TEXT:
                if not await self._control(message.data, session, send, loop):
                    break
            else:
                break
        return ws

    async def _audio(self, data: bytes, session: Session, send, loop) -> bool:
        if len(data) > MAX_FRAME_BYTES:
            return await send({"type": "error", "message": f"frame of {len(data)} bytes, "
                               f"over {MAX_FRAME_BYTES}: send shorter frames"})
        if len(data) % 2:
            return await send({"type": "error", "message": f"frame of {len(data)} bytes: "
                               "not whole 16-bit samples"})
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        wait = session.due_in(len(samples))
        if wait:
            await asyncio.sleep(wait)
        update = await loop.run_in_executor(self.pool, session.detector.push, samples)
        session.events += len(update.events)
        for outgoing in _messages(update, self.columns):
            if not await send(outgoing):
                return False
        return True

    async def _control(self, text: str, session: Session, send, loop) -> bool:
        try:
            command = json.loads(text)
            kind = command["type"]
        except (ValueError, TypeError, KeyError):
            return await send({"type": "error", "message": "a text frame must be JSON with "
                               "a \"type\" (end or reset)"})
        if kind == "reset":
            session.reset()
            return True
        if kind != "end":
            return await send({"type": "error", "message": f"unknown type {kind!r} (end or "
                               "reset)"})
        seconds = session.detector.num_samples / contract.SAMPLE_RATE
        if session.detector.num_samples:
            update = await loop.run_in_executor(self.pool, session.detector.finish)
            session.events += len(update.events)
            for outgoing in _messages(update, self.columns):
                if not await send(outgoing):
                    return False
        finished = {"type": "done", "seconds": round(seconds, 4), "events": session.events}
        session.reset()
        return await send(finished)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.live",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help="a training job with _unknown_ (default: the detector that "
                             "comes with the repository, models/speech-commands)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-speed", type=float, default=MAX_SPEED,
                        help=f"audio taken at most this many times faster than real time "
                             f"per client (default {MAX_SPEED:g})")
    parser.add_argument("--page-dir", default=str(PAGE_DIR), help=argparse.SUPPRESS)
    return parser


def run(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port}: not a port number")
    if not 0 < args.max_speed <= 10_000:
        raise UserError(f"--max-speed must be in (0, 10000], got {args.max_speed}")
    server = LiveServer(args.model_dir, pathlib.Path(args.page_dir), args.max_speed)
    problem = server.page_ready()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"listening on http://{args.host}:{args.port}/ (browser mode) and "
          f"http://{args.host}:{args.port}/?mode=server; model {server.export_dir}",
          flush=True)
    try:
        web.run_app(server.app(), host=args.host, port=args.port, print=None,
                    handle_signals=True)
    except OSError as error:
        raise UserError(f"{args.host}:{args.port}: cannot listen ({error.strerror})") from None


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
