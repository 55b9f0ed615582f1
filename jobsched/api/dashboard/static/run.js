// One workflow run drawn as its graph: a column per depth (a node sits right of all its
// parents), nodes coloured by state, edges from parent to child; click a node for its
// execution (attempts, output, error) and its return value. Cancel and retry the run.

import { cancelRun, getExecution, getRun, retryRun } from "./api.js";
import { errorBanner, h, svg, toast } from "./dom.js";
import { badge, duration, timeCell, when } from "./format.js";

const NODE_W = 150;
const NODE_H = 30;
const GAP_X = 60;
const GAP_Y = 14;
const COMPACT_OVER = 300; // larger runs are drawn as small squares without labels
const RUNNING = "running";

/** Columns of nodes by depth (longest path from a root), each column ordered by the mean
 *  row of its parents, so that edges cross as little as a single pass can manage. */
export function layout(nodes) {
  const index = new Map(nodes.map((n, i) => [n.key, i]));
  const depth = new Array(nodes.length).fill(0);
  // Nodes come in the order submitted, which need not be parents first: relax until stable.
  const order = topological(nodes, index);
  for (const i of order) {
    for (const parent of nodes[i].depends_on) {
      depth[i] = Math.max(depth[i], depth[index.get(parent)] + 1);
    }
  }
  const columns = [];
  for (const i of order) (columns[depth[i]] ||= []).push(i);
  const row = new Array(nodes.length).fill(0);
  for (const column of columns) {
    const weight = (i) => {
      const parents = nodes[i].depends_on.map((p) => row[index.get(p)]);
      return parents.length ? parents.reduce((a, b) => a + b, 0) / parents.length : i;
    };
    column.sort((a, b) => weight(a) - weight(b) || a - b);
    column.forEach((i, r) => { row[i] = r; });
  }
  return { index, depth, row, columns };
}

function topological(nodes, index) {
  const waiting = nodes.map((n) => n.depends_on.length);
  const children = nodes.map(() => []);
  nodes.forEach((n, i) => n.depends_on.forEach((p) => children[index.get(p)].push(i)));
  const ready = nodes.map((_, i) => i).filter((i) => waiting[i] === 0);
  const order = [];
  while (ready.length) {
    const i = ready.shift();
    order.push(i);
    for (const c of children[i]) if (--waiting[c] === 0) ready.push(c);
  }
  return order;
}

