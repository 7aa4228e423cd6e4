// The tree and DAG viewer: a rooted tree at a chosen threshold, the other parents drawn over it,
// and a latent card on click. Plain DOM and SVG, served locally; state lives in the URL hash.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLUMN = 250;
const ROW = 26;
const MARGIN = { top: 24, left: 16 };
const NOVEL = 0.5; // max_dec_cos below this: drawn as new at its width

const state = { family: null, root: null, threshold: 0.6, selected: null, request: 0, summary: 0 };

async function api(path) {
  const response = await fetch(path);
  const body = await response.json();
  if (!body.ok) throw new Error(body.error);
  return body;
}

const enc = (label) => label.split("/").map(encodeURIComponent).join("/");
const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toPrecision(digits));

function el(tag, attrs = {}, text = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function message(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "muted";
  box.hidden = !text;
}

// URL hash: #root=S/1/3&t=0.6
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const t = parseFloat(params.get("t"));
  return { root: params.get("root"), threshold: Number.isFinite(t) ? t : null };
}

function writeHash() {
  const params = new URLSearchParams({ root: state.root, t: state.threshold.toFixed(2) });
  history.replaceState(null, "", "#" + params.toString());
}

async function loadFamilies() {
  const { families } = await api("/api/families");
  const select = $("family");
  select.replaceChildren(...families.map((f) => el("option", { value: f.name }, f.name)));
  return families;
}

async function suggest(prefix) {
  const params = new URLSearchParams({ q: prefix, limit: "30" });
  if (state.family) params.set("family", state.family);
  const { rows } = await api("/api/search?" + params);
  $("roots").replaceChildren(
    ...rows.map((r) => el("option", { value: r.label }, `max ${fmt(r.max_act)} freq ${fmt(r.frequency)}`)),
  );
  return rows;
}

// The root to open for a family: its suggested root (a tree that fits a screen), else the first
// latent of its smallest sae.
async function chooseFamily(families, name) {
  state.family = name;
  $("family").value = name;
  const family = families.find((f) => f.name === name);
  // The slider starts at the floor the edges were stored with: below it trees would be partial.
  if (family && family.store_floor !== null) $("threshold").min = String(family.store_floor);
  const first = family && family.saes.length ? family.saes[0].label + "/" : name + "/";
  const rows = await suggest(first);
  if (family && family.suggested_root) return family.suggested_root;
  return rows.length ? rows[0].label : null;
}

// Scroll the canvas so that the root sits a third of the way down (wide trees start far down).
function keepRootInView(root) {
  const canvas = $("canvas");
  canvas.scrollTop = Math.max(0, root.y - canvas.clientHeight / 3);
  canvas.scrollLeft = 0;
}

// Leaves stacked top to bottom, each parent centred on its children; columns by depth.
function layout(root) {
  const nodes = [];
  let next = 0;
  (function place(node, depth) {
    node.x = MARGIN.left + depth * COLUMN;
    if (node.children.length === 0) {
      node.y = MARGIN.top + next++ * ROW;
    } else {
      node.children.forEach((child) => place(child, depth + 1));
      node.y = (node.children[0].y + node.children[node.children.length - 1].y) / 2;
    }
    nodes.push(node);
  })(root, 0);
  return { nodes, height: MARGIN.top * 2 + Math.max(next, 1) * ROW };
}

function curve(a, b) {
  const mid = (a.x + b.x) / 2;
  return `M${a.x},${a.y} C${mid},${a.y} ${mid},${b.y} ${b.x},${b.y}`;
}

