// The live page: microphone -> 16 kHz frames -> keyword scores -> events.
//
// mode=browser (default): the job's streaming int8 LiteRT model runs here with LiteRT.js,
//   32 ms of audio per call, its state passed from call to call; every third call (one
//   detection hop of 96 ms) its scores go through the same event rule as trainer.detect
//   (detector.js). The first call is given 384 samples of silence before the audio, so a
//   window ends exactly where trainer.detect's windows end (1 s + k x 96 ms).
// mode=server: the frames go to the server over a WebSocket (/ws), which detects with
//   trainer.detect's own code and sends events and scores back.
//
// window.kwsEvents holds every event ({label, time, score}, time in seconds of audio since
// capture started); window.kwsState says where the page is ("loading", "ready",
// "listening", "error: ..."); window.kwsStats holds the speed figures.

import {EventStream} from "/detector.js";

const SAMPLE_RATE = 16000;
const params = new URLSearchParams(location.search);
const mode = params.get("mode") === "server" ? "server" : "browser";
window.kwsEvents = [];
window.kwsState = "loading";
window.kwsStats = {calls: 0, callMs: [], audioSeconds: 0, computeSeconds: 0, mode};

const $ = (id) => document.getElementById(id);
document.getElementById(`mode-${mode}`).classList.add("current");

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
  if (isError) window.kwsState = `error: ${text}`;
}

function percentile(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))];
}

// --- display -------------------------------------------------------------------------

