// The Thorax console: plain JavaScript, no build step, nothing fetched from elsewhere. Every call goes to
// the gateway that served this page, with the API key the user entered (kept for this browser session).
"use strict";

const KEY_STORE = "thorax.apiKey";
const DRAFT_STORE = "thorax.jobDraft";
const PREVIEW_DELAY_MS = 100; // debounce: a drag sends one request, and the preview follows it within about 300 ms
const view = document.getElementById("view");
let leaveView = () => {}; // stops the current view's polling

// ---- the gateway ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

async function api(method, path, body) {
  const headers = {};
  if (apiKey()) headers["X-API-Key"] = apiKey();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let problem = { title: response.statusText, status: response.status };
    try { problem = await response.json(); } catch (_) { /* not problem+json */ }
    const error = new ApiError(response.status, problem);
    if (response.status === 401) showKeyProblem(error);
    throw error;
  }
  return response;
}

const getJson = async (path) => (await api("GET", path)).json();
const postJson = async (path, body) => (await api("POST", path, body)).json();

async function blobUrl(path, method = "GET", body) {
  const response = await api(method, path, body);
  const bytes = await response.arrayBuffer();
  return { url: URL.createObjectURL(new Blob([bytes], { type: response.headers.get("content-type") })), bytes };
}

async function digest(bytes) {
  const hash = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(hash).slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function download(path, filename) {
  const { url } = await blobUrl(path);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
}

// ---- the API key ------------------------------------------------------------------------------------

const keyMessage = document.getElementById("key-message");

function say(text, ok = false) {
  keyMessage.textContent = text;
  keyMessage.classList.toggle("ok", ok);
  keyMessage.hidden = !text;
}

function showKeyProblem(error) {
  say(apiKey()
    ? `The gateway refused this API key (${error.message}). Enter the key you were given, then "Use key".`
    : `This gateway needs an API key (${error.message}). Enter it above, then "Use key".`);
}

document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  sessionStorage.setItem(KEY_STORE, input.value.trim());
  input.value = "";
  try {
    await getJson("/v1/models");
    say("Key accepted: it is kept until this browser tab closes.", true);
    route();
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) say(error.message);
  }
});
document.getElementById("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  say("The key is forgotten.", true);
});

// ---- small helpers ----------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
const num = (x, digits = 3) => (x === null || x === undefined ? "–" : x.toFixed(digits));

function bytesText(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function secondsText(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}

function poll(fn, everyMs) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try { await fn(); } catch (error) { console.warn(error); }
    if (!stopped) timer = setTimeout(tick, everyMs);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function modelRef(model) {
  return `${model.name}/${model.version}`;
}

async function modelOptions(selected) {
  const { models } = await getJson("/v1/models");
  const select = h("select", { name: "model" });
  for (const m of models) {
    select.append(h("option", { value: m.ref, selected: m.ref === selected || (!selected && m.default) },
      `${m.ref}${m.default ? " (default)" : ""}`));
  }
  return { select, models };
}

// ---- models -----------------------------------------------------------------------------------------

async function modelsView() {
  const { models } = await getJson("/v1/models");
  view.replaceChildren(h("h1", {}, "Models"), h("div", { class: "grid" }, models.map((m) =>
    h("a", { class: "card", href: `#/models/${m.ref}`, style: "text-decoration:none;color:inherit" },
      h("h2", {}, m.ref, " ", m.default ? h("span", { class: "badge" }, "default") : null),
      h("p", { class: "muted" }, `${m.resolution} px · ${m.labels.length} labels · latent ${m.latent_dim}`),
      h("p", {}, m.labels.join(", "))))));
}

function keyValueTable(entries) {
  return h("table", {}, entries.map(([k, v]) =>
    h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))));
}

