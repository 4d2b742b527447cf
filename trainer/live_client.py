"""Streams a recording to a live server and prints its events as `trainer.detect` does.

    python -m trainer.live_client --server http://127.0.0.1:8000 recording.wav
    python -m trainer.live_client --server http://HOST:PORT --json --speed 20 long.flac

The recording (any format `trainer.detect` reads, resampled to 16 kHz) is sent as 16-bit
PCM in frames of 32 ms, in real time by default (`--speed N`: N times faster), then the
end of the stream; each event is printed when the server sends it, as
`path  time  label  score`, or with `--json` as `trainer.detect --json` prints it. With
`--latency`, a last line on stderr gives the delay from the frame that completed an
event's window to the event's arrival (median and 95th percentile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Optional

import aiohttp
import numpy as np

from pipelines import audio, contract, inputs
from pipelines.errors import PartialFailure, UserError, run_cli

FRAME_SAMPLES = 512  # 32 ms


def frames(path: str) -> list[np.ndarray]:
    """The recording as 16-bit frames of FRAME_SAMPLES (the last one shorter)."""
    samples = np.concatenate(list(audio.read_blocks(path)))
    # x 32768: a 16-bit file decodes to v / 32768, so its samples go back exactly as they were.
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    return [pcm[start:start + FRAME_SAMPLES] for start in range(0, len(pcm), FRAME_SAMPLES)]


async def stream(url: str, path: str, speed: float, as_json: bool, out=sys.stdout) -> dict:
    """Sends one recording; prints and returns its events and the latencies seen."""
    name = inputs.printable(path)
    pcm = frames(path)
    sent_at: list[float] = []  # when the frame ending at each FRAME_SAMPLES boundary left
    found, latencies, errors = [], [], []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            ready = await ws.receive_json()
            if ready.get("type") != "ready":
                raise UserError(f"{url}: not a live detection server (it said {ready})")

            async def send() -> None:
                start = time.monotonic()
                for number, frame in enumerate(pcm):
                    due = start + number * FRAME_SAMPLES / contract.SAMPLE_RATE / speed
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await ws.send_bytes(frame.tobytes())
                    sent_at.append(time.monotonic())
                await ws.send_str(json.dumps({"type": "end"}))

            sender = asyncio.create_task(send())
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                item = json.loads(message.data)
                if item["type"] == "event":
                    result = {"path": name, "label": item["label"], "time": item["time"],
                              "score": item["score"]}
                    found.append(result)
                    print(json.dumps(result) if as_json else
                          f"{name}\t{item['time']:.2f}\t{item['label']}\t{item['score']:.3f}",
                          file=out, flush=True)
                    frame = min(len(sent_at), int(np.ceil(item["time"] * contract.SAMPLE_RATE
                                                          / FRAME_SAMPLES))) - 1
                    if 0 <= frame < len(sent_at):
                        latencies.append(time.monotonic() - sent_at[frame])
                elif item["type"] == "error":
                    errors.append(item["message"])
                    print(f"error: {url}: {item['message']}", file=sys.stderr)
                elif item["type"] == "done":
                    break
            await sender
    return {"events": found, "latencies": latencies, "errors": errors}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.live_client",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", metavar="FILE", help="a recording (WAV, FLAC, OGG, MP3)")
    parser.add_argument("--server", required=True,
                        help="the live server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of text")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="times faster than real time (default 1)")
    parser.add_argument("--latency", action="store_true",
                        help="print the events' delay (p50, p95) on stderr at the end")
    return parser


def websocket_url(server: str) -> str:
    if server.startswith(("ws://", "wss://")):
        base = server
    elif server.startswith(("http://", "https://")):
        base = "ws" + server[len("http"):]
    else:
        raise UserError(f"--server {server}: give http://HOST:PORT")
    return base.rstrip("/") + "/ws" if not base.rstrip("/").endswith("/ws") else base


def run(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if not 0 < args.speed <= 1000:
        raise UserError(f"--speed must be in (0, 1000], got {args.speed}")
    url = websocket_url(args.server)
    try:
        result = asyncio.run(stream(url, args.file, args.speed, args.json))
    except audio.AudioError as error:
        raise UserError(f"{inputs.printable(args.file)}: {error}") from None
    except (OSError, aiohttp.ClientError) as error:
        raise UserError(f"{args.server}: cannot stream to it ({error})") from None
    if args.latency and result["latencies"]:
        values = np.array(result["latencies"]) * 1000
        print(f"latency from frame to event: p50 {np.percentile(values, 50):.0f} ms, p95 "
              f"{np.percentile(values, 95):.0f} ms over {len(values)} events", file=sys.stderr)
    if result["errors"]:
        raise PartialFailure(f"{args.server}: {len(result['errors'])} frames refused")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