function draw(tree, dag) {
  const svg = $("tree");
  const { nodes, height } = layout(tree.root);
  const at = new Map(nodes.map((n) => [n.node, n]));
  const depth = Math.max(...nodes.map((n) => n.depth));
  svg.setAttribute("width", MARGIN.left * 2 + depth * COLUMN + 220);
  svg.setAttribute("height", height);
  svg.replaceChildren();
  const links = el("g", {}, null, SVG);
  const overlay = el("g", { id: "overlay-links" }, null, SVG);
  overlay.style.display = $("overlay").checked ? "" : "none";
  for (const node of nodes) {
    for (const child of node.children) {
      const path = el("path", { class: "best", d: curve(node, child) }, null, SVG);
      path.setAttribute("stroke-width", (1 + 2 * Math.min(child.score, 1.5)).toFixed(1));
      links.append(path);
    }
  }
  for (const link of dag.links) {
    const source = at.get(link.source);
    const target = at.get(link.target);
    if (link.best || !source || !target) continue;
    const path = el("path", { class: "other", d: curve(source, target) }, null, SVG);
    path.append(el("title", {}, `${link.source} → ${link.target}  score ${fmt(link.weight)}`, SVG));
    overlay.append(path);
  }
  const group = el("g", {}, null, SVG);
  for (const node of nodes) {
    const classes = ["node"];
    if (node.parent === null) classes.push("root");
    // Decoder cosines (saes from checkpoints): a latent whose decoder is far from every one of
    // the next smaller sae is new at its width.
    if (node.max_dec_cos !== null && node.max_dec_cos !== undefined && node.max_dec_cos < NOVEL) classes.push("novel");
    if (node.node === state.selected) classes.push("selected");
    const g = el("g", { class: classes.join(" "), "data-label": node.node,
      transform: `translate(${node.x},${node.y})` }, null, SVG);
    g.append(el("circle", { r: 5 }, null, SVG));
    const label = el("text", { class: "label", x: 9, y: 4 }, node.node, SVG);
    if (node.explanation) {
      const short = node.explanation.length > 48 ? node.explanation.slice(0, 47) + "…" : node.explanation;
      label.append(el("tspan", { class: "explanation" }, `  ${short}`, SVG));
    }
    g.append(label);
    if (node.score !== null) {
      g.append(el("text", { class: "score", x: 9, y: 16 }, `score ${fmt(node.score)}`, SVG));
    }
    const others = node.other_parents.length ? `\nalso under ${node.other_parents.join(", ")}` : "";
    const explained = (node.explanation ? `\n${node.explanation}` : "") +
      (node.max_dec_cos !== null && node.max_dec_cos !== undefined ? `\nmax decoder cosine ${fmt(node.max_dec_cos)}${node.max_dec_cos < NOVEL ? " (new at this width)" : ""}` : "");
    g.append(el("title", {}, `${node.node}  max ${fmt(node.max_act)}  freq ${fmt(node.frequency)}${explained}${others}`, SVG));
    g.addEventListener("click", () => showCard(node.node));
    group.append(g);
  }
  svg.append(links, overlay, group);
  keepRootInView(tree.root);
}

async function showTree() {
  if (!state.root) return;
  const ticket = ++state.request;
  const t = state.threshold.toFixed(2);
  try {
    const [tree, dag] = await Promise.all([
      api(`/api/trees/${enc(state.root)}?threshold=${t}`),
      api(`/api/dags/${enc(state.root)}?threshold=${t}`),
    ]);
    if (ticket !== state.request) return; // a newer request won
    // A very large tree comes capped (its first nodes by depth): say so rather than time out.
    quickList(tree.quick_list);
    message(
      tree.left_out
        ? `${tree.n_nodes - tree.left_out} of ${tree.n_nodes} nodes shown (the first by depth);` +
            " raise the threshold or open a deeper root to see the rest"
        : "",
    );
    draw(tree, dag);
    const n = dag.nodes.length;
    const extra = dag.links.filter((l) => !l.best).length;
    $("canvas").dataset.nodes = String(n);
    $("canvas").dataset.otherLinks = String(extra);
    writeHash();
  } catch (error) {
    if (ticket !== state.request) return;
    $("tree").replaceChildren();
    message(error.message, true);
  }
}

// The tree's latents (of saes linked to Neuronpedia) as a Neuronpedia quick list.
function quickList(href) {
  const box = $("quick-list");
  box.replaceChildren();
  if (href) box.append(el("a", { href, target: "_blank", rel: "noopener" }, "open as a Neuronpedia quick list"));
}

