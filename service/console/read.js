// A reader's page of a Thorax reader study. The token after "#" in the link is the reader's only
// credential. One image at a time: answer with R (real) or F (generated, "fake") before the time runs out;
// then the next image comes, and no image comes back.
"use strict";

const page = document.getElementById("reader");
const token = decodeURIComponent(location.hash.slice(1));
const base = `/v1/read/${encodeURIComponent(token)}`;
let current = null; // the state of the image on screen
let deadline = null;
let ticking = null;
let busy = false;

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method, headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

function problem(message) {
  page.replaceChildren(h("h1", {}, "Reader study"), h("p", { class: "error", id: "reader-error" }, message));
}

async function start() {
  if (!token) return problem("This page needs your reader link: ask the study's operator for it.");
  let state;
  try {
    state = await (await call("GET", base)).json();
  } catch (error) {
    return problem(error.message);
  }
  if (state.done) return finished(state);
  if (state.position === 0 && state.seconds_left === null) {
    page.replaceChildren(
      h("h1", {}, state.study),
      h("p", {}, `Hello ${state.reader}. You will see ${state.images_total} chest radiographs, one at a time, in ${state.blocks} blocks of increasing resolution.`),
      h("p", {}, `Decide for each whether it is real or generated: press R for real, F for generated (fake). You have ${state.seconds_per_image} s per image; then the next one comes. You cannot go back.`),
      h("button", { id: "begin", class: "primary", onclick: () => show(state) }, "Begin"));
    return;
  }
  show(state);
}

async function show(state) {
  if (state.done) return finished(state);
  current = null;
  const image = h("img", { class: "reader-image", id: "reader-image", alt: "radiograph" });
  const bar = h("div", { style: "width:100%" });
  const timer = h("span", { id: "timer" }, "");
  page.replaceChildren(
    h("p", { class: "muted", id: "reader-position" },
      `Image ${state.position + 1} of ${state.images_total} · block ${state.block + 1} of ${state.blocks}`, " · ", timer),
    image,
    h("div", { class: "reader-bar" }, bar),
    h("div", { class: "reader-answers" },
      h("button", { id: "answer-real", onclick: () => answer("real") }, "Real (R)"),
      h("button", { id: "answer-generated", onclick: () => answer("generated") }, "Generated (F)")));
  let bytes;
  try {
    bytes = await (await call("GET", state.image_url)).arrayBuffer();
  } catch (error) {
    return problem(error.message);
  }
  image.src = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  await image.decode().catch(() => {});
  const seconds = state.seconds_left ?? state.seconds_per_image;
  deadline = performance.now() + 1000 * seconds;
  current = state;
  image.dataset.position = String(state.position);
  clearInterval(ticking);
  const tick = () => {
    const left = Math.max(0, (deadline - performance.now()) / 1000);
    timer.textContent = `${left.toFixed(0)} s left`;
    bar.style.width = `${(100 * left) / state.seconds_per_image}%`;
    if (left <= 0) answer(null); // the time ran out: the image closes unanswered
  };
  ticking = setInterval(tick, 100);
  tick();
}

async function answer(choice) {
  if (!current || busy) return;
  busy = true;
  clearInterval(ticking);
  const state = current;
  current = null;
  try {
    const next = await (await call("POST", `${base}/answers`, { position: state.position, image: state.image, answer: choice })).json();
    busy = false;
    show(next);
  } catch (error) {
    busy = false;
    if (error.status === 409) return start(); // answered elsewhere (another tab): go on from where it is
    problem(error.message);
  }
}

function finished(state) {
  clearInterval(ticking);
  page.replaceChildren(h("h1", { id: "reader-done" }, "Thank you"),
    h("p", {}, `You have answered all ${state.images_total} images of “${state.study}”. You can close this page.`));
}

document.addEventListener("keydown", (event) => {
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "r") answer("real");
  else if (key === "f") answer("generated");
});
window.addEventListener("hashchange", () => location.reload());
start();