function makeBars(keywords, thresholds) {
  const bars = {};
  for (const keyword of keywords) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<span class="name"></span><div class="track"><div class="fill"></div>` +
                    `<div class="threshold"></div></div><span class="value">0.00</span>`;
    row.querySelector(".name").textContent = keyword;
    row.querySelector(".threshold").style.left = `${100 * thresholds[keyword]}%`;
    $("bars").appendChild(row);
    bars[keyword] = row;
  }
  return bars;
}

function showScores(bars, scores, thresholds) {
  for (const [keyword, score] of Object.entries(scores)) {
    const row = bars[keyword];
    if (!row) continue;
    row.querySelector(".fill").style.width = `${Math.min(100, 100 * score)}%`;
    row.querySelector(".fill").classList.toggle("hot", score >= thresholds[keyword]);
    row.querySelector(".value").textContent = score.toFixed(2);
  }
}

function showEvent(event) {
  window.kwsEvents.push(event);
  const item = document.createElement("li");
  item.innerHTML = `<span class="label"></span> at <span class="time"></span> s ` +
                   `(score <span class="score"></span>)`;
  item.querySelector(".label").textContent = event.label;
  item.querySelector(".time").textContent = event.time.toFixed(2);
  item.querySelector(".score").textContent = event.score.toFixed(3);
  $("events").prepend(item);
}

function showStats() {
  const stats = window.kwsStats;
  $("stat-where").textContent = mode === "browser" ? "this browser, LiteRT.js (WebAssembly)"
                                                     : "the server, over a WebSocket";
  if (stats.callMs.length) {
    const p50 = percentile(stats.callMs, 50), p95 = percentile(stats.callMs, 95);
    stats.p50 = p50;
    stats.p95 = p95;
    $("stat-latency").textContent = `${p50.toFixed(2)} / ${p95.toFixed(2)} ms ` +
        `(${mode === "browser" ? "one 32 ms step" : "frame sent to reply"}, ` +
        `${stats.callMs.length} calls)`;
  }
  if (stats.computeSeconds > 0) {
    stats.realTimeFactor = stats.audioSeconds / stats.computeSeconds;
    $("stat-rtf").textContent = `${stats.realTimeFactor.toFixed(0)}x real time`;
  }
  $("stat-heard").textContent = `${stats.audioSeconds.toFixed(1)} s`;
}

// --- the microphone --------------------------------------------------------------------

// Streaming resampler to 16 kHz for browsers that give the microphone only at the device's
// rate (Firefox refuses a 16 kHz AudioContext for a microphone at another rate): a
// windowed-sinc low-pass at 0.95 of the new Nyquist, 2 x TAPS samples per output sample.
class Resampler {
  constructor(fromRate, toRate = SAMPLE_RATE, taps = 16) {
    this.step = fromRate / toRate;
    this.cutoff = Math.min(1, toRate / fromRate) * 0.95;
    this.taps = taps;
    this.history = new Float32Array(0);
    this.position = taps;  // input index (in `history`) of the next output sample
  }

  push(input) {
    const joined = new Float32Array(this.history.length + input.length);
    joined.set(this.history);
    joined.set(input, this.history.length);
    const out = [];
    while (this.position + this.taps < joined.length) {
      const centre = Math.floor(this.position), fraction = this.position - centre;
      let sum = 0;
      for (let k = -this.taps + 1; k <= this.taps; k++) {
        const x = (k - fraction) * this.cutoff;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const taper = 0.5 + 0.5 * Math.cos(Math.PI * (k - fraction) / (this.taps + 1));
        sum += joined[centre + k] * sinc * taper;
      }
      out.push(sum * this.cutoff);
      this.position += this.step;
    }
    const keep = Math.max(0, Math.floor(this.position) - this.taps);
    this.history = joined.slice(keep);
    this.position -= keep;
    return Float32Array.from(out);
  }
}

async function startCapture(onFrame, frameSamples) {
  const stream = await navigator.mediaDevices.getUserMedia({audio: {
    channelCount: 1, echoCancellation: false, noiseSuppression: false,
    autoGainControl: false}});
  // ?capture-rate=48000 takes the path a browser without 16 kHz capture takes.
  const forced = Number(params.get("capture-rate")) || 0;
  let context, source;
  try {
    context = new AudioContext({sampleRate: forced || SAMPLE_RATE});
    source = context.createMediaStreamSource(stream);
  } catch (error) {  // the microphone only at the device's rate: resample here
    if (context) await context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  const resampler = context.sampleRate === SAMPLE_RATE ? null
                                                       : new Resampler(context.sampleRate);
  window.kwsStats.captureRate = context.sampleRate;
  await context.audioWorklet.addModule("/capture-worklet.js");
  const capture = new AudioWorkletNode(context, "capture");
  let pending = new Float32Array(0);
  capture.port.onmessage = ({data}) => {
    const samples = resampler ? resampler.push(data) : data;
    const joined = new Float32Array(pending.length + samples.length);
    joined.set(pending);
    joined.set(samples, pending.length);
    let start = 0;
    for (; start + frameSamples <= joined.length; start += frameSamples) {
      onFrame(joined.slice(start, start + frameSamples));
    }
    pending = joined.slice(start);
  };
  source.connect(capture);
  await context.resume();
  return context;
}

function level(frame) {
  let sum = 0;
  for (const sample of frame) sum += sample * sample;
  const db = 10 * Math.log10(sum / frame.length + 1e-10);
  $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
}

// --- in the browser: LiteRT.js -----------------------------------------------------------

async function browserDetector(info, bars) {
  const {loadLiteRt, loadAndCompile, Tensor} = await import("@litertjs/core");
  await loadLiteRt("/vendor/litertjs-core/wasm/");
  const model = await loadAndCompile(`/model/${info.stream_model}`, {accelerator: "wasm"});
  const inputs = Object.fromEntries(model.getInputDetails().map((d) => [d.name, d]));
  const frameSamples = info.frame_samples;
  const hop = info.config.hop_ms * SAMPLE_RATE / 1000;
  const windowSamples = info.config.window_ms * SAMPLE_RATE / 1000;
  if (hop % frameSamples || windowSamples !== SAMPLE_RATE) {
    throw new Error(`hop ${info.config.hop_ms} ms is not a whole number of 32 ms steps`);
  }
  const callsPerHop = hop / frameSamples;
  const preroll = (frameSamples - windowSamples % frameSamples) % frameSamples;  // 384
  const firstCall = (windowSamples + preroll) / frameSamples;  // the call ending window 0
  let state = {tail: new Float32Array(inputs.tail.shape.reduce((a, b) => a * b, 1)),
               features: new Float32Array(inputs.features.shape.reduce((a, b) => a * b, 1))};
  const detector = new EventStream(info.labels, info.config);

  async function step(frame) {
    const feeds = {frame: new Tensor(frame, [1, frameSamples]),
                   tail: new Tensor(state.tail, Array.from(inputs.tail.shape)),
                   features: new Tensor(state.features, Array.from(inputs.features.shape))};
    const started = performance.now();
    const outputs = await model.run(feeds);
    const elapsed = performance.now() - started;
    const probabilities = outputs.probabilities.toTypedArray().slice();
    state = {tail: outputs.next_tail.toTypedArray().slice(),
             features: outputs.next_features.toTypedArray().slice()};
    for (const tensor of [...Object.values(feeds), ...Object.values(outputs)]) tensor.delete();
    return {probabilities, elapsed};
  }

  for (let call = 0; call < info.warmup_calls; call++) {  // one second of silence heard
    await step(new Float32Array(frameSamples));
  }
  let calls = 0, queue = Promise.resolve();
  let buffer = new Float32Array(preroll);  // the silence before the first sample
  return {
    frameSamples,
    push(samples) {
      const joined = new Float32Array(buffer.length + samples.length);
      joined.set(buffer);
      joined.set(samples, buffer.length);
      let start = 0;
      for (; start + frameSamples <= joined.length; start += frameSamples) {
        const frame = joined.slice(start, start + frameSamples);
        queue = queue.then(async () => {
          const {probabilities, elapsed} = await step(frame);
          calls += 1;
          const stats = window.kwsStats;
          stats.calls = calls;
          stats.callMs.push(elapsed);
          if (stats.callMs.length > 5000) stats.callMs.shift();
          stats.computeSeconds += elapsed / 1000;
          stats.audioSeconds = (calls * frameSamples - preroll) / SAMPLE_RATE;
          if (calls >= firstCall && (calls - firstCall) % callsPerHop === 0) {
            const k = (calls - firstCall) / callsPerHop;
            const time = (windowSamples + k * hop) / SAMPLE_RATE;
            const {events, smoothed} = detector.push(probabilities, time);
            const scores = {};
            for (const keyword of info.keywords) {
              scores[keyword] = smoothed[info.labels.indexOf(keyword)];
            }
            showScores(bars, scores, info.config.thresholds);
            events.forEach(showEvent);
          }
        });
      }
      buffer = joined.slice(start);
    },
  };
}

// --- on the server: the WebSocket -------------------------------------------------------

async function serverDetector(info, bars) {
  const frameSamples = info.frame_samples;  // 32 ms, as the browser mode's model steps
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://` +
                               `${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  const sent = [];  // performance.now() of each frame, for the reply delay
  let frames = 0;
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Error("cannot open the WebSocket"));
  });
  socket.onmessage = ({data}) => {
    const message = JSON.parse(data);
    if (message.type === "event") {
      showEvent({label: message.label, time: message.time, score: message.score});
    } else if (message.type === "scores") {
      showScores(bars, message.scores, info.config.thresholds);
      const frame = Math.ceil(message.time * SAMPLE_RATE / frameSamples) - 1;
      if (sent[frame] !== undefined) {
        window.kwsStats.callMs.push(performance.now() - sent[frame]);
        if (window.kwsStats.callMs.length > 5000) window.kwsStats.callMs.shift();
      }
    } else if (message.type === "error") {
      setStatus(`server: ${message.message}`, true);
    }
  };
  socket.onclose = () => setStatus("the server closed the connection", true);
  return {
    frameSamples,
    push(samples) {
      const pcm = new Int16Array(samples.length);
      for (let i = 0; i < samples.length; i++) {
        pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
      }
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(pcm.buffer);
        sent[frames++] = performance.now();
        window.kwsStats.audioSeconds = frames * frameSamples / SAMPLE_RATE;
      }
    },
  };
}

// --- wiring ------------------------------------------------------------------------------

async function main() {
  const info = await (await fetch("/model/config.json")).json();
  if (mode === "browser" && info.page_error) throw new Error(info.page_error);
  const bars = makeBars(info.keywords, info.config.thresholds);
  const detector = mode === "browser" ? await browserDetector(info, bars)
                                      : await serverDetector(info, bars);
  window.kwsState = "ready";
  setStatus(`ready (${mode === "browser" ? "model loaded in this browser" : "server connected"})`
            + ": press Start listening");
  $("start").addEventListener("click", async () => {
    $("start").disabled = true;
    try {
      await startCapture((frame) => {
        level(frame);
        detector.push(frame);
      }, detector.frameSamples);
      window.kwsState = "listening";
      setStatus("listening: say a keyword");
      setInterval(showStats, 500);
    } catch (error) {
      setStatus(`microphone: ${error.message}`, true);
      $("start").disabled = false;
    }
  });
}

main().catch((error) => setStatus(error.message, true));