async function modelView(name, version) {
  const card = await getJson(`/v1/models/${name}/${version}`);
  const { figures } = await getJson(`/v1/models/${name}/${version}/files`);
  const data = card.training_data || {};
  const figureBox = h("div", { class: "grid figures" });
  view.replaceChildren(
    h("h1", {}, `${card.name}/${card.version}`),
    h("p", {}, h("a", { class: "button", href: `#/studio?model=${card.name}/${card.version}` }, "Open in the studio")),
    h("div", { class: "card" },
      h("p", {}, card.intended_use || ""),
      card.not_for ? h("p", {}, h("strong", {}, "Not for: "), card.not_for.join("; ")) : null,
      card.privacy ? h("p", { class: "muted" }, card.privacy) : null),
    h("h2", {}, "Architecture"),
    keyValueTable([
      ["family", card.architecture.family], ["resolution", `${card.architecture.resolution} px`],
      ["latent", card.architecture.latent_dim], ["parameters", card.architecture.parameters],
      ["created", card.created],
    ]),
    h("h2", {}, "Labels"),
    h("p", {}, card.labels.names.join(", "), h("br"), h("span", { class: "muted" }, card.labels.encoding || "")),
    h("h2", {}, "Training data"),
    h("p", {}, data.description || ""),
    h("table", {}, h("tr", {}, h("th", {}, "source"), h("th", { class: "num" }, "images"), h("th", {}, "licence"),
      h("th", {}, "attribution")),
    (data.sources || []).map((s) => h("tr", {}, h("td", {}, s.name), h("td", { class: "num" }, s.images ?? ""),
      h("td", {}, s.licence || ""), h("td", {}, s.attribution || "")))),
    data.split ? h("p", { class: "muted" }, data.split) : null,
    h("h2", {}, "Evaluation"),
    keyValueTable(Object.entries(card.evaluation || {}).filter(([k]) => k !== "file")),
    h("h2", {}, "Figures"),
    figureBox,
    h("h2", {}, "Limitations"),
    h("ul", {}, (card.limitations || []).map((l) => h("li", {}, l))),
  );
  for (const figure of figures) {
    const img = h("img", { alt: figure });
    figureBox.append(h("figure", {}, img, h("figcaption", { class: "muted" }, figure)));
    blobUrl(`/v1/models/${name}/${version}/files/${figure}`).then(({ url }) => { img.src = url; });
  }
}

// ---- studio -----------------------------------------------------------------------------------------

async function studioView(params) {
  const { select, models } = await modelOptions(params.get("model"));
  const seed = h("input", { id: "studio-seed", type: "number", min: 0, value: params.get("seed") || 0, style: "width:8rem" });
  const prior = h("input", { id: "studio-prior", type: "checkbox" });
  const sliders = h("div", { id: "sliders" });
  const preview = h("img", { id: "preview", alt: "preview", "data-requests": 0 });
  const previewError = h("p", { class: "error", id: "preview-error" });
  const picture = h("img", { id: "picture", alt: "" });
  const pictureNote = h("p", { class: "muted", id: "picture-note" });
  const likeCount = h("input", { id: "like-count", type: "number", min: 1, value: 1000, style: "width:7rem" });
  select.id = "studio-model";

  const model = () => models.find((m) => m.ref === select.value);
  const values = () => Object.fromEntries(
    [...sliders.querySelectorAll("input[type=range]")].map((s) => [s.dataset.label, Number(s.value)]));
  const labels = () => {
    const chosen = Object.fromEntries(Object.entries(values()).filter(([, v]) => v > 0));
    return prior.checked ? { prior: "model", fixed: chosen } : chosen;
  };

  let timer = null;
  let sent = 0;
  const refresh = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const number = ++sent;
      preview.classList.add("busy");
      try {
        const body = { model: select.value, seed: Number(seed.value), count: 4, labels: labels() };
        const { url, bytes } = await blobUrl("/v1/preview", "POST", body);
        if (number !== sent) return; // a newer request is on its way
        preview.src = url;
        preview.dataset.digest = await digest(bytes);
        preview.dataset.requests = String(number);
        previewError.textContent = "";
      } catch (error) {
        previewError.textContent = error.message;
      } finally {
        if (number === sent) preview.classList.remove("busy");
      }
    }, PREVIEW_DELAY_MS);
  };

  const buildSliders = () => {
    sliders.replaceChildren(...model().labels.map((name) => {
      const out = h("output", {}, "0");
      const slider = h("input", { type: "range", min: 0, max: 1, step: 0.05, value: 0, "data-label": name,
        oninput: () => { out.textContent = Number(slider.value).toFixed(2); refresh(); } });
      return h("label", { class: "slider" }, h("span", {}, name.replaceAll("_", " ")), slider, out);
    }));
    refresh();
  };

  const draw = async (kind) => {
    const chosen = Object.entries(values()).filter(([, v]) => v > 0).map(([name]) => name);
    if (!chosen.length) {
      pictureNote.textContent = "Move a label's slider above 0 to choose the labels to draw.";
      return;
    }
    pictureNote.textContent = kind === "transitions"
      ? "Each row: one label alone at 0, 0.3, 0.6 and 1 on the same latent."
      : "Each row: healthy | the label at 1 | red where brighter, blue where darker.";
    try {
      const { url } = await blobUrl("/v1/visualize", "POST",
        { model: select.value, kind, labels: chosen, seed: Number(seed.value) });
      picture.src = url;
    } catch (error) {
      pictureNote.textContent = error.message;
    }
  };

  const likeThis = () => {
    sessionStorage.setItem(DRAFT_STORE, JSON.stringify({
      model: select.value, seed: Number(seed.value), count: Number(likeCount.value), labels: labels(),
    }));
    location.hash = "#/new";
  };

  select.addEventListener("change", buildSliders);
  seed.addEventListener("input", refresh);
  prior.addEventListener("change", refresh);
  view.replaceChildren(h("h1", {}, "Studio"), h("div", { class: "studio" },
    h("div", { class: "card" },
      h("label", {}, h("span", {}, "model"), select),
      h("label", {}, h("span", {}, "seed"), seed),
      h("label", {}, prior, " draw the other labels from the prior"),
      sliders),
    h("div", {},
      preview, previewError,
      h("p", {},
        h("button", { id: "transitions", onclick: () => draw("transitions") }, "Transitions"), " ",
        h("button", { id: "difference", onclick: () => draw("difference") }, "Difference maps"), " · ",
        "Generate ", likeCount, " ", h("button", { id: "like-this", class: "primary", onclick: likeThis }, "like this")),
      pictureNote, picture)));
  buildSliders();
}

