// The operator page: what the node serves, whether it is ready, its live latency and queues, and a
// frame tried through depth, segmentation and pose, and its live streams. It only reads /health, /ready,
// /capabilities, /metrics and /streams, and sends frames to /infer like any client: nothing on the
// inference path is added for it.
"use strict";

const $ = (id) => document.getElementById(id);
const CAPABILITIES = ["depth", "segmentation", "pose"];
const OUTPUT = { depth: "", segmentation: "", pose: "/skeleton" }; // image-shaped outputs
let tokenRequired = false;
let served = [];
const snapshots = []; // [time, {capability: cumulative histogram of the total stage}]

function badge(element, text, kind) {
  element.textContent = text;
  element.className = "badge " + kind;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function json(path) {
  const response = await fetch(path, { cache: "no-store" });
  return { status: response.status, body: await response.json() };
}

function megabytes(bytes) {
  return (bytes / 1048576).toFixed(1) + " MiB";
}

function describe(name, capability) {
  const models = capability.models
    .map((m) => `${m.name} (${m.licence}, ${m.weights})`)
    .join("<br>");
  const backend = capability.backend;
  const held = Object.entries(backend.memory_bytes || {}).map(([kind, bytes]) => `${kind} ${megabytes(bytes)}`);
  const need = capability.device_memory; // the TensorRT builder's figures, from the manifest
  const gpu = need ? [`GPU alone ${megabytes(need.total_bytes)} (${need.precision})`] : [];
  const memory = [...held, ...gpu].join("<br>");
  const bounds = capability.frame_bounds;
  const frames = `${bounds.min_hw.join("×")} … ${bounds.max_hw.join("×")}`;
  return `<tr id="row-${name}"><td><b>${name}</b></td><td>${models}</td>
    <td>${backend.name} (${backend.device || "…"}, ${backend.precision || "…"})</td><td>${memory}</td>
    <td>${frames}</td><td class="latency">–</td><td class="queue">–</td></tr>`;
}

async function refreshCapabilities() {
  const { body } = await json("/capabilities");
  $("version").textContent = "v" + body.node.version + " · " + body.node.backend;
  tokenRequired = Boolean(body.node.token_required);
  $("token-box").hidden = !tokenRequired;
  served = Object.keys(body.capabilities);
  $("capabilities").querySelector("tbody").innerHTML = served
    .map((name) => describe(name, body.capabilities[name]))
    .join("");
  $("demo").hidden = !served.some((name) => body.capabilities[name].demo);
  const total = body.node.device_memory.total_bytes;
  $("gpu-memory").textContent =
    total === null
      ? "GPU memory: no TensorRT figures in the manifest (vision-node-build --compile-check records them)."
      : `GPU memory with every capability: ${megabytes(total)} (all weights and one shared activation scratch of ` +
        `${megabytes(body.node.device_memory.shared_activation_bytes)}; TensorRT for RTX's build figures).`;
}

async function refreshHealth() {
  try {
    const health = await json("/health");
    const status = health.body.status;
    badge($("status"), status, status === "ERROR" ? "bad" : status === "LOADING" ? "wait" : "ok");
    const ready = await json("/ready");
    badge($("ready"), ready.status === 200 ? "ready" : "not ready", ready.status === 200 ? "ok" : "wait");
    return ready.status === 200;
  } catch (err) {
    badge($("status"), "unreachable", "bad");
    badge($("ready"), "not ready", "bad");
    return false;
  }
}

// Prometheus text: the cumulative buckets of vision_node_stage_seconds{stage="total"} and the queues.
function parseMetrics(text) {
  const buckets = {};
  const queues = {};
  for (const line of text.split("\n")) {
    let match = line.match(/^vision_node_stage_seconds_bucket\{capability="([^"]+)",le="([^"]+)",stage="total"\} (\S+)/);
    if (!match) {
      match = line.match(/^vision_node_stage_seconds_bucket\{capability="([^"]+)",stage="total",le="([^"]+)"\} (\S+)/);
    }
    if (match) {
      const [, capability, le, count] = match;
      (buckets[capability] = buckets[capability] || []).push([le === "+Inf" ? Infinity : Number(le), Number(count)]);
      continue;
    }
    match = line.match(/^vision_node_queue_depth\{capability="([^"]+)"\} (\S+)/);
    if (match) queues[match[1]] = Number(match[2]);
  }
  for (const list of Object.values(buckets)) list.sort((a, b) => a[0] - b[0]);
  return { buckets, queues };
}

// A quantile from cumulative bucket counts, interpolating linearly inside the bucket it falls in.
function quantile(list, q) {
  const total = list[list.length - 1][1];
  if (!total) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [upper, count] of list) {
    if (count >= rank) {
      if (upper === Infinity) return lower;
      const inside = count - below;
      return lower + (inside ? ((rank - below) / inside) * (upper - lower) : 0);
    }
    lower = upper;
    below = count;
  }
  return lower;
}

function difference(now, before) {
  return now.map(([le, count], i) => [le, count - (before ? before[i][1] : 0)]);
}

