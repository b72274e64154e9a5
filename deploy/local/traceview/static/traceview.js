// Nudge's trace viewer on Jaeger's port (index.html says why it exists). Two views, both
// read from Jaeger's HTTP API:
//   /                 recent traces of the Nudge services, or those of a message or contact
//   /trace/{trace_id} one trace as a waterfall; a span's row opens its attributes
// The DOM is built with createElement and textContent only: span names and attributes are
// data from the services, never markup.

const app = document.getElementById("app");
const ATTRIBUTES_THAT_MATTER = [
  ["nudge.workspace_id", "workspace"],
  ["nudge.contact_id", "contact"],
  ["nudge.message_id", "message"],
  ["messaging.destination.name", "topic"],
  ["messaging.kafka.destination.partition", "partition"],
  ["messaging.kafka.message.offset", "offset"],
];
const SEARCH_TAGS = ["nudge.message_id", "nudge.contact_id"];
const LOOKBACKS = [["15m", "15 minutes"], ["1h", "1 hour"], ["6h", "6 hours"], ["24h", "24 hours"]];
// Colours with at least 4.5:1 against white for the service names written in them.
const PALETTE = ["#1f5fa8", "#8a4b08", "#1d7a46", "#8f2a8f", "#a8322d", "#3d5a80", "#6b5b00", "#246e73"];
const TRACE_ID = /^[0-9a-f]{16,32}$/i;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path) {
  let answer;
  try {
    answer = await fetch(path, { headers: { Accept: "application/json" } });
  } catch (err) {
    throw new Error(`Jaeger did not answer (${err.message}): is it still running?`);
  }
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const why = (body.errors || []).map((e) => e.msg).join("; ") || answer.statusText;
    throw new Error(`Jaeger answered ${answer.status}: ${why}`);
  }
  return body;
}

function show(...nodes) {
  app.replaceChildren(...nodes);
}

function failure(err) {
  return h("p", { class: "error", role: "alert" }, err.message);
}

function go(path) {
  history.pushState(null, "", path);
  route();
}

function link(path, ...children) {
  return h("a", {
    href: path,
    onclick: (event) => {
      if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      go(path);
    },
  }, ...children);
}

