// Workflows saved with the earlier SelVA pack (ethanfel/ComfyUI-SelVA) open with every value on
// the widget of the same name.
//
// ComfyUI restores a node's widgets_values by position. The earlier pack registers the same node
// ids with other widget lists, so its values would land on other widgets, silently. Before a
// workflow is configured, each SelVA node whose saved values do not fit today's widgets but fit
// one of the earlier layouts (selva_earlier_layouts.js, generated from the earlier source by
// tools/earlier_layouts.py) gets its values re-ordered by name, renamed options included. A node
// whose values fit today's layout is left exactly as saved, so workflows saved with this pack
// open as before. Values with no counterpart here and sockets to reconnect are listed in ONE
// notice per workflow (node, input, value).
import { app } from "../../scripts/app.js";
import { EARLIER } from "./selva_earlier_layouts.js";

const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const SEED_NAMES = ["seed", "noise_seed"];
const CONTROL = "control_after_generate";
const CONTROL_VALUES = new Set(["fixed", "increment", "decrement", "randomize"]);
// Earlier option values that are spelled differently here: node id -> our widget -> {old: new}.
const VALUE_NAMES = {
  SelvaLoraTrainer: { init: { standard: "default" } },
};
// Earlier values whose meaning needs another value here: (our values by name, the saved earlier
// values by earlier name) -> optional notice items ({input, value, what}) for what was set.
const ADJUST = {
  // the earlier Extractor made per-position steering vectors (applied on the conditional branch)
  SelvaActivationSteeringExtractor: (values) => {
    values.mode = "per_position";
    return [{ input: "mode", value: "per_position", what: "set: the earlier Extractor made per-position vectors" }];
  },
  // the earlier trainer read alpha 0 as 2 x rank
  SelvaLoraTrainer: (values) => {
    if (values.alpha === 0 && typeof values.rank === "number") values.alpha = 2 * values.rank;
  },
  // Earlier DITTO lowered style_weight * (mean + gram_weight * gram) + anchor_weight * anchor; ours
  // lowers mean + style_weight * gram + anchor_weight * anchor. gram_weight is the job of our
  // style_weight; the earlier overall style_weight only set the balance against the anchor (Adam's
  // steps do not change when the whole objective is scaled), so it divides anchor_weight here.
  // An earlier style_weight of 0 left only the anchor, whose pull is 0 at the start: the noise
  // never moved, which here is n_opt_steps 0 (the Sampler's output).
  SelvaDittoOptimizer: (values, earlier) => {
    const s = earlier.style_weight, g = earlier.gram_weight, a = earlier.anchor_weight;
    if (typeof s !== "number" || typeof g !== "number") return;
    values.style_weight = g;
    if (s > 0) {
      if (typeof a === "number") values.anchor_weight = Math.min(a / s, DITTO_ANCHOR_MAX);
    } else {
      values.n_opt_steps = 0;
    }
  },
};
// Earlier widgets without a widget of their own here that an ADJUST rule uses (not listed as lost).
const USED_BY_ADJUST = { SelvaDittoOptimizer: new Set(["gram_weight"]) };
const DITTO_ANCHOR_MAX = 100; // our DITTO's anchor_weight maximum
// Nodes whose earlier layout is the start of today's, saved by this pack always with more values:
// a node saved with exactly this many values is the earlier pack's (node id -> its value count).
const EARLIER_BY_LENGTH = { SelvaActivationSteeringExtractor: 5 };

const ourDefs = {}; // node id -> nodeData from the server (object_info)

function specOf(nodeData, name) {
  return nodeData.input?.required?.[name] ?? nodeData.input?.optional?.[name];
}

function inputOrder(nodeData) {
  const order = nodeData.input_order;
  if (order) return [...(order.required || []), ...(order.optional || [])];
  return [...Object.keys(nodeData.input?.required || {}), ...Object.keys(nodeData.input?.optional || {})];
}

function isWidgetSpec(spec) {
  const [type, opts] = spec;
  if (opts?.forceInput) return false;
  return Array.isArray(type) || WIDGET_TYPES.has(type);
}

// Today's widget layout of a node type, as the frontend builds it (a seed's control follows it).
export function ourLayout(nodeData) {
  const widgets = [];
  for (const name of inputOrder(nodeData)) {
    const spec = specOf(nodeData, name);
    if (!spec || !isWidgetSpec(spec)) continue;
    const [type, opts = {}] = spec;
    const combo = Array.isArray(type) ? type : type === "COMBO" ? opts.options || [] : null;
    widgets.push({ name, type: combo ? "COMBO" : type, options: combo || undefined, default: opts.default });
    const control = opts.control_after_generate ?? SEED_NAMES.includes(name);
    if (type === "INT" && control) widgets.push({ name: CONTROL, type: "COMBO", control: true });
  }
  return widgets;
}