function milliseconds(seconds) {
  return seconds === null ? "–" : (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
}

async function refreshMetrics() {
  const response = await fetch("/metrics", { cache: "no-store" });
  const { buckets, queues } = parseMetrics(await response.text());
  const now = performance.now();
  snapshots.push([now, buckets]);
  while (snapshots.length > 1 && now - snapshots[1][0] >= 10000) snapshots.shift();
  const [, old] = snapshots[0];
  for (const name of served) {
    const row = $("row-" + name);
    if (!row || !buckets[name]) continue;
    const recent = difference(buckets[name], old[name]);
    const windowed = recent[recent.length - 1][1] > 0;
    const list = windowed ? recent : buckets[name];
    const label = windowed ? " (10 s)" : " (since start)";
    const p50 = quantile(list, 0.5);
    row.querySelector(".latency").textContent =
      p50 === null ? "no frames yet" : `${milliseconds(p50)} / ${milliseconds(quantile(list, 0.99))}${label}`;
    row.querySelector(".queue").textContent = String(queues[name] ?? 0);
  }
}

// --- try a frame

function sampleFrame() {
  // A synthetic scene on a canvas: gradients and hard-edged shapes, like the node's own sample frames.
  const canvas = document.createElement("canvas");
  canvas.width = 640;
  canvas.height = 360;
  const g = canvas.getContext("2d");
  const sky = g.createLinearGradient(0, 0, 0, 360);
  sky.addColorStop(0, "#7fa8d8");
  sky.addColorStop(1, "#d9c9a3");
  g.fillStyle = sky;
  g.fillRect(0, 0, 640, 360);
  g.fillStyle = "#5b6e3a";
  g.fillRect(0, 250, 640, 110);
  g.fillStyle = "#8b3a2f";
  g.fillRect(90, 150, 140, 120);
  g.fillStyle = "#e2b44c";
  g.beginPath();
  g.arc(470, 190, 70, 0, 2 * Math.PI);
  g.fill();
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function infer(name, blob) {
  const headers = { "Content-Type": blob.type || "image/jpeg" };
  if (tokenRequired) headers.Authorization = "Bearer " + $("token").value;
  const started = performance.now();
  const response = await fetch(`/infer/${name}${OUTPUT[name]}`, { method: "POST", body: blob, headers });
  const elapsed = performance.now() - started;
  if (!response.ok) {
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    throw new Error(`${name}: ${response.status} ${body.detail}`);
  }
  const meta = JSON.parse(response.headers.get("X-Metadata") || "{}");
  $("out-" + name).src = URL.createObjectURL(await response.blob());
  const node = meta.timings_ms ? meta.timings_ms.total.toFixed(1) : "?";
  $("cap-" + name).textContent = `${name}: ${elapsed.toFixed(0)} ms round trip, ${node} ms in the node`;
}

async function tryFrame(blob) {
  if (tokenRequired && !$("token").value) {
    showError("This node needs its token (the --token it was started with): enter it above first.");
    return;
  }
  showError("");
  $("frame").src = URL.createObjectURL(blob);
  const names = CAPABILITIES.filter((name) => served.includes(name));
  const results = await Promise.allSettled(names.map((name) => infer(name, blob)));
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) showError(failed.join("; "));
}

function wireTryPanel() {
  $("token-box").addEventListener("submit", (event) => event.preventDefault()); // Enter sends nothing
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) tryFrame(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", () => $("file").files.length && tryFrame($("file").files[0]));
  $("sample").addEventListener("click", async () => tryFrame(await sampleFrame()));
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

// Each stream's row, from /streams (rates and percentiles over the stream's last 10 s).
async function refreshStreams() {
  const { body } = await json("/streams");
  const rows = body.streams.map((s) => {
    const tr = document.createElement("tr");
    const f = s.frames;
    const ms = (v) => (v === null ? "–" : v.toFixed(1) + " ms");
    [
      s.stream_id,
      s.capability,
      s.size ? `${s.size[1]}×${s.size[0]}` : "…",
      `${s.fps.in.toFixed(1)} / ${s.fps.out.toFixed(1)}`,
      `${ms(s.latency_ms.p50)} / ${ms(s.latency_ms.p95)}`,
      `${f.in} / ${f.out} / ${f.dropped} / ${f.failed}`,
      `${s.seconds.toFixed(0)} s`,
    ].forEach((text) => tr.appendChild(cell(text)));
    return tr;
  });
  $("streams").querySelector("tbody").replaceChildren(...rows);
  $("streams-note").hidden = rows.length > 0;
}

async function main() {
  wireTryPanel();
  await refreshCapabilities();
  const tick = async () => {
    const ready = await refreshHealth();
    if (ready) await Promise.all([refreshMetrics(), refreshStreams()]);
  };
  await tick();
  setInterval(tick, 2000);
  setInterval(refreshCapabilities, 15000); // backends and memory settle after warm-up
}

main().catch((err) => showError("The page could not load the node's state: " + err.message));
