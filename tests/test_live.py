"""The live page and the streaming server, run for real: `python -m trainer.live` on
loopback, Debian's Chromium driven headless by Playwright with its microphone replaced by
a generated recording, eight WebSocket clients at once, and clients that misbehave.

The page needs Debian's `chromium` (make test installs it); a machine without it fails
these tests with one line saying what to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest
import soundfile

from benchmarks.live import launch_chromium
from pipelines import contract
from tests import wavs
from trainer import detect, live, live_client, streams

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = wavs.REPO / "runs" / "test-artifacts"
TOLERANCE_S = 0.15
MODEL_DIR = live.DEFAULT_MODEL_DIR


def free_port() -> int:
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> pathlib.Path:
    """36 s of the sample's keywords and other words over its background noise."""
    keywords = [(label, wavs.read_clip(path)[0]) for label in ("yes", "no", "up", "down",
                                                                "left", "right", "stop", "go")
                for path in wavs.sample_clips(label, 3)]
    noise = [wavs.read_clip(path)[0] for path in
             sorted((wavs.SAMPLE / contract.BACKGROUND_NOISE_DIR).glob("*.wav"))[:2]]
    stream = streams.build_stream(keywords, [], noise, duration_s=36.0, seed=4,
                                  unknown_percent=0)
    path = tmp_path_factory.mktemp("live") / "recording.wav"
    soundfile.write(str(path), stream.audio, contract.SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server():
    """`python -m trainer.live` on a free loopback port, as a user starts it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.live", "--model-dir", str(MODEL_DIR), "--port",
         str(port)], cwd=wavs.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    line = process.stdout.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line + process.stdout.read()
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def reference(recording: pathlib.Path, engine: str) -> list[tuple[str, float]]:
    return [(row["label"], row["time"]) for row in detect.run(
        ["--model-dir", str(MODEL_DIR), "--engine", engine, str(recording)])]


def matched(found: list[tuple[str, float]], wanted: list[tuple[str, float]]) -> float:
    """Share of `found` with an event of the same label in `wanted` within TOLERANCE_S."""
    if not found:
        return 1.0 if not wanted else 0.0
    return sum(any(label == other and abs(time - when) <= TOLERANCE_S
                   for other, when in wanted) for label, time in found) / len(found)


def page_events(url: str, recording: pathlib.Path, mode: str, name: str,
                capture_rate: int = 0) -> list:
    """The events the page logs while the fake microphone plays `recording`."""
    if CHROMIUM is None:
        pytest.fail("no Chromium: install Debian's chromium package (apt-get install "
                    "chromium; make test does) to run the page's tests")
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
    seconds = soundfile.info(str(recording)).duration
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, CHROMIUM, recording)
        try:
            page = browser.new_page()
            page.goto(f"{url}/?mode={mode}"
                      + (f"&capture-rate={capture_rate}" if capture_rate else ""))
            page.wait_for_function("window.kwsState !== 'loading'", timeout=60_000)
            assert page.evaluate("window.kwsState") == "ready", page.evaluate("window.kwsState")
            page.click("#start")
            page.wait_for_function("window.kwsState !== 'ready'", timeout=30_000)
            assert page.evaluate("window.kwsState") == "listening"
            page.wait_for_function(f"window.kwsStats.audioSeconds >= {seconds + 1.5}",
                                   timeout=int((seconds + 60) * 1000), polling=500)
            found = page.evaluate("window.kwsEvents")
            stats = page.evaluate("window.kwsStats")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"live-{name}.png"), full_page=True)
        finally:
            browser.close()
    assert stats["callMs"], stats
    return [(row["label"], row["time"]) for row in found], stats


def test_the_page_running_litert_in_the_browser_gives_trainer_detects_events(
        server, recording):
    wanted = reference(recording, "tflite-int8")
    found, stats = page_events(server, recording, "browser", "browser")
    assert len(wanted) >= 8
    assert matched(found, wanted) >= 0.9 and matched(wanted, found) >= 0.9, (found, wanted)
    assert stats["realTimeFactor"] > 1 and stats["p95"] < 32  # faster than the audio


def test_the_page_streaming_to_the_server_gives_trainer_detects_events(server, recording):
    """Through the page's own resampler too: the microphone taken at 48 kHz, as browsers
    that do not capture at 16 kHz (Firefox) give it."""
    wanted = reference(recording, "savedmodel")
    found, stats = page_events(server, recording, "server", "server", capture_rate=48_000)
    assert stats["captureRate"] == 48_000
    assert matched(found, wanted) >= 0.9 and matched(wanted, found) >= 0.9, (found, wanted)


def test_the_client_prints_exactly_what_trainer_detect_prints(server, recording):
    single = subprocess.run([sys.executable, "-m", "trainer.detect", "--model-dir",
                             str(MODEL_DIR), "--json", str(recording)], cwd=wavs.REPO,
                            capture_output=True, text=True, timeout=300, check=True)
    streamed = subprocess.run([sys.executable, "-m", "trainer.live_client", "--server", server,
                               "--json", "--speed", "40", str(recording)], cwd=wavs.REPO,
                              capture_output=True, text=True, timeout=300, check=True)
    assert streamed.stdout == single.stdout and streamed.stdout.count("\n") >= 8


def test_eight_clients_at_once_for_a_minute(server, recording, tmp_path):
    audio = soundfile.read(str(recording), dtype="float32")[0]
    minute = tmp_path / "minute.wav"
    soundfile.write(str(minute), np.concatenate([audio, audio[:len(audio) * 2 // 3]]),
                    contract.SAMPLE_RATE, subtype="PCM_16")
    wanted = [(row["label"], row["time"]) for row in detect.run(
        ["--model-dir", str(MODEL_DIR), str(minute)])]

    async def everyone():
        url = live_client.websocket_url(server)
        with open(os.devnull, "w") as quiet:
            return await asyncio.gather(*(live_client.stream(url, str(minute), 1.0, False,
                                                             out=quiet) for _ in range(8)))

    started = time.monotonic()
    results = asyncio.run(everyone())
    elapsed = time.monotonic() - started
    seconds = soundfile.info(str(minute)).duration
    assert seconds >= 60 and elapsed < seconds + 20  # nobody held up
    latencies = []
    for result in results:
        got = [(row["label"], row["time"]) for row in result["events"]]
        assert got == wanted and not result["errors"]
        latencies += result["latencies"]
    p95 = float(np.percentile(latencies, 95)) * 1000
    print(f"8 clients: p95 from the frame that completed a window to its event {p95:.0f} ms")
    assert p95 < 1000


async def _raw(url: str):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(live_client.websocket_url(url), max_msg_size=0)
    assert (await ws.receive_json())["type"] == "ready"
    return session, ws


def test_frames_it_cannot_use_get_an_error_and_the_connection_stays(server):
    async def misuse():
        session, ws = await _raw(server)
        replies = []
        for frame in ("hello", json.dumps({"type": "nope"}), b"\x01\x02\x03",
                      b"\x00" * (live.MAX_FRAME_BYTES + 2)):
            await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
            replies.append(await ws.receive_json())
        await ws.send_bytes(np.zeros(16000, "<i2").tobytes())
        await ws.send_str(json.dumps({"type": "end"}))
        while (reply := await ws.receive_json())["type"] != "done":
            pass
        await ws.close()
        await session.close()
        return replies, reply

    replies, done = asyncio.run(misuse())
    assert [reply["type"] for reply in replies] == ["error"] * 4
    assert "JSON" in replies[0]["message"] and "unknown type 'nope'" in replies[1]["message"]
    assert "whole 16-bit samples" in replies[2]["message"]
    assert f"over {live.MAX_FRAME_BYTES}" in replies[3]["message"]
    assert done == {"type": "done", "seconds": 1.0, "events": 0}


def test_a_client_that_stops_reading_holds_up_no_one(server, recording):
    async def both():
        session, stuck = await _raw(server)
        noise = (np.random.default_rng(0).normal(0, 3000, 16000 * 2)).astype("<i2").tobytes()

        async def flood():  # sends and sends, never reads a reply
            try:
                for _ in range(600):
                    await stuck.send_bytes(noise)
            except (ConnectionResetError, aiohttp.ClientError):
                pass

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        started = time.monotonic()
        url = live_client.websocket_url(server)
        with open(os.devnull, "w") as quiet:
            result = await live_client.stream(url, str(recording), 4.0, False, out=quiet)
        took = time.monotonic() - started
        flooding.cancel()
        await session.close()
        return result, took

    result, took = asyncio.run(both())
    seconds = soundfile.info(str(recording)).duration
    assert len(result["events"]) >= 8 and took < seconds / 4 + 15