// ---- jobs -------------------------------------------------------------------------------------------

function progressBar(job) {
  const made = job.state === "succeeded" ? job.count : (job.images_made ?? job.images_done);
  const share = job.count ? Math.min(1, made / job.count) : 0;
  return h("div", { class: "progress", title: `${made} of ${job.count} images` },
    h("div", { style: `width:${(100 * share).toFixed(1)}%` }), h("span", {}, `${Math.floor(100 * share)} %`));
}

function jobActions(job, after) {
  const act = async (method, path) => {
    try { await api(method, path); } catch (error) { alert(error.message); }
    after();
  };
  return [
    ["queued", "running"].includes(job.state)
      ? h("button", { class: "cancel", onclick: () => act("DELETE", `/v1/jobs/${job.id}`) }, "Cancel") : null,
    job.state === "failed"
      ? h("button", { class: "resume", onclick: () => act("POST", `/v1/jobs/${job.id}/resume`) }, "Resume") : null,
  ];
}

async function jobsView() {
  const body = h("tbody");
  const problem = h("div");
  view.replaceChildren(h("h1", {}, "Jobs"), problem, h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ["job", "model", "state", "progress", "images", "rate", "time left", "created", ""]
      .map((t) => h("th", {}, t)))), body));
  const load = async () => {
    try {
      const { jobs } = await getJson("/v1/jobs");
      problem.replaceChildren();
      body.replaceChildren(...jobs.map((job) => h("tr", { "data-job": job.id },
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id.slice(0, 8))),
        h("td", {}, job.model),
        h("td", { class: `state-${job.state}` }, job.state, job.error ? h("div", { class: "error" }, job.error) : null),
        h("td", {}, progressBar(job)),
        h("td", { class: "num" }, `${job.images_done} / ${job.count}`),
        h("td", { class: "num" }, job.images_per_second ? `${job.images_per_second.toFixed(1)} /s` : "–"),
        h("td", { class: "num" }, secondsText(job.seconds_left)),
        h("td", {}, new Date(job.created).toLocaleString()),
        h("td", {}, jobActions(job, load)))));
      if (!jobs.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No jobs yet: start one from New job.")));
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  };
  leaveView = poll(load, 1000);
}

function untar(buffer) {
  const bytes = new Uint8Array(buffer);
  const text = (a) => new TextDecoder().decode(a).replace(/\0[\s\S]*$/, "");
  const members = [];
  for (let at = 0; at + 512 <= bytes.length;) {
    const header = bytes.subarray(at, at + 512);
    if (header.every((b) => b === 0)) break;
    const size = parseInt(text(header.subarray(124, 136)).trim() || "0", 8);
    const prefix = text(header.subarray(345, 500));
    const name = text(header.subarray(0, 100));
    at += 512;
    members.push({ name: prefix ? `${prefix}/${name}` : name, data: bytes.slice(at, at + size) });
    at += Math.ceil(size / 512) * 512;
  }
  return members;
}

