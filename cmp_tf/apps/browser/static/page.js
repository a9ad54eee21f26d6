// The in-browser page: the image and the arrows become the model's `image` and `sparse`
// inputs, onnxruntime-web runs the exported .onnx here, and the flow, its colour picture and
// the animation are computed on the page. The server only hands out files.
"use strict";

const CLICK_PX = 3;       // a drag shorter than this is a click: a pinned point (zero motion)

const page = {
  session: null, image: null, arrows: [], drag: null, timer: null, frames: [],
  generation: 0,  // counts the images loaded: a result for an earlier one is not shown
  // model.json: the sides the model takes (its metadata) and what the page renders at most
  multiple: null, minSide: null, maxSide: null, maxPixels: null, maxRenderPixels: null,
  canvas: document.getElementById("canvas"),
  status: document.getElementById("status"),
  button: document.getElementById("propagate"),
};
window.cmpResult = null;  // the last result: {width, height, scaleX, scaleY, flow, ms}

function say(text) { page.status.textContent = text; }

async function loadModel() {
  ort.env.wasm.wasmPaths = new URL("vendor/", document.baseURI).href;  // import() needs a URL
  ort.env.wasm.numThreads = 1;  // threads need a cross-origin-isolated page
  try {
    page.session = await ort.InferenceSession.create("model.onnx",
                                                     {executionProviders: ["wasm"]});
    const sizes = await (await fetch("model.json")).json();
    page.multiple = sizes.multiple;
    page.minSide = Math.ceil(sizes.minimum / sizes.multiple) * sizes.multiple;
    page.maxSide = sizes.maximum;  // null: its fills span any size
    page.maxPixels = sizes.max_pixels;
    page.maxRenderPixels = sizes.max_render_pixels;
    const sideInput = document.getElementById("side");
    sideInput.min = page.minSide;
    sideInput.step = page.multiple;
    if (page.maxSide) sideInput.max = page.maxSide;
  } catch (error) {
    say(`Could not load model.onnx: ${error}`);
    return;
  }
  say("Model loaded. Load an image, drag arrows, press Propagate.");
  page.button.disabled = page.image === null;
}

function drawInput() {
  const ctx = page.canvas.getContext("2d");
  if (!page.image) return;
  ctx.drawImage(page.image, 0, 0);
  ctx.lineWidth = 2;
  for (const [x, y, u, v] of page.arrows) {
    ctx.strokeStyle = ctx.fillStyle = "yellow";
    ctx.beginPath();
    if (u === 0 && v === 0) {
      ctx.arc(x, y, 4, 0, 2 * Math.PI);
      ctx.stroke();
      continue;
    }
    ctx.moveTo(x, y);
    ctx.lineTo(x + u, y + v);
    ctx.stroke();
    const angle = Math.atan2(v, u);
    ctx.beginPath();
    ctx.moveTo(x + u, y + v);
    ctx.lineTo(x + u - 6 * Math.cos(angle - 0.4), y + v - 6 * Math.sin(angle - 0.4));
    ctx.lineTo(x + u - 6 * Math.cos(angle + 0.4), y + v - 6 * Math.sin(angle + 0.4));
    ctx.fill();
  }
}

// Where the mouse is in image pixels, pixel (x, y) centred on (x, y) as everywhere in cmp_tf:
// measured inside the canvas's border (from the border box, every click landed a pixel right
// and down, and drags came out short).
function pixelAt(event) {
  const box = page.canvas.getBoundingClientRect();
  return [(event.clientX - box.left - page.canvas.clientLeft) * page.canvas.width /
            page.canvas.clientWidth - 0.5,
          (event.clientY - box.top - page.canvas.clientTop) * page.canvas.height /
            page.canvas.clientHeight - 0.5];
}

page.canvas.addEventListener("mousedown", (event) => { page.drag = pixelAt(event); });
window.addEventListener("mouseup", (event) => {  // a drag may end outside the canvas
  if (!page.drag || !page.image) return;
  const [x, y] = page.drag, [x1, y1] = pixelAt(event);
  const click = Math.hypot(x1 - x, y1 - y) < CLICK_PX;
  page.arrows.push([Math.round(x), Math.round(y), click ? 0 : x1 - x, click ? 0 : y1 - y]);
  page.drag = null;
  drawInput();
});

document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const image = new Image();
  image.onload = () => {
    const pixels = image.naturalWidth * image.naturalHeight;
    if (page.maxPixels && pixels > page.maxPixels) {  // as python -m cmp_tf.apps.animate
      say(`${image.naturalWidth}×${image.naturalHeight} is ${pixels} pixels; the page renders ` +
          `at most ${page.maxPixels}: shrink the image.`);
      return;
    }
    page.generation += 1;  // a result still on its way is for the image before
    clearInterval(page.timer);
    window.cmpResult = null;
    page.image = image;
    page.arrows = [];
    for (const id of ["canvas", "flow", "animation"]) {
      const canvas = document.getElementById(id);
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
    }
    drawInput();
    page.button.disabled = page.session === null;
    say(`${image.naturalWidth}×${image.naturalHeight} image: drag arrows, then Propagate.`);
  };
  image.onerror = () => say(`${file.name} is not an image this browser can read.`);
  image.src = URL.createObjectURL(file);
});