function ourSockets(nodeData) {
  const required = new Set(Object.keys(nodeData.input?.required || {}));
  return inputOrder(nodeData)
    .map((name) => ({ name, spec: specOf(nodeData, name) }))
    .filter(({ spec }) => spec && !isWidgetSpec(spec))
    .map(({ name, spec }) => ({ name, type: spec[0], required: required.has(name) }));
}

function fits(value, widget) {
  if (widget.control) return CONTROL_VALUES.has(value);
  switch (widget.type) {
    case "INT":
    case "FLOAT":
      return typeof value === "number";
    case "BOOLEAN":
      return typeof value === "boolean";
    case "STRING":
      return typeof value === "string";
    case "COMBO":
      return Array.isArray(widget.options) && widget.options.length ? widget.options.includes(value)
                                                                     : typeof value === "string";
    default:
      return true;
  }
}

// The saved values fit the layout's first widgets, one by one.
function prefixFits(values, layout) {
  return values.length <= layout.length && values.every((v, i) => fits(v, layout[i]));
}

function typesOverlap(a, b) {
  if (a === "*" || b === "*") return true;
  const left = new Set(String(a).split(",").map((t) => t.trim()));
  return String(b).split(",").some((t) => left.has(t.trim()));
}

function ourName(nodeId, earlierName, ours) {
  if (ours.some((w) => w.name === earlierName)) return earlierName; // kept, or added here under it
  return EARLIER.renamed?.[nodeId]?.[earlierName] ?? null;
}

function title(node) {
  return `${node.title || node.type} #${node.id}`;
}

// Re-order one node's saved values by name; returns notice items.
function migrateValues(node, ours, layout) {
  const items = [];
  const saved = node.widgets_values;
  const byName = {};
  const earlier = {};
  layout.widgets.slice(0, saved.length).forEach((w, i) => {
    const value = saved[i];
    earlier[w.name] = value;
    const name = ourName(node.type, w.name, ours);
    const target = name && ours.find((o) => o.name === name);
    if (!target) {
      if (USED_BY_ADJUST[node.type]?.has(w.name)) return;
      items.push({ node: title(node), input: w.name, value, what: "has no counterpart here" });
      return;
    }
    const mapped = VALUE_NAMES[node.type]?.[name]?.[value] ?? value;
    if (!fits(mapped, target)) {
      items.push({ node: title(node), input: w.name, value, what: `is not a choice of ${name} here` });
      return;
    }
    byName[name] = mapped;
  });
  for (const extra of ADJUST[node.type]?.(byName, earlier) || []) items.push({ node: title(node), ...extra });
  node.widgets_values = ours.map((w) =>
    w.name in byName ? byName[w.name]
      : w.control ? "randomize"
        : w.default !== undefined ? w.default
          : w.type === "COMBO" ? (w.options || [])[0] : w.type === "BOOLEAN" ? false : w.type === "STRING" ? "" : 0);
  // a widget turned into a socket keeps its slot under today's name
  for (const input of node.inputs || []) {
    const renamed = input.widget?.name && ourName(node.type, input.widget.name, ours);
    if (renamed && renamed !== input.widget.name) {
      input.widget.name = renamed;
      input.name = renamed;
    }
  }
  return items;
}

// Sockets the saved node uses that today's node lacks, has with another type, or requires.
function socketItems(node, nodeData, links) {
  const items = [];
  const sockets = ourSockets(nodeData);
  const linked = (input) => input.link !== null && input.link !== undefined;
  for (const input of node.inputs || []) {
    if (input.widget || !linked(input)) continue;
    const ours = sockets.find((s) => s.name === input.name);
    if (!ours) {
      items.push({ node: title(node), input: input.name, value: input.type, what: "input no longer exists: remove that link" });
    } else if (!typesOverlap(ours.type, input.type)) {
      items.push({ node: title(node), input: input.name, value: input.type, what: `input now takes ${ours.type}: reconnect it` });
    }
  }
  for (const s of sockets) {
    // a required socket the saved node did not have at all (one it had but left open is the
    // user's business, as for any node)
    if (s.required && !(node.inputs || []).some((i) => i.name === s.name)) {
      items.push({ node: title(node), input: s.name, value: s.type, what: "input is required here: connect it" });
    }
  }
  const outs = nodeData.output || [];
  const names = nodeData.output_name || outs;
  (node.outputs || []).forEach((out, i) => {
    if (!out.links || !out.links.length) return;
    if (i >= outs.length) {
      items.push({ node: title(node), input: `output ${out.name}`, value: out.type, what: "output no longer exists: reconnect" });
    } else if (!typesOverlap(outs[i], out.type)) {
      items.push({ node: title(node), input: `output ${out.name}`, value: out.type,
                   what: `is now ${names[i]} (${outs[i]}): reconnect what it fed` });
    }
  });
  return items;
}