function labelChart(manifest) {
  const counts = manifest.label_counts;
  const names = manifest.spec.label_names.filter((n) => n in counts);
  const top = Math.max(1, ...names.map((n) => counts[n]));
  return h("div", { class: "bars", id: "label-chart" }, names.map((n) => [
    h("span", {}, n.replaceAll("_", " ")),
    h("div", {}, h("div", { class: "bar", style: `width:${(100 * counts[n]) / top}%` })),
    h("span", { class: "num" }, String(counts[n])),
  ]));
}

async function galleryOf(job, box) {
  const response = await api("GET", `/v1/jobs/${job.id}/shards/0`);
  const samples = new Map();
  for (const member of untar(await response.arrayBuffer())) {
    const [key, ext] = [member.name.slice(0, member.name.indexOf(".")), member.name.slice(member.name.indexOf(".") + 1)];
    if (!samples.has(key)) samples.set(key, {});
    samples.get(key)[ext] = member.data;
  }
  const shown = [...samples.entries()].slice(0, 200);
  box.replaceChildren(...shown.map(([key, sample]) => {
    const record = JSON.parse(new TextDecoder().decode(sample.json));
    const positives = Object.entries(record.labels).filter(([, v]) => v > 0)
      .map(([n, v]) => `${n.replaceAll("_", " ")} ${v.toFixed(2)}`);
    const caption = `#${record.index}: ${positives.length ? positives.join(", ") : "no finding"}`;
    const picture = sample.png
      ? h("img", { src: URL.createObjectURL(new Blob([sample.png], { type: "image/png" })), alt: caption })
      : h("div", { class: "muted" }, "DICOM (download the shard to view it)");
    return h("figure", { title: caption, "data-key": key }, picture, h("figcaption", {}, caption));
  }));
  if (samples.size > shown.length) box.after(h("p", { class: "muted" }, `The first ${shown.length} of ${samples.size} images.`));
}

async function jobView(id) {
  const head = h("div");
  const details = h("div");
  view.replaceChildren(h("h1", {}, `Job ${id.slice(0, 8)}`), head, details);
  let drawn = false;
  let shownShards = -1;
  const gallery = h("div", { class: "gallery", id: "gallery" });
  const shardList = h("ul", { id: "shards" });
  const load = async () => {
    const job = await getJson(`/v1/jobs/${id}`);
    head.replaceChildren(h("div", { class: "card" },
      h("p", {}, h("strong", { class: `state-${job.state}` }, job.state), ` · ${job.model} · seed ${job.seed} · ${job.format}`),
      progressBar(job),
      h("p", { class: "muted" }, `${job.images_done} of ${job.count} images in ${job.shards_done} of ${job.shards_total} shards · `,
        job.images_per_second ? `${job.images_per_second.toFixed(1)} images/s · ${secondsText(job.seconds_left)} left` : "",
        h("br"), job.location),
      job.error ? h("p", { class: "error" }, job.error) : null,
      h("p", {}, jobActions(job, load))));
    if (job.shards_done > 0 && shownShards !== job.shards_done) {
      shownShards = job.shards_done;
      const { shards } = await getJson(`/v1/jobs/${id}/shards`);
      shardList.replaceChildren(...shards.map((s, n) => h("li", {}, shardLink(job, s, n),
        h("span", { class: "muted" }, ` ${s.images} images · ${bytesText(s.bytes)} · sha256 ${s.sha256.slice(0, 12)}…`))));
    }
    if (!drawn && job.shards_done > 0) {
      drawn = true;
      details.append(h("h2", {}, "Shards"), shardList);
      if (job.state === "succeeded") {
        const manifest = await getJson(`/v1/jobs/${id}/manifest`);
        details.append(
          h("h2", {}, "Labels (images with a value ≥ 0.5)"), labelChart(manifest),
          h("p", {}, h("button", { class: "download", onclick: () => download(`/v1/jobs/${id}/manifest`, `${id}-manifest.json`) },
            "Download manifest.json")));
      }
      details.append(h("h2", {}, "The first shard's images (hover for their labels)"), gallery);
      galleryOf(job, gallery).catch((error) => gallery.replaceChildren(errorBox(error)));
    }
    if (["succeeded", "failed", "cancelled"].includes(job.state) && drawn) return "done";
  };
  let stop = () => {};
  const tick = async () => { try { if ((await load()) === "done") stop(); } catch (error) { head.replaceChildren(errorBox(error)); } };
  stop = poll(tick, 1000);
  leaveView = () => stop();
}

