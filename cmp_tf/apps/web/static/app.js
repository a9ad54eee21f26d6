// The page: an image on a canvas, arrows and clicks drawn with the mouse in image pixels,
// and the server's results (base64 PNG / GIF) shown as images. No library, no network but
// this page's own server.
"use strict";

const PIN_PX = 3;  // a drag shorter than this (image px) is a click: a pinned, still point
const state = { dataUrl: null, image: null, arrows: [], positive: [], negative: [], drag: null,
                info: null };
const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
let newestLoad = 0;  // each file chosen takes the next number: only the newest one is shown
const context = canvas.getContext("2d");

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

// The image pixel under the mouse, whatever size the canvas is displayed at: measured inside
// the canvas's border (its content box), pixel (x, y) centred on (x, y), halves up, as the
// in-browser page and the Python checks take them.
function toImage(event) {
  const box = canvas.getBoundingClientRect();
  return {
    x: Math.round((event.clientX - box.left - canvas.clientLeft) * canvas.width /
                  canvas.clientWidth - 0.5),
    y: Math.round((event.clientY - box.top - canvas.clientTop) * canvas.height /
                  canvas.clientHeight - 0.5),
  };
}

function drawArrow(x, y, u, v, colour) {
  const width = Math.max(2, canvas.width / 200);
  context.strokeStyle = colour;
  context.fillStyle = colour;
  context.lineWidth = width;
  if (u === 0 && v === 0) {  // a pin
    context.beginPath();
    context.arc(x, y, 2 * width, 0, 2 * Math.PI);
    context.stroke();
    return;
  }
  const angle = Math.atan2(v, u);
  const head = 4 * width;
  context.beginPath();
  context.moveTo(x, y);
  context.lineTo(x + u, y + v);
  context.stroke();
  context.beginPath();
  context.moveTo(x + u, y + v);
  context.lineTo(x + u - head * Math.cos(angle - 0.4), y + v - head * Math.sin(angle - 0.4));
  context.lineTo(x + u - head * Math.cos(angle + 0.4), y + v - head * Math.sin(angle + 0.4));
  context.closePath();
  context.fill();
}

function drawDot(x, y, colour) {
  context.fillStyle = colour;
  context.strokeStyle = "#fff";
  context.lineWidth = 1;
  context.beginPath();
  context.arc(x, y, Math.max(3, canvas.width / 120), 0, 2 * Math.PI);
  context.fill();
  context.stroke();
}

function draw() {
  if (!state.image) return;
  context.drawImage(state.image, 0, 0);
  for (const [x, y, u, v] of state.arrows) drawArrow(x, y, u, v, "#ffd400");
  if (state.drag && state.drag.to) {
    drawArrow(state.drag.x, state.drag.y, state.drag.to.x - state.drag.x,
              state.drag.to.y - state.drag.y, "#ffffff");
  }
  for (const [x, y] of state.positive) drawDot(x, y, "#00b050");
  for (const [x, y] of state.negative) drawDot(x, y, "#e02020");
}

function inside(point) {
  return point.x >= 0 && point.y >= 0 && point.x < canvas.width && point.y < canvas.height;
}

canvas.addEventListener("mousedown", (event) => {
  if (!state.image) return;
  const point = toImage(event);
  if (!inside(point)) return;
  if (mode() === "arrow") {
    state.drag = { x: point.x, y: point.y, to: null };
  } else {
    state[mode()].push([point.x, point.y]);
    draw();
  }
});

canvas.addEventListener("mousemove", (event) => {
  if (!state.drag) return;
  state.drag.to = toImage(event);
  draw();
});

window.addEventListener("mouseup", (event) => {
  if (!state.drag) return;
  const end = toImage(event);
  let u = end.x - state.drag.x;
  let v = end.y - state.drag.y;
  if (Math.hypot(u, v) < PIN_PX) { u = 0; v = 0; }
  state.arrows.push([state.drag.x, state.drag.y, u, v]);
  state.drag = null;
  draw();
  setStatus(`${state.arrows.length} arrow(s); press Animate.`);
});

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  const load = ++newestLoad;  // a larger file chosen earlier may finish decoding later
  const reader = new FileReader();
  reader.onload = () => {
    if (load !== newestLoad) return;
    const image = new Image();
    image.onload = () => {
      if (load !== newestLoad) return;
      state.image = image;
      state.dataUrl = reader.result;
      newestTicket += 1;  // an answer still on its way is for the previous image
      for (const id of ["flow", "animation", "mask"]) $(id).removeAttribute("src");  // its results
      state.arrows = []; state.positive = []; state.negative = [];
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      limitFrames();
      draw();
      canvas.dataset.loaded = "true";
      setStatus(`Loaded ${file.name}, ${image.naturalWidth}x${image.naturalHeight}.`);
    };
    image.onerror = () => setStatus(`${file.name} is not an image the browser can show.`, true);
    image.src = reader.result;
  };
  reader.readAsDataURL(file);
});