document.getElementById("clear").addEventListener("click", () => {
  page.arrows = [];
  drawInput();
});

// The network's input size, as the Python runtime's: the image scaled so its longer side is
// at most `side`, each side rounded to a multiple the model takes, and no smaller than its
// minimum; a smaller image is enlarged, both sides alike where `side` allows.
function networkSize(width, height, side) {
  if (page.maxSide) side = Math.min(side, page.maxSide);  // the longest side its fills span
  let scale = Math.min(1, side / Math.max(width, height));
  const enlarged = Math.max(page.minSide, page.multiple) / Math.min(width, height);
  if (scale < enlarged && Math.max(width, height) * enlarged <= side) {
    scale = enlarged;
  }
  const round = (n) => Math.max(page.minSide, page.multiple,
                                Math.floor(n * scale / page.multiple + 0.5) * page.multiple);
  return [round(width), round(height)];
}

// The network pixel an image pixel lands on, as the Python runtime maps it: pixel centres as
// the canvas and OpenCV resize them, (p + 0.5) s - 0.5, a half going towards the centre.
function networkPixel(p, scale, size) {
  const at = (p + 0.5) * scale - 0.5;
  const pixel = at <= (size - 1) / 2 ? Math.floor(at + 0.5) : Math.ceil(at - 0.5);
  return Math.min(size - 1, Math.max(0, pixel));
}

function inputs(width, height) {
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const ctx = scratch.getContext("2d");
  ctx.drawImage(page.image, 0, 0, width, height);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const image = new Float32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    image[3 * i] = rgba[4 * i];
    image[3 * i + 1] = rgba[4 * i + 1];
    image[3 * i + 2] = rgba[4 * i + 2];
  }
  const sx = width / page.image.naturalWidth, sy = height / page.image.naturalHeight;
  // Arrows on one pixel give it their mean motion, as the Python Propagator does (the last
  // one drawn won before).
  const sparse = new Float32Array(width * height * 3);
  const count = new Float32Array(width * height);
  for (const [x, y, u, v] of page.arrows) {
    const col = networkPixel(x, sx, width);
    const row = networkPixel(y, sy, height);
    const at = row * width + col;
    sparse[3 * at] += u * sx;
    sparse[3 * at + 1] += v * sy;
    count[at] += 1;
  }
  for (let at = 0; at < count.length; at++) {
    if (count[at] > 0) {
      sparse.set([sparse[3 * at] / count[at], sparse[3 * at + 1] / count[at], 1], 3 * at);
    }
  }
  return {
    image: new ort.Tensor("float32", image, [1, height, width, 3]),
    sparse: new ort.Tensor("float32", sparse, [1, height, width, 3]),
    scaleX: sx, scaleY: sy,
  };
}

// The flow in image pixels at image pixel (x, y), read from the network's grid bilinearly
// at the pixel's centre, as the Python runtime resizes it (the nearest cell made it blocky).
function flowAt(result, x, y) {
  const sample = (p, scale, size) => {
    const at = Math.min(size - 1, Math.max(0, (p + 0.5) * scale - 0.5));
    const low = Math.floor(at), high = Math.min(size - 1, low + 1);
    return [low, high, at - low];
  };
  const [x0, x1, fx] = sample(x, result.scaleX, result.width);
  const [y0, y1, fy] = sample(y, result.scaleY, result.height);
  const at = (row, col, c) => result.flow[2 * (row * result.width + col) + c];
  const read = (c) => (1 - fy) * ((1 - fx) * at(y0, x0, c) + fx * at(y0, x1, c)) +
                      fy * ((1 - fx) * at(y1, x0, c) + fx * at(y1, x1, c));
  return [read(0) / result.scaleX, read(1) / result.scaleY];
}
window.cmpFlowAt = (x, y) => (window.cmpResult ? flowAt(window.cmpResult, x, y) : null);

// The flow at every image pixel, [u, v] interleaved.
function imageFlow(result, width, height) {
  const flow = new Float32Array(width * height * 2);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      flow.set(flowAt(result, x, y), 2 * (y * width + x));
    }
  }
  return flow;
}

function hsvToRgb(h, s, v) {
  const f = (n) => {
    const k = (n + h * 6) % 6;
    return v - v * s * Math.max(0, Math.min(k, 4 - k, 1));
  };
  return [255 * f(5), 255 * f(3), 255 * f(1)];
}