// A card's parents or children: the neighbouring sae's first (the tree's edges), then those of
// saes further away (kept from before an sae was inserted between) under a heading of their own.
function scoredSection(rows, total, kind) {
  const shown = total > rows.length ? `${total}, ${rows.length} best shown` : `${total}`;
  const adjacent = rows.filter((r) => r.adjacent);
  const apart = rows.filter((r) => !r.adjacent);
  const parts = [el("h3", {}, `${kind} (${shown})`), scoredTable(adjacent, kind)];
  if (apart.length) {
    parts.push(el("h4", { class: "muted" }, `not adjacent (${apart.length}): an sae was inserted between`));
    parts.push(scoredTable(apart, `${kind} apart`));
  }
  return parts;
}

function scoredTable(rows, kind) {
  if (!rows.length) return el("p", { class: "muted" }, `no stored ${kind}`);
  const table = el("table", { class: kind });
  const head = el("tr");
  for (const h of ["latent", "score", "masked cos", "max ratio", "mcs", "co-active", "dec cos"]) head.append(el("th", {}, h));
  table.append(head);
  for (const row of rows) {
    const tr = el("tr", { class: row.qualifies ? "qualifies" : "" });
    const cell = el("td");
    const link = el("a", { "data-label": row.label, title: "show its card" }, row.label);
    link.addEventListener("click", () => showCard(row.label));
    cell.append(link);
    tr.append(cell);
    for (const v of [row.score, row.masked_cos, row.max_ratio, row.mcs]) tr.append(el("td", {}, fmt(v)));
    tr.append(el("td", {}, String(row.n_coactive)));
    tr.append(el("td", {}, fmt(row.dec_cos)));
    table.append(tr);
  }
  return table;
}