$("clear").addEventListener("click", () => {
  state.arrows = []; state.positive = []; state.negative = [];
  draw();
  setStatus("Guidance cleared.");
});

// Each request, and each image loaded, takes the next ticket: an answer is shown only while
// its ticket is the newest, so a slower earlier request never lands over a later one.
let newestTicket = 0;

async function post(route, body) {
  const text = JSON.stringify(body);
  // Over the server's limit the upload is cut off mid-way, which the browser reports as a
  // network failure: say why before sending (the body is ASCII, a character a byte).
  if (state.info && text.length > state.info.max_bytes) {
    const size = (n) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MB`
      : `${Math.ceil(n / 1024)} KB`);
    throw new Error(`The request is ${size(text.length)} with the image; the server ` +
                    `takes at most ${size(state.info.max_bytes)}: load a smaller image.`);
  }
  const response = await fetch(route, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: text,
  });
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function show(id, type, base64) {
  $(id).src = `data:${type};base64,${base64}`;
}

// Runs `request` with `button` disabled until it ends; `shown` gets the answer only if no
// request or image came after it.
async function answered(button, status, request, shown) {
  const ticket = ++newestTicket;
  button.disabled = true;
  setStatus(status);
  try {
    const answer = await request();
    if (ticket === newestTicket) shown(answer);
  } catch (error) {
    if (ticket === newestTicket) setStatus(error.message, true);
  } finally {
    button.disabled = false;
  }
}

$("animate").addEventListener("click", () => {
  if (!state.image) return setStatus("Load an image first.", true);
  if (!state.arrows.length) return setStatus("Drag at least one arrow on the image.", true);
  const frames = Math.round(Number($("frames").value));
  const most = Number($("frames").max) || 64;
  if (!(frames >= 2 && frames <= most)) {
    return setStatus(`Frames must be a whole number from 2 to ${most}.`, true);
  }
  const body = { image: state.dataUrl, arrows: state.arrows, frames };
  return answered($("animate"), "Propagating the arrows…", () => post("api/animate", body),
    (answer) => {
      show("flow", "image/png", answer.flow_png);
      show("animation", "image/gif", answer.animation_gif);
      setStatus(`Flow and animation in ${answer.seconds.toFixed(2)} s.`);
    });
});

$("annotate").addEventListener("click", () => {
  if (!state.image) return setStatus("Load an image first.", true);
  if (!state.positive.length) return setStatus("Place at least one object click (+).", true);
  const body = { image: state.dataUrl, positive: state.positive, negative: state.negative,
                 refine: $("refine").value };
  return answered($("annotate"), "Pushing the clicks four ways…",
    () => post("api/annotate", body), (answer) => {
      show("mask", "image/png", answer.overlay_png);
      setStatus(`Mask (${(100 * answer.share).toFixed(1)}% of the image) in ` +
                `${answer.seconds.toFixed(2)} s.`);
    });
});

// The server renders frames x width x height pixels at most: offer no more frames than fit.
function limitFrames() {
  if (!state.info) return;
  let most = state.info.max_frames;
  if (state.image) {
    const pixels = state.image.naturalWidth * state.image.naturalHeight;
    most = Math.max(2, Math.min(most, Math.floor(state.info.max_render_pixels / pixels)));
  }
  $("frames").max = most;
  if (Number($("frames").value) > most) $("frames").value = most;
}

fetch("api/info").then((r) => r.json()).then((info) => {
  state.info = info;
  $("model").textContent = `model: ${info.model} (${info.format}); images up to ` +
    `${info.max_side} px a side, ${(info.max_bytes / 2 ** 20).toFixed(0)} MB`;
  $("frames").value = info.frames;
  limitFrames();
  for (const name of info.refinements) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    option.selected = name === info.refine;
    $("refine").appendChild(option);
  }
}).catch(() => setStatus("The server does not answer.", true));