function graphNodes(graphData) {
  const nodes = [...(graphData?.nodes || [])];
  for (const sub of graphData?.definitions?.subgraphs || []) nodes.push(...(sub.nodes || []));
  return nodes;
}

// Migrate every earlier-layout SelVA node of a workflow in place; returns the notice items.
export function migrateWorkflow(graphData, defs = ourDefs) {
  const items = [];
  for (const node of graphNodes(graphData)) {
    const nodeData = defs[node.type];
    if (!nodeData) continue;
    const ours = ourLayout(nodeData);
    const values = node.widgets_values;
    let earlierLayout = null;
    if (Array.isArray(values) && !prefixFits(values, ours)) {
      const candidates = (EARLIER.nodes[node.type] || []).filter((l) => prefixFits(values, l.widgets));
      earlierLayout = candidates.find((l) => l.widgets.length === values.length) || candidates[0] || null;
    } else if (Array.isArray(values) && EARLIER_BY_LENGTH[node.type] === values.length) {
      earlierLayout = (EARLIER.nodes[node.type] || []).find(
        (l) => l.widgets.length === values.length && prefixFits(values, l.widgets)) || null;
    }
    // A node whose values fit today's layout was saved with this pack (or lines up already): it
    // is left exactly as saved, its sockets included. Only a node recognised as saved in an
    // earlier layout is re-ordered and has its sockets checked against today's node.
    if (earlierLayout) {
      items.push(...migrateValues(node, ours, earlierLayout));
      node.properties = { ...(node.properties || {}), selva_migrated_from: earlierLayout.refs.join(",") };
      items.push(...socketItems(node, nodeData, graphData.links));
    }
  }
  return items;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

function showNotice(items) {
  document.getElementById("selva-compat-notice")?.remove();
  const box = document.createElement("div");
  box.id = "selva-compat-notice";
  box.setAttribute("role", "alert");
  box.style.cssText = "position:fixed;right:16px;bottom:16px;max-width:560px;max-height:50vh;overflow:auto;"
    + "z-index:10000;background:#2b2b2b;color:#eee;border:1px solid #c90;border-radius:6px;padding:10px 14px;"
    + "font:13px sans-serif;box-shadow:0 4px 16px rgba(0,0,0,.5)";
  const rows = items.map((it) => `<li><b>${escapeHtml(it.node)}</b>, ${escapeHtml(it.input)} = `
    + `<code>${escapeHtml(JSON.stringify(it.value))}</code>: ${escapeHtml(it.what)}</li>`).join("");
  box.innerHTML = "<b>SelVA: this workflow was saved with the earlier SelVA pack.</b> Its values were "
    + "moved to the widgets of the same name. Check these:<ul style='margin:6px 0 6px 18px;padding:0'>"
    + rows + "</ul><small>See docs/coming-from-earlier-pack.md.</small> ";
  const close = document.createElement("button");
  close.textContent = "Close";
  close.onclick = () => box.remove();
  box.appendChild(close);
  document.body.appendChild(box);
}

let pending = [];

app.registerExtension({
  name: "selva.compat",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (EARLIER.nodes[nodeData.name]) ourDefs[nodeData.name] = nodeData;
  },
  async beforeConfigureGraph(graphData) {
    try {
      pending = migrateWorkflow(graphData);
    } catch (e) {
      pending = [];
      console.error("SelVA: could not check the workflow for earlier-pack layouts", e);
    }
  },
  async afterConfigureGraph() {
    const items = pending;
    pending = [];
    window.__selvaCompatNotice = items;
    if (items.length) {
      console.warn("SelVA: earlier-pack workflow", items);
      showNotice(items);
    } else {
      document.getElementById("selva-compat-notice")?.remove();
    }
  },
});