async function showCard(label) {
  state.selected = label;
  document.querySelectorAll("svg .node").forEach((g) => {
    g.classList.toggle("selected", g.dataset.label === label);
  });
  const card = $("card");
  card.className = "";
  card.dataset.label = label;
  try {
    const c = await api(`/api/latents/${enc(label)}?threshold=${state.threshold.toFixed(2)}&limit=20`);
    if (state.selected !== label) return;
    const title = el("h2", {}, c.label);
    const reroot = el("button", { id: "reroot", type: "button" }, "open as root");
    reroot.addEventListener("click", () => openRoot(c.label));
    const stats = el("div", { class: "stats" });
    const facts = [
      ["sae", `${c.sae} (level ${c.level}, d_sae ${c.d_sae})`],
      ["max activation", fmt(c.max_act)],
      ["active tokens", `${c.n_active} (frequency ${fmt(c.frequency)})`],
      ["forest", c.forest ? `root ${c.forest.root}, depth ${c.forest.depth}` : "–"],
    ];
    if (c.max_dec_cos !== null) facts.push(["max decoder cosine", `${fmt(c.max_dec_cos)}${c.max_dec_cos < NOVEL ? " (new at this width)" : ""}`]);
    for (const [k, v] of facts) stats.append(el("span", { class: "muted" }, k), el("span", {}, v));
    if (c.neuronpedia_id) {
      const href = `https://www.neuronpedia.org/${c.neuronpedia_id}/${c.idx}`;
      const link = el("a", { href, target: "_blank", rel: "noopener", id: "neuronpedia" }, `${c.neuronpedia_id}/${c.idx}`);
      stats.append(el("span", { class: "muted" }, "Neuronpedia"), el("span", {}, null));
      stats.lastChild.append(link);
    }
    const parts = [title, reroot, stats];
    for (const x of c.explanations) {
      const by = [x.type_name, x.explanation_model_name].filter(Boolean).join(", ");
      parts.push(el("p", { class: "explanation", title: by }, x.description));
    }
    const known = c.contexts.filter((x) => x.token !== null);
    if (known.length) {
      parts.push(el("h3", {}, "top activations"));
      for (const x of known.slice(0, 5)) {
        const line = el("div", { class: "context" }, `${fmt(x.value)}: ${x.context_before || ""}`);
        line.append(el("mark", {}, x.token), document.createTextNode(x.context_after || ""));
        parts.push(line);
      }
    } else if (c.contexts.length) {
      parts.push(el("p", { class: "muted" }, `top activations at tokens ${c.contexts.map((x) => x.position).slice(0, 5).join(", ")} (texts unknown)`));
    }
    parts.push(...scoredSection(c.parents, c.n_parents, "parents"));
    parts.push(...scoredSection(c.children, c.n_children, "children"));
    card.replaceChildren(...parts);
  } catch (error) {
    card.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

// The family at a glance: per pair of neighbouring levels, the latents that split, merge,
// persist, are new or vanish at the threshold, and the largest splits (each opens its tree).
async function showSummary() {
  if (!state.family) return;
  const ticket = ++state.summary;
  const t = state.threshold.toFixed(2);
  const box = $("summary-body");
  $("summary-threshold").textContent = t;
  try {
    const { levels } = await api(`/api/families/${encodeURIComponent(state.family)}/summary?threshold=${t}`);
    if (ticket !== state.summary) return;
    if (!levels.length) {
      box.replaceChildren(el("p", { class: "muted" }, "one sae so far: nothing to compare"));
      return;
    }
    const table = el("table", { class: "summary" });
    const head = el("tr");
    for (const h of ["levels", "split", "merge", "persist", "new", "vanish", "largest splits"]) head.append(el("th", {}, h));
    table.append(head);
    for (const row of levels) {
      const tr = el("tr", { "data-pair": `${row.parent_sae} -> ${row.child_sae}` });
      tr.append(el("td", {}, `${row.parent_sae} → ${row.child_sae}`));
      for (const key of ["split", "merge", "persist", "new", "vanish"]) {
        tr.append(el("td", {}, row.scored ? String(row[key]) : "–"));
      }
      const splits = el("td");
      if (!row.scored) splits.append("not scored yet");
      for (const split of row.largest_splits) {
        const link = el("a", { "data-label": split.parent, title: "open its tree" }, `${split.parent} (${split.n_children})`);
        link.addEventListener("click", () => openRoot(split.parent));
        splits.append(link, " ");
      }
      tr.append(splits);
      table.append(tr);
    }
    box.replaceChildren(table);
  } catch (error) {
    if (ticket !== state.summary) return;
    box.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

function openRoot(label) {
  state.root = label;
  state.selected = label;
  $("root").value = label;
  const family = label.split("/")[0];
  if ($("family").value !== family && [...$("family").options].some((o) => o.value === family)) {
    $("family").value = family;
    state.family = family;
    showSummary();
  }
  showTree();
  showCard(label);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

async function main() {
  const families = await loadFamilies();
  if (!families.length) { message("No families yet: ingest an sae first."); return; }
  const hash = readHash();
  if (hash.threshold !== null) state.threshold = hash.threshold;
  $("threshold").value = String(state.threshold);
  $("threshold-value").value = state.threshold.toFixed(2);
  const start = hash.root ? hash.root.split("/")[0] : families[0].name;
  const first = await chooseFamily(families, families.some((f) => f.name === start) ? start : families[0].name);
  openRoot(hash.root || first);
  showSummary();

  $("family").addEventListener("change", async (e) => {
    const label = await chooseFamily(families, e.target.value);
    showSummary();
    if (label) openRoot(label);
  });
  $("root").addEventListener("input", debounce((e) => suggest(e.target.value).catch(() => {}), 150));
  $("open").addEventListener("submit", (e) => {
    e.preventDefault();
    const label = $("root").value.trim();
    if (label) openRoot(label);
  });
  const redraw = debounce(showTree, 120);
  const recount = debounce(showSummary, 400);
  $("threshold").addEventListener("input", (e) => {
    state.threshold = parseFloat(e.target.value);
    $("threshold-value").value = state.threshold.toFixed(2);
    redraw();
    recount();
  });
  $("overlay").addEventListener("change", (e) => {
    const layer = $("overlay-links");
    if (layer) layer.style.display = e.target.checked ? "" : "none";
  });
}

main().catch((error) => message(error.message, true));
