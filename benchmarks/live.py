"""Live detection benchmark: the page in a browser, the streaming server under load.

    python -m benchmarks.live [--model-dir JOB] [--seconds 60]

1. In the browser: headless Chromium (Debian's) opens the page in its default mode with a
   generated recording of `--seconds` as its microphone; the page's own figures: model
   call time (one 32 ms step of the streaming int8 model in LiteRT.js), p50 and p95, and
   the real-time factor (audio seconds per second of model calls).
2. The server: `python -m trainer.live` on loopback (throttle lifted), 1 and then 8
   clients each streaming a 10-minute recording as fast as the server takes it: the
   real-time factor per client (audio seconds over wall seconds), and the p50/p95 delay
   from a frame to its reply.
3. Memory: the server's resident memory after one client streamed 1 minute, and after
   it streamed an hour (one stream; the ratio shows whether it grows).

The recordings are built from the sample clips in data/sample (keywords over background
noise, `trainer.streams`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import soundfile

from pipelines import contract
from pipelines.errors import UserError, run_cli
from trainer import live_client, scoring, streams

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go")


def sample_recording(path: pathlib.Path, seconds: float, seed: int = 0) -> pathlib.Path:
    keywords = [(label, soundfile.read(str(clip), dtype="float32")[0])
                for label in KEYWORDS for clip in sorted((SAMPLE / label).glob("*.wav"))[:10]]
    noise = [soundfile.read(str(clip), dtype="float32")[0] for clip in
             sorted((SAMPLE / contract.BACKGROUND_NOISE_DIR).glob("*.wav"))]
    stream = streams.build_stream(keywords, [], noise, seconds, seed, unknown_percent=0)
    soundfile.write(str(path), stream.audio, contract.SAMPLE_RATE, subtype="PCM_16")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m trainer.live` in a process of its own."""

    def __init__(self, model_dir: str, max_speed: float):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainer.live", "--model-dir", model_dir, "--port",
             str(self.port), "--max-speed", str(max_speed)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            raise UserError(f"the live server did not start: {line}")
        self.url = f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def clients(url: str, path: pathlib.Path, count: int, speed: float) -> list[dict]:
    """`count` clients streaming `path` at once; each one's figures."""
    seconds = soundfile.info(str(path)).duration

    async def one() -> dict:
        started = time.monotonic()
        with open(os.devnull, "w") as quiet:
            result = await live_client.stream(live_client.websocket_url(url), str(path),
                                              speed, False, out=quiet)
        return {"real_time_factor": seconds / (time.monotonic() - started),
                "latencies": result["latencies"], "events": len(result["events"])}

    async def everyone():
        return await asyncio.gather(*(one() for _ in range(count)))

    return asyncio.run(everyone())


def launch_chromium(playwright, chromium: str, recording: pathlib.Path):
    """Headless Chromium (the executable at `chromium`) whose microphone is `recording`,
    played once from its start, with the permission to use it granted."""
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={recording}%noloop",
        "--autoplay-policy=no-user-gesture-required"])


def in_browser(url: str, path: pathlib.Path) -> dict:
    """The page's own figures after the recording played as its microphone."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise UserError("no Chromium: install Debian's chromium package for the page's figures")
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
    seconds = soundfile.info(str(path)).duration
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium, path)
        page = browser.new_page()
        page.goto(f"{url}/?mode=browser")
        page.wait_for_function("window.kwsState !== 'loading'", timeout=60_000)
        page.click("#start")
        page.wait_for_function(f"window.kwsStats.audioSeconds >= {seconds}",
                               timeout=int((seconds + 60) * 1000), polling=500)
        stats = page.evaluate("window.kwsStats")
        browser.close()
    calls = np.array(stats["callMs"])
    return {"calls": int(stats["calls"]), "p50_ms": float(np.percentile(calls, 50)),
            "p95_ms": float(np.percentile(calls, 95)),
            "real_time_factor": stats["audioSeconds"] / stats["computeSeconds"]}


def run(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=scoring.SHIPPED_MODEL_DIR)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of the page's recording (default 60)")
    parser.add_argument("--output", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        page_wav = sample_recording(folder / "page.wav", args.seconds)
        ten = sample_recording(folder / "ten.wav", 600, seed=1)
        minute = sample_recording(folder / "minute.wav", 60, seed=2)
        hour = sample_recording(folder / "hour.wav", 3600, seed=3)
        server = Server(args.model_dir, max_speed=10_000)
        try:
            results["browser"] = in_browser(server.url, page_wav)
            print(f"in the browser (LiteRT.js, wasm): {results['browser']['calls']} calls of "
                  f"32 ms, p50 {results['browser']['p50_ms']:.2f} ms, p95 "
                  f"{results['browser']['p95_ms']:.2f} ms, "
                  f"{results['browser']['real_time_factor']:.0f}x real time", flush=True)
            for count in (1, 8):
                rows = clients(server.url, ten, count, 1000.0)
                results[f"server_{count}"] = {"clients": count, "real_time_factor_per_client":
                                              float(np.mean([row["real_time_factor"]
                                                             for row in rows]))}
                print(f"server, {count} client(s) streaming 10 min each as fast as it takes "
                      f"them: {results[f'server_{count}']['real_time_factor_per_client']:.0f}x"
                      " real time per client", flush=True)
            rows = clients(server.url, minute, 8, 1.0)
            delays = np.concatenate([row["latencies"] for row in rows]) * 1000
            results["delay_8_real_time"] = {"p50_ms": float(np.percentile(delays, 50)),
                                            "p95_ms": float(np.percentile(delays, 95)),
                                            "events": int(len(delays))}
            print(f"server, 8 clients streaming 1 min each in real time: delay from the frame "
                  f"that completed a window to its event p50 {np.percentile(delays, 50):.0f} "
                  f"ms, p95 {np.percentile(delays, 95):.0f} ms ({len(delays)} events)",
                  flush=True)
        finally:
            server.stop()
        server = Server(args.model_dir, max_speed=10_000)
        try:
            clients(server.url, minute, 1, 1000.0)
            after_minute = server.rss_mb()
            clients(server.url, hour, 1, 1000.0)
            after_hour = server.rss_mb()
        finally:
            server.stop()
        results["memory"] = {"after_1_min_mb": after_minute, "after_1_h_mb": after_hour,
                             "ratio": after_hour / after_minute}
        print(f"server memory after streaming 1 min {after_minute:.0f} MB, after 1 h "
              f"{after_hour:.0f} MB (ratio {after_hour / after_minute:.3f})")
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