function shardLink(job, shard, n) {
  if (shard.url && !shard.url.startsWith(location.origin)) { // presigned: no key needed
    return h("a", { class: "download", href: shard.url, download: shard.name }, shard.name);
  }
  return h("a", { class: "download", href: "#", onclick: (e) => { e.preventDefault(); download(`/v1/jobs/${job.id}/shards/${n}`, shard.name); } },
    shard.name);
}

// ---- new job ----------------------------------------------------------------------------------------

async function newJobView() {
  const draft = JSON.parse(sessionStorage.getItem(DRAFT_STORE) || "null");
  sessionStorage.removeItem(DRAFT_STORE);
  const { select, models } = await modelOptions(draft && draft.model);
  const form = h("form", { id: "job-form", class: "card", autocomplete: "off" });
  const field = (name, input, label) => h("label", {}, h("span", {}, label || name), input,
    h("span", { class: "field-error", "data-field": name }));
  const count = h("input", { name: "count", type: "number", min: 1, value: draft ? draft.count : 100 });
  const seed = h("input", { name: "seed", type: "number", min: 0, placeholder: "chosen for you", value: draft ? draft.seed : "" });
  const resolution = h("select", { name: "resolution" });
  const format = h("select", { name: "format" }, h("option", { value: "png" }, "PNG"), h("option", { value: "dicom" }, "DICOM"));
  const shardSize = h("input", { name: "shard_size", type: "number", min: 1, value: 1000 });
  const prefix = h("input", { name: "prefix", placeholder: "e.g. cardio/run1" });
  const usePrior = draft && draft.labels && draft.labels.prior === "model";
  const modeFixed = h("input", { type: "radio", name: "mode", value: "fixed", checked: !usePrior });
  const modePrior = h("input", { type: "radio", name: "mode", value: "prior", checked: !!usePrior });
  const labelBox = h("div", { id: "job-labels" });
  const estimate = h("div", { id: "estimate" });
  const formError = h("p", { class: "error", id: "form-error", role: "alert" });

  const fill = () => {
    const model = models.find((m) => m.ref === select.value);
    resolution.replaceChildren();
    for (let r = model.resolution; r >= 4; r = Math.floor(r / 2)) resolution.append(h("option", { value: r }, `${r} px`));
    const given = draft ? (usePrior ? draft.labels.fixed : draft.labels) : {};
    labelBox.replaceChildren(...model.labels.map((name) => h("label", {}, h("span", {}, name.replaceAll("_", " ")),
      h("input", { type: "number", min: 0, max: 1, step: 0.05, "data-label": name, value: given[name] ?? "", style: "width:6rem" }),
      h("span", { class: "field-error", "data-field": `labels.${name}` }))));
  };
  select.addEventListener("change", fill);

  const body = () => {
    const values = {};
    for (const input of labelBox.querySelectorAll("input[data-label]")) {
      if (input.value !== "") values[input.dataset.label] = Number(input.value);
    }
    const out = {
      model: select.value, count: Number(count.value), resolution: Number(resolution.value), format: format.value,
      shard_size: Number(shardSize.value), prefix: prefix.value.trim(),
      labels: modePrior.checked ? { prior: "model", fixed: values }
        : Object.fromEntries(Object.entries(values).filter(([, v]) => v !== 0)),
    };
    if (seed.value !== "") out.seed = Number(seed.value);
    return out;
  };
  const showProblem = (error) => {
    formError.textContent = error.message;
    for (const e of (error.problem && error.problem.errors) || []) {
      const slot = form.querySelector(`[data-field="${CSS.escape(e.field)}"]`);
      if (slot) slot.textContent = e.message;
    }
  };
  const clear = () => {
    formError.textContent = "";
    for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
  };
  const dryRun = async () => {
    clear();
    estimate.replaceChildren(h("p", { class: "muted" }, "Measuring a trial batch…"));
    try {
      const e = await postJson("/v1/jobs?dry_run=true", body());
      estimate.replaceChildren(h("table", { class: "card" },
        [["images", `${e.count} at ${e.resolution} px, ${e.format}`], ["shards", `${e.shards_total} of up to ${e.shard_size} images`],
          ["size", `about ${bytesText(e.bytes)} (${bytesText(e.bytes_per_image)} per image)`],
          ["time", `at most about ${secondsText(e.seconds)} at ${e.images_per_second.toFixed(1)} images/s`],
          ["measured with", e.measured_with]]
          .map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { "data-estimate": k }, v)))));
    } catch (error) {
      estimate.replaceChildren();
      showProblem(error);
    }
  };
  const submit = async (event) => {
    event.preventDefault();
    clear();
    try {
      const job = await postJson("/v1/jobs", body());
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      showProblem(error);
    }
  };
  form.addEventListener("submit", submit);
  form.append(
    field("model", select), field("count", count, "images"), field("seed", seed),
    h("label", {}, h("span", {}, "labels"), modeFixed, " the same for every image (blank = 0) ", modePrior,
      " drawn from the prior, these fixed"),
    h("span", { class: "field-error", "data-field": "labels" }),
    labelBox,
    field("resolution", resolution), field("format", format), field("shard_size", shardSize, "images per shard"),
    field("prefix", prefix, "folder"),
    h("p", {}, h("button", { type: "button", id: "dry-run", onclick: dryRun }, "Dry run"), " ",
      h("button", { type: "submit", id: "submit-job", class: "primary" }, "Submit")),
    formError);
  view.replaceChildren(h("h1", {}, "New job"), form, estimate);
  fill();
}