function colour(service) {
  let hash = 0;
  for (const ch of service) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

function ms(micros) {
  const value = micros / 1000;
  return `${value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : Math.round(value)} ms`;
}

function when(micros) {
  return new Date(micros / 1000).toISOString().replace("T", " ").replace("Z", " UTC");
}

function tagValue(tags, key) {
  const tag = (tags || []).find((t) => t.key === key);
  return tag === undefined ? undefined : tag.value;
}

function failed(span) {
  return tagValue(span.tags, "otel.status_code") === "ERROR" || tagValue(span.tags, "error") === true;
}

// -- one trace ----------------------------------------------------------------------------

/** The spans as a forest: each span's children sorted by start; a span whose parent is not
 * in the trace (not received yet, or outside it) is a root. */
export function spanTree(trace) {
  const byId = new Map(trace.spans.map((span) => [span.spanID, { span, children: [] }]));
  const roots = [];
  for (const node of byId.values()) {
    const parent = (node.span.references || []).find((r) => r.refType === "CHILD_OF" && byId.has(r.spanID));
    (parent ? byId.get(parent.spanID).children : roots).push(node);
  }
  const byStart = (a, b) => a.span.startTime - b.span.startTime;
  for (const node of byId.values()) node.children.sort(byStart);
  return roots.sort(byStart);
}

function* walk(nodes, depth = 0) {
  for (const node of nodes) {
    yield [node, depth];
    yield* walk(node.children, depth + 1);
  }
}

function summary(trace) {
  const start = Math.min(...trace.spans.map((s) => s.startTime));
  const end = Math.max(...trace.spans.map((s) => s.startTime + s.duration));
  const services = [...new Set(trace.spans.map((s) => trace.processes[s.processID].serviceName))].sort();
  const roots = spanTree(trace);
  const root = roots.length ? roots[0].span : trace.spans[0];
  return {
    start,
    duration: end - start,
    services,
    root: `${trace.processes[root.processID].serviceName}: ${root.operationName}`,
    errors: trace.spans.filter(failed).length,
  };
}

function details(span, process) {
  const rows = (items) =>
    items.map((t) => h("tr", {}, h("th", { scope: "row" }, t.key), h("td", {}, JSON.stringify(t.value))));
  const logs = (span.logs || []).map((log) =>
    h("li", {}, `${when(log.timestamp)}: `, log.fields.map((f) => `${f.key}=${JSON.stringify(f.value)}`).join("  ")),
  );
  return h("div", { class: "details" },
    h("p", { class: "muted" }, `span ${span.spanID}, started ${when(span.startTime)}`),
    h("table", {}, h("caption", {}, "Attributes"), h("tbody", {}, rows(span.tags || []))),
    logs.length ? h("div", {}, h("h3", {}, "Events"), h("ul", {}, logs)) : null,
    h("table", {}, h("caption", {}, `Process: ${process.serviceName}`), h("tbody", {}, rows(process.tags || []))),
  );
}

function spanRow(trace, node, depth, start, total) {
  const { span } = node;
  const process = trace.processes[span.processID];
  const service = process.serviceName;
  const left = total ? ((span.startTime - start) / total) * 100 : 0;
  const width = total ? Math.max((span.duration / total) * 100, 0.2) : 100;
  const bar = h("span", { class: failed(span) ? "bar failed" : "bar" });
  bar.style.left = `${left}%`;
  bar.style.width = `${width}%`;
  bar.style.background = colour(service);
  const name = h("span", { class: "name" },
    h("span", { class: "service" }, service), " ", span.operationName);
  const marks = ATTRIBUTES_THAT_MATTER
    .map(([key, label]) => [label, tagValue(span.tags, key)])
    .filter(([, value]) => value !== undefined)
    .map(([label, value]) => h("span", { class: "mark" }, `${label}=${value}`));
  name.querySelector(".service").style.color = colour(service);
  const label = h("span", { class: "label" }, name, marks.length ? h("span", { class: "marks" }, marks) : null);
  label.style.paddingLeft = `${depth * 1.1}rem`;
  const open = h("div", { class: "open", hidden: true }, details(span, process));
  const toggle = h("button", {
    type: "button",
    class: "span",
    "aria-expanded": "false",
    "data-span": span.spanID,
    "data-depth": depth,
    onclick: () => {
      const opened = toggle.getAttribute("aria-expanded") === "true";
      toggle.setAttribute("aria-expanded", String(!opened));
      open.hidden = opened;
    },
  },
  label,
  h("span", { class: "lane" }, bar),
  h("span", { class: "duration" }, ms(span.duration), failed(span) ? h("span", { class: "badge" }, "error") : null));
  return h("li", {}, toggle, open);
}

function waterfall(trace) {
  const info = summary(trace);
  const quarters = [0, 0.25, 0.5, 0.75].map((f) => {
    const tick = h("span", {}, ms(info.duration * f));
    tick.style.left = `${f * 100}%`;
    return tick;
  });
  const ticks = [h("span", {}, "Span"), h("span", { class: "lane" }, quarters), h("span", { class: "duration" }, ms(info.duration))];
  const rows = [...walk(spanTree(trace))].map(([node, depth]) => spanRow(trace, node, depth, info.start, info.duration));
  return h("section", { "aria-labelledby": "trace-title" },
    h("h1", { id: "trace-title" }, info.root),
    h("p", { class: "facts" },
      h("span", {}, "trace ", h("code", {}, trace.traceID)),
      h("span", {}, when(info.start)),
      h("span", {}, ms(info.duration)),
      h("span", {}, `${trace.spans.length} spans`),
      h("span", {}, `${info.services.length} services: ${info.services.join(", ")}`),
      info.errors ? h("span", { class: "error" }, `${info.errors} failed`) : null),
    h("div", { class: "ticks", "aria-hidden": "true" }, ticks),
    h("ol", { class: "spans" }, rows));
}

async function showTrace(traceId) {
  show(h("p", { class: "muted" }, `Loading trace ${traceId}…`));
  try {
    const body = await api(`/api/traces/${encodeURIComponent(traceId)}`);
    const [trace] = body.data || [];
    if (!trace) throw new Error(`Jaeger has no trace ${traceId}`);
    document.title = `Trace ${traceId} · Nudge`;
    show(h("p", {}, link("/", "← Search")), waterfall(trace));
  } catch (err) {
    show(h("p", {}, link("/", "← Search")), failure(err));
  }
}

// -- search -------------------------------------------------------------------------------

async function nudgeServices() {
  const body = await api("/api/services");
  return (body.data || []).filter((name) => name.startsWith("nudge-")).sort();
}

/** The traces of the chosen services (all Nudge's when none), or those with a span naming
 * the message or contact: Jaeger searches one service at a time, so ask each and merge. */
async function findTraces(services, lookback, limit, id) {
  const asks = [];
  for (const service of services) {
    const base = `/api/traces?service=${encodeURIComponent(service)}&lookback=${lookback}&limit=${limit}`;
    if (id) {
      for (const key of SEARCH_TAGS) asks.push(api(`${base}&tags=${encodeURIComponent(JSON.stringify({ [key]: id }))}`));
    } else {
      asks.push(api(base));
    }
  }
  const merged = new Map();
  for (const body of await Promise.all(asks)) for (const trace of body.data || []) merged.set(trace.traceID, trace);
  return [...merged.values()].map((trace) => ({ trace, info: summary(trace) }))
    .sort((a, b) => b.info.start - a.info.start)
    .slice(0, limit);
}

function results(found) {
  if (!found.length) return h("p", { class: "muted", role: "status" }, "No trace found.");
  return h("table", { class: "results" },
    h("caption", { role: "status" }, `${found.length} traces, newest first`),
    h("thead", {}, h("tr", {}, ["Started", "Trace", "Spans", "Services", "Duration", "Failed"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, found.map(({ trace, info }) => h("tr", {},
      h("td", {}, when(info.start)),
      h("td", {}, link(`/trace/${trace.traceID}`, info.root), h("br"), h("code", { class: "muted" }, trace.traceID)),
      h("td", { class: "num" }, trace.spans.length),
      h("td", {}, info.services.join(", ")),
      h("td", { class: "num" }, ms(info.duration)),
      h("td", { class: "num" }, info.errors || "")))));
}

async function showSearch() {
  document.title = "Nudge traces";
  const params = new URLSearchParams(location.search);
  const query = h("input", { id: "q", name: "q", value: params.get("q") || "", size: 40, placeholder: "32 hex digits, or a UUID" });
  const service = h("select", { id: "service", name: "service" }, h("option", { value: "" }, "every Nudge service"));
  const lookback = h("select", { id: "lookback", name: "lookback" },
    LOOKBACKS.map(([value, label]) => h("option", { value, selected: value === (params.get("lookback") || "1h") }, label)));
  const out = h("div", { id: "results" }, h("p", { class: "muted" }, "Searching…"));
  const form = h("form", {
    class: "search",
    onsubmit: (event) => {
      event.preventDefault();
      const q = query.value.trim();
      if (TRACE_ID.test(q)) return go(`/trace/${q.toLowerCase()}`);
      const next = new URLSearchParams({ q, service: service.value, lookback: lookback.value });
      go(`/?${next}`);
    },
  },
  h("label", { for: "q" }, "Trace id, or a message or contact id"), query,
  h("label", { for: "service" }, "Service"), service,
  h("label", { for: "lookback" }, "In the last"), lookback,
  h("button", { type: "submit" }, "Search"));
  show(h("h1", {}, "Traces"), form, out);
  try {
    const names = await nudgeServices();
    for (const name of names) service.append(h("option", { value: name, selected: name === params.get("service") }, name));
    const q = (params.get("q") || "").trim();
    if (q && !UUID.test(q)) throw new Error(`"${q}" is neither a trace id (hex) nor a message or contact id (UUID)`);
    const chosen = params.get("service") ? [params.get("service")] : names;
    out.replaceChildren(results(await findTraces(chosen, lookback.value, 20, q.toLowerCase())));
  } catch (err) {
    out.replaceChildren(failure(err));
  }
}

function route() {
  const match = location.pathname.match(/^\/trace\/([^/]+)\/?$/);
  if (match) showTrace(decodeURIComponent(match[1]));
  else showSearch();
}

window.addEventListener("popstate", route);
route();