export async function runPage(ctx, runId) {
  let run = null;
  let shape = null; // the layout, computed once per set of nodes
  let shapeKey = "";
  let selected = ctx.params.get("node") || "";
  let detailKey = "";
  const title = h("h1", { id: "run-title", text: "Run" });
  const state = h("span", { id: "run-state" });
  const actions = h("div", { class: "actions", id: "run-actions" });
  const banner = h("div");
  const facts = h("p", { class: "muted small", id: "run-facts" });
  const legend = h("div", { class: "chips", id: "run-legend" });
  const graph = h("div", { class: "graph", id: "run-graph" });
  const detail = h("div", { id: "node-detail" }, h("p", { class: "muted", text: "Click a node to see its execution." }));

  ctx.view.append(
    h("p", { class: "crumbs", id: "run-crumbs" }),
    h("div", { class: "page-head" }, h("div", {}, title, " ", state), actions),
    banner,
    facts,
    legend,
    h("section", { class: "card" }, h("h2", { text: "Graph" }), h("div", { class: "graph-wrap" }, graph)),
    h("section", { class: "card" }, h("h2", { text: "Node" }), detail),
  );

  async function act(call, done) {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      await call(runId);
      toast(done, "ok");
    } catch (error) {
      toast(error.oneLine ? error.oneLine() : String(error), "error");
    }
    await refresh();
  }

  function drawActions() {
    actions.replaceChildren(...[
      run.state === RUNNING ? h("button", { type: "button", id: "cancel-run", class: "danger", text: "Cancel run",
        onclick: () => act(cancelRun, "Run cancelled") }) : null,
      run.state === "failed" || run.state === "cancelled"
        ? h("button", { type: "button", id: "retry-run", class: "primary", text: "Retry what failed",
          onclick: () => act(retryRun, "Retrying what failed; what succeeded is kept") }) : null,
    ].filter(Boolean));
  }

  function drawGraph() {
    const nodes = run.nodes || [];
    const key = nodes.map((n) => `${n.key}<${n.depends_on.join(",")}`).join("|");
    if (key !== shapeKey) {
      shape = layout(nodes);
      shapeKey = key;
    }
    const compact = nodes.length > COMPACT_OVER;
    const w = compact ? 14 : NODE_W;
    const nh = compact ? 10 : NODE_H;
    const gx = compact ? 40 : GAP_X;
    const gy = compact ? 4 : GAP_Y;
    const tallest = Math.max(1, ...shape.columns.map((c) => c.length));
    const width = shape.columns.length * (w + gx) - gx + 20;
    const height = tallest * (nh + gy) - gy + 20;
    const x = (i) => 10 + shape.depth[i] * (w + gx);
    const y = (i) => 10 + shape.row[i] * (nh + gy);
    const edges = [];
    nodes.forEach((n, i) => {
      for (const parent of n.depends_on) {
        const p = shape.index.get(parent);
        const x1 = x(p) + w;
        const y1 = y(p) + nh / 2;
        const x2 = x(i);
        const y2 = y(i) + nh / 2;
        const mid = (x1 + x2) / 2;
        edges.push(svg("path", { class: `edge from-${nodes[p].state}`, d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
      }
    });
    const boxes = nodes.map((n, i) => {
      const group = svg("g", {
        class: `node state-${n.state}${n.key === selected ? " selected" : ""}`,
        "data-key": n.key, "data-state": n.state, tabindex: "0", role: "button",
        transform: `translate(${x(i)},${y(i)})`,
      },
      svg("rect", { width: w, height: nh, rx: compact ? 2 : 6 }),
      compact ? null : svg("text", { x: 10, y: nh / 2 + 4 }, n.key.length > 18 ? `${n.key.slice(0, 17)}…` : n.key),
      svg("title", {}, `${n.key}: ${n.state.replace("_", " ")}${n.attempt ? `, attempt ${n.attempt}` : ""}`));
      group.addEventListener("click", () => select(n.key));
      group.addEventListener("keydown", (event) => { if (event.key === "Enter") select(n.key); });
      return group;
    });
    graph.replaceChildren(svg("svg", {
      viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: compact ? "compact" : "",
      "aria-label": `The run's ${nodes.length} nodes, coloured by state`,
    }, svg("g", { class: "edges" }, edges), svg("g", { class: "nodes" }, boxes)));
  }

  function drawLegend() {
    const counts = {};
    for (const n of run.nodes || []) counts[n.state] = (counts[n.state] || 0) + 1;
    legend.replaceChildren(...Object.entries(counts).map(([s, n]) =>
      h("span", { class: `chip badge state-${s}`, text: `${s.replace("_", " ")} ${n}` })));
  }

  function select(key) {
    selected = key;
    detailKey = "";
    for (const g of graph.querySelectorAll("g.node")) g.classList.toggle("selected", g.dataset.key === key);
    drawDetail();
  }

  async function drawDetail() {
    const node = (run.nodes || []).find((n) => n.key === selected);
    if (!node) return;
    const key = `${node.key}|${node.state}|${node.attempt}`;
    // A running node's output grows while it runs: fetched again on every refresh.
    const again = key === detailKey;
    if (again && node.state !== RUNNING) return;
    detailKey = key;
    const head = [
      h("p", {}, h("strong", { class: "mono", text: node.key }), " ", badge(node.state),
        h("span", { class: "muted small", text: ` ${node.trigger_rule.replace("_", " ")} of ${node.depends_on.join(", ") || "no parent"}` })),
    ];
    if (!node.execution_id) {
      detail.replaceChildren(...head, h("p", { class: "muted", text: node.state === "pending"
        ? "Waiting for its parents." : "It did not run in this run (no execution)." }));
      return;
    }
    if (!again) detail.replaceChildren(...head, h("p", { class: "muted", text: "Loading…" }));
    try {
      const execution = await getExecution(node.execution_id);
      if (selected !== node.key) return;
      const attempts = (execution.attempts || []).map((a) => h("div", { class: "attempt" },
        h("div", { class: "attempt-head" }, h("strong", { text: `Attempt ${a.attempt}` }), " ", badge(a.outcome || RUNNING),
          h("span", { class: "muted small", text: ` on ${a.worker} · ${when(a.started_at)} · ${duration(a.started_at, a.finished_at)}` })),
        a.error ? h("p", { class: "attempt-error", text: a.error }) : null,
        a.output ? h("pre", { class: "output", text: a.output }) : null));
      detail.replaceChildren(...head,
        h("p", { class: "small" }, "Execution ", h("code", { text: execution.id }), ` · attempt ${execution.attempt} · `,
          timeCell(execution.finished_at || execution.started_at || execution.queued_at)),
        h("h3", { text: "Return value" }),
        h("pre", { class: "output", id: "node-result", text: execution.result === null || execution.result === undefined
          ? "(none)" : JSON.stringify(execution.result, null, 2) }),
        h("h3", { text: "Attempts" }),
        ...(attempts.length ? attempts : [h("p", { class: "muted", text: "No attempt has started yet." })]));
    } catch (error) {
      detail.replaceChildren(...head, errorBanner(error));
    }
  }

  async function refresh() {
    try {
      run = await getRun(runId);
      banner.replaceChildren();
    } catch (error) {
      banner.replaceChildren(errorBanner(error.status === 404 ? { message: "No such run." } : error));
      return;
    }
    if (!ctx.active) return;
    document.title = `${run.workflow_name || "run"} · jobsched`;
    title.textContent = run.workflow_name || "Run";
    document.getElementById("run-crumbs").replaceChildren(
      h("a", { href: `#/workflows/${run.workflow_id}`, text: `← ${run.workflow_name || "Workflow"}` }));
    state.replaceChildren(badge(run.state));
    facts.textContent = `Scheduled for ${when(run.scheduled_for)} · ${duration(run.started_at, run.finished_at)}`
      + (run.reason ? ` · ${run.reason}` : "");
    drawActions();
    drawLegend();
    drawGraph();
    if (selected) drawDetail();
  }

  await refresh();
  ctx.every(1500, refresh);
}