// ---- reader studies ---------------------------------------------------------------------------------

async function studiesView() {
  const { select } = await modelOptions();
  const list = h("tbody");
  const links = h("div", { id: "study-links" });
  const formError = h("p", { class: "error", id: "study-error", role: "alert" });
  const input = (name, attrs) => h("label", {}, h("span", {}, name.replaceAll("_", " ")), h("input", { name, ...attrs }));
  const readers = h("textarea", { name: "readers", rows: 4, cols: 40, placeholder: "one per line: name, group" });
  const form = h("form", { id: "study-form", class: "card", autocomplete: "off" },
    input("name", { value: "Real or generated?" }),
    h("label", {}, h("span", {}, "model"), select),
    input("resolutions", { value: "32, 64", placeholder: "e.g. 32, 64: one block each, low first" }),
    input("per_block", { type: "number", min: 1, value: 10 }),
    input("seconds_per_image", { type: "number", min: 1, step: "any", value: 30 }),
    h("label", {}, h("span", {}, "readers"), readers),
    input("seed", { type: "number", min: 0, placeholder: "chosen for you" }),
    h("p", { class: "muted" }, "Each block shows as many real radiographs from the gateway's study folder as generated ones, in a seeded random order."),
    h("button", { type: "submit", class: "primary", id: "create-study" }, "Create the study"),
    formError);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    const value = (name) => form.querySelector(`[name=${name}]`).value.trim();
    const body = {
      name: value("name"), model: select.value,
      resolutions: value("resolutions").split(/[\s,]+/).filter(Boolean).map(Number),
      per_block: Number(value("per_block")), seconds_per_image: Number(value("seconds_per_image")),
      readers: readers.value.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
        const [name, group] = line.split(",").map((p) => p.trim());
        return group ? { name, group } : { name };
      }),
    };
    if (value("seed") !== "") body.seed = Number(value("seed"));
    try {
      const study = await postJson("/v1/studies", body);
      links.replaceChildren(h("div", { class: "card" },
        h("h2", {}, `Reader links for “${study.name}”`),
        h("p", { class: "muted" }, "Send each reader their own link. They are shown only now: the gateway keeps only a hash of each."),
        h("ul", {}, study.readers.map((r) => h("li", {}, `${r.name} (${r.group}): `,
          h("a", { class: "reader-link", href: r.url, "data-reader": r.name, target: "_blank" }, r.url)))),
        h("p", {}, h("a", { href: `#/studies/${study.id}` }, "Follow the study and its results"))));
      load();
    } catch (error) {
      formError.textContent = error.message;
    }
  });
  const load = async () => {
    const { studies } = await getJson("/v1/studies");
    list.replaceChildren(...studies.map((s) => h("tr", {},
      h("td", {}, h("a", { href: `#/studies/${s.id}` }, s.name)), h("td", {}, s.model),
      h("td", {}, s.resolutions.map((r) => `${r} px`).join(" → ")),
      h("td", { class: "num" }, s.images_per_reader),
      h("td", {}, s.readers.map((r) => `${r.name} ${r.answered}/${s.images_per_reader}`).join(", ")))));
  };
  view.replaceChildren(h("h1", {}, "Reader studies"),
    h("p", { class: "muted" }, "Readers tell real radiographs from generated ones, one image at a time, against the clock and without going back (the paper's reader study)."),
    links,
    h("table", {}, h("thead", {}, h("tr", {}, ["study", "model", "blocks", "images", "readers"].map((t) => h("th", {}, t)))), list),
    h("h2", {}, "New study"), form);
  leaveView = poll(load, 3000);
}