function drawFlow(flow) {
  const canvas = document.getElementById("flow");
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(canvas.width, canvas.height);
  let largest = 1e-6;
  for (let i = 0; i < flow.length; i += 2) {
    largest = Math.max(largest, Math.hypot(flow[i], flow[i + 1]));
  }
  for (let i = 0; i < flow.length / 2; i++) {
    const u = flow[2 * i], v = flow[2 * i + 1];
    const hue = (Math.atan2(-v, -u) / Math.PI + 1) / 2;
    const rgb = hsvToRgb(hue, Math.min(1, Math.hypot(u, v) / largest), 1);
    out.data.set([...rgb, 255], 4 * i);
  }
  ctx.putImageData(out, 0, 0);
}

// Where each pixel of frame t comes from, as the animate command's `inverse_flow` finds it:
// every pixel carries -t * flow to the one to four pixels its landing point touches, the
// largest motion winning where several land; a pixel nothing lands on keeps its own -t * flow.
function backwardFlow(flow, width, height, t) {
  const back = new Float32Array(flow.length);
  const best = new Float32Array(width * height).fill(-1);
  for (let i = 0; i < flow.length; i++) back[i] = -t * flow[i];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x, u = t * flow[2 * i], v = t * flow[2 * i + 1];
      const speed = Math.hypot(u, v), landX = x + u, landY = y + v;
      const left = Math.floor(landX), top = Math.floor(landY);
      for (let dy = 0; dy <= (landY > top ? 1 : 0); dy++) {
        for (let dx = 0; dx <= (landX > left ? 1 : 0); dx++) {
          const tx = left + dx, ty = top + dy;
          if (tx < 0 || tx >= width || ty < 0 || ty >= height) continue;
          const j = ty * width + tx;
          if (speed > best[j]) {
            best[j] = speed;
            back[2 * j] = -u;
            back[2 * j + 1] = -v;
          }
        }
      }
    }
  }
  return back;
}

// Frames of the image moved along the flow from t = 0 to 1, as the animate command makes
// them: each frame samples the image bilinearly where `backwardFlow` says, the border repeated.
function animate(flow, frames) {
  const canvas = document.getElementById("animation");
  const ctx = canvas.getContext("2d");
  const width = canvas.width, height = canvas.height;
  ctx.drawImage(page.image, 0, 0);
  const source = ctx.getImageData(0, 0, width, height).data;
  const made = [];
  for (let f = 0; f < frames; f++) {
    const back = backwardFlow(flow, width, height, f / (frames - 1));
    const out = ctx.createImageData(width, height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        const sx = Math.min(width - 1, Math.max(0, x + back[2 * i]));
        const sy = Math.min(height - 1, Math.max(0, y + back[2 * i + 1]));
        const x0 = Math.floor(sx), y0 = Math.floor(sy), fx = sx - x0, fy = sy - y0;
        const x1 = Math.min(width - 1, x0 + 1), y1 = Math.min(height - 1, y0 + 1);
        for (let c = 0; c < 3; c++) {
          const at = (row, col) => source[4 * (row * width + col) + c];
          out.data[4 * i + c] = Math.round((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1))
                                           + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1)));
        }
        out.data[4 * i + 3] = 255;
      }
    }
    made.push(out);
  }
  page.frames = made;
  clearInterval(page.timer);
  let shown = 0;
  page.timer = setInterval(() => {
    ctx.putImageData(made[shown], 0, 0);
    shown = (shown + 1) % made.length;
  }, 1000 / 12);
  return made.length;
}

page.button.addEventListener("click", async () => {
  if (!page.session || !page.image) return;
  if (page.arrows.length === 0) {
    say("Drag at least one arrow (or click to pin a point) first.");
    return;
  }
  const side = Math.max(page.minSide, Number(document.getElementById("side").value) || 256);
  const pixels = page.image.naturalWidth * page.image.naturalHeight;
  let frames = Math.max(2, Math.min(64, Math.round(
    Number(document.getElementById("frames").value) || 16)));
  if (page.maxRenderPixels) {  // frames x pixels bounded, as the animate command bounds them
    frames = Math.max(2, Math.min(frames, Math.floor(page.maxRenderPixels / pixels)));
  }
  const [width, height] = networkSize(page.image.naturalWidth, page.image.naturalHeight, side);
  const feeds = inputs(width, height);
  const generation = page.generation;
  page.button.disabled = true;
  say(`Propagating at ${width}×${height}…`);
  try {
    const start = performance.now();
    const output = await page.session.run({image: feeds.image, sparse: feeds.sparse}, ["flow"]);
    const ms = performance.now() - start;
    if (generation !== page.generation) return;  // another image came meanwhile
    const result = {width, height, scaleX: feeds.scaleX, scaleY: feeds.scaleY,
                    flow: output.flow.data, ms};
    const flow = imageFlow(result, page.image.naturalWidth, page.image.naturalHeight);
    drawFlow(flow);
    const count = animate(flow, frames);
    window.cmpResult = result;
    say(`Flow at ${width}×${height} in ${ms.toFixed(0)} ms in this browser; ` +
        `${count} animation frames.`);
  } catch (error) {
    say(`The model failed: ${error}`);
  } finally {
    page.button.disabled = false;
  }
});

loadModel();