async function studyView(id) {
  const head = h("div");
  const table = h("tbody");
  view.replaceChildren(h("h1", {}, "Reader study"), head,
    h("h2", {}, "Results"),
    h("p", { class: "muted" }, "Positive = generated. An unanswered image counts as wrong. A group shows its readers' mean (± standard error) and Fleiss' kappa over the images all of them answered."),
    h("table", { id: "results" }, h("thead", {}, h("tr", {},
      ["", "name", "group", "block", "images", "answered", "accuracy", "sensitivity", "specificity", "Fleiss' κ"]
        .map((t) => h("th", {}, t)))), table),
    h("p", {},
      h("button", { id: "csv-results", onclick: () => download(`/v1/studies/${id}/results.csv`, `study-${id}-results.csv`) }, "Results as CSV"), " ",
      h("button", { id: "csv-answers", onclick: () => download(`/v1/studies/${id}/answers.csv`, `study-${id}-answers.csv`) }, "Answers as CSV")));
  const load = async () => {
    const { study, rows } = await getJson(`/v1/studies/${id}/results`);
    head.replaceChildren(h("div", { class: "card" },
      h("h2", {}, study.name),
      h("p", { class: "muted" }, `${study.model} · blocks ${study.resolutions.map((r) => `${r} px`).join(" → ")} · `,
        `${study.per_block} real + ${study.per_block} generated each · ${study.seconds_per_image} s per image · seed ${study.seed}`),
      h("ul", {}, study.readers.map((r) => h("li", {}, `${r.name} (${r.group}): ${r.answered} of ${study.images_per_reader}`)))));
    table.replaceChildren(...rows.map((r) => h("tr", { "data-row": `${r.kind}:${r.name}:${r.resolution ?? "all"}` },
      h("td", {}, r.kind), h("td", {}, r.name), h("td", {}, r.group),
      h("td", {}, r.resolution ? `${r.resolution} px` : "all"),
      h("td", { class: "num" }, r.images), h("td", { class: "num" }, r.answered),
      h("td", { class: "num", "data-col": "accuracy" }, pct(r.accuracy), r.accuracy_se !== null && r.accuracy_se !== undefined ? ` ± ${pct(r.accuracy_se)}` : ""),
      h("td", { class: "num", "data-col": "sensitivity" }, pct(r.sensitivity)),
      h("td", { class: "num", "data-col": "specificity" }, pct(r.specificity)),
      h("td", { class: "num", "data-col": "kappa" }, r.kind === "group" && r.kappa_images !== null ? `${num(r.kappa)} (${r.kappa_images} images)` : ""))));
  };
  leaveView = poll(async () => { try { await load(); } catch (error) { head.replaceChildren(errorBox(error)); } }, 2000);
}

// ---- routing ----------------------------------------------------------------------------------------

async function route() {
  leaveView();
  leaveView = () => {};
  const [path, query] = (location.hash.slice(1) || "/models").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === parts[0]);
  try {
    if (parts[0] === "models" && parts.length === 3) await modelView(parts[1], parts[2]);
    else if (parts[0] === "studio") await studioView(params);
    else if (parts[0] === "jobs" && parts[1]) await jobView(parts[1]);
    else if (parts[0] === "jobs") await jobsView();
    else if (parts[0] === "new") await newJobView();
    else if (parts[0] === "studies" && parts[1]) await studyView(parts[1]);
    else if (parts[0] === "studies") await studiesView();
    else await modelsView();
  } catch (error) {
    view.replaceChildren(errorBox(error));
  }
}

window.addEventListener("hashchange", route);
route();
