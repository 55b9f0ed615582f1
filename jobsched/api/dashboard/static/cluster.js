// The cluster: leader, schedulers, live workers and queue depths (GET /api/v1/cluster),
// and a throughput chart computed here from the executions of the most recent jobs.

import { getCluster, listExecutions, listJobs } from "./api.js";
import { errorBanner, h, svg } from "./dom.js";
import { timeCell, when } from "./format.js";

const WINDOW_MIN = 15;
const SAMPLED_JOBS = 25;
const FAILED = new Set(["failed", "timed_out", "dead"]);

export async function clusterPage(ctx) {
  const depths = []; // [time, executions queue depth] while the page is open
  const status = h("div");
  const leader = h("div", { id: "leader" });
  const schedulers = h("ul", { class: "plain", id: "schedulers" });
  const workers = h("tbody");
  const queues = h("div", { class: "stats", id: "queues" });
  const depthChart = h("div", { class: "chart", id: "depth-chart" });
  const throughput = h("div", { class: "chart", id: "throughput-chart" });
  const throughputNote = h("p", { class: "muted small" });

  ctx.view.append(
    h("h1", { text: "Cluster" }),
    status,
    h("div", { class: "grid three" },
      h("section", { class: "card" }, h("h2", { text: "Leader" }), leader),
      h("section", { class: "card" }, h("h2", { text: "Schedulers" }), schedulers),
      h("section", { class: "card" }, h("h2", { text: "Queues" }), queues, depthChart)),
    h("section", { class: "card" }, h("h2", { text: "Workers" }),
      h("div", { class: "table-wrap" }, h("table", { class: "data responsive", id: "workers-table" },
        h("thead", {}, h("tr", {}, h("th", { text: "Worker" }), h("th", { text: "In flight" }))), workers))),
    h("section", { class: "card" }, h("h2", { text: `Throughput, last ${WINDOW_MIN} minutes` }), throughput, throughputNote),
  );

  async function loadCluster() {
    let cluster;
    try {
      cluster = await getCluster();
      status.replaceChildren();
    } catch (error) {
      status.replaceChildren(errorBanner(error));
      return;
    }
    const lead = cluster.leader;
    leader.replaceChildren(lead
      ? h("div", {}, h("p", { class: "big mono", text: lead.instance }),
        h("p", { class: "muted small" }, `epoch ${lead.epoch}, leading since ${when(lead.since)} (`, timeCell(lead.since), ")"))
      : h("p", { class: "banner error", text: "No leader: nothing fires until a scheduler takes the lease." }));
    schedulers.replaceChildren(...(cluster.schedulers || []).map((s) => h("li", {},
      h("span", { class: "mono", text: s.instance }), " ", s.leader ? h("span", { class: "badge state-active", text: "leader" }) : h("span", { class: "badge state-paused", text: "standby" }))));
    if (!(cluster.schedulers || []).length) schedulers.append(h("li", { class: "muted", text: "No scheduler is running." }));
    workers.replaceChildren(...(cluster.workers || []).map((w) => h("tr", {},
      h("td", { "data-label": "Worker", class: "mono", text: w.instance }),
      h("td", { "data-label": "In flight", text: String(w.inflight ?? "—") }))));
    if (!(cluster.workers || []).length) workers.append(h("tr", {}, h("td", { colspan: 2, class: "empty", text: "No live worker: nothing runs." })));
    const q = cluster.queues || {};
    const shown = [["executions", q.executions], ...Object.entries(q.by_priority || {}).map(([band, depth]) => [`${band} priority`, depth]), ["dead", q.dead]]
      .filter(([, depth]) => depth !== undefined);
    queues.replaceChildren(...shown.map(([name, depth]) => h("div", { class: `stat ${name === "dead" && depth ? "bad" : ""}` },
      h("span", { class: "stat-value", text: String(depth) }),
      name === "dead" ? h("a", { class: "stat-label", href: "#/dead", id: "dead-queue-link", text: name }) : h("span", { class: "stat-label", text: name }))));
    depths.push([Date.now(), Number(q.executions) || 0]);
    if (depths.length > 150) depths.shift();
    drawDepth();
  }

  function drawDepth() {
    if (depths.length < 2) {
      depthChart.replaceChildren(h("p", { class: "muted small", text: "Queue depth over time appears here." }));
      return;
    }
    const width = depthChart.clientWidth || 300;
    const height = 50;
    const max = Math.max(1, ...depths.map(([, d]) => d));
    const t0 = depths[0][0];
    const span = Math.max(1, depths[depths.length - 1][0] - t0);
    const points = depths.map(([t, d]) => `${(((t - t0) / span) * width).toFixed(1)},${(height - 2 - (d / max) * (height - 12)).toFixed(1)}`);
    depthChart.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "executions queue depth" },
      svg("polyline", { points: points.join(" "), class: "line" }),
      svg("text", { x: 2, y: 10, class: "axis" }, `executions queue, max ${max}`)));
  }

  async function loadThroughput() {
    const now = Date.now();
    const start = now - WINDOW_MIN * 60_000;
    const buckets = Array.from({ length: WINDOW_MIN }, () => ({ succeeded: 0, failed: 0, other: 0 }));
    let sampled = 0;
    try {
      const jobs = (await listJobs({ limit: SAMPLED_JOBS })).items
        .filter((j) => j.last_execution && new Date(j.last_execution.scheduled_for).getTime() >= start);
      sampled = jobs.length;
      const pages = await Promise.all(jobs.map((j) => listExecutions(j.id, 500)));
      for (const e of pages.flatMap((p) => p.items)) {
        if (!e.finished_at) continue;
        const at = new Date(e.finished_at).getTime();
        if (at < start || at > now) continue;
        const bucket = buckets[Math.min(WINDOW_MIN - 1, Math.floor((at - start) / 60_000))];
        bucket[e.state === "succeeded" ? "succeeded" : FAILED.has(e.state) ? "failed" : "other"] += 1;
      }
    } catch (error) {
      throughput.replaceChildren(errorBanner(error));
      return;
    }
    drawThroughput(buckets, start);
    throughputNote.textContent = `Finished executions per minute (green succeeded, red failed), counted in the browser from the ${sampled} most recently created job(s) that ran in the window (at most ${SAMPLED_JOBS}).`;
  }

  function drawThroughput(buckets, start) {
    const width = throughput.clientWidth || 600;
    const height = 140;
    const top = 16;
    const totals = buckets.map((b) => b.succeeded + b.failed + b.other);
    const max = Math.max(1, ...totals);
    const step = width / buckets.length;
    const bars = buckets.flatMap((b, i) => {
      let y = height - 14;
      const x = i * step + 2;
      const parts = [];
      for (const [key, cls] of [["succeeded", "state-succeeded"], ["failed", "state-failed"], ["other", "state-cancelled"]]) {
        if (!b[key]) continue;
        const barHeight = (b[key] / max) * (height - top - 14);
        y -= barHeight;
        parts.push(svg("rect", { x: x.toFixed(1), y: y.toFixed(1), width: (step - 4).toFixed(1), height: barHeight.toFixed(1), class: `bar ${cls}` },
          svg("title", {}, `${new Date(start + i * 60_000).toLocaleTimeString()}: ${b[key]} ${key}`)));
      }
      return parts;
    });
    const clock = (i) => new Date(start + i * 60_000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    const last = buckets.length - 1;
    const labels = [[0, 0, "start"], [Math.floor(last / 2), width / 2, "middle"], [last, width, "end"]]
      .map(([i, x, anchor]) => svg("text", { x, y: height - 2, class: "axis", "text-anchor": anchor }, clock(i)));
    throughput.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "executions finished per minute" },
      svg("text", { x: 2, y: 11, class: "axis" }, `max ${max}/min · total ${totals.reduce((a, b) => a + b, 0)}`),
      svg("line", { x1: 0, x2: width, y1: height - 14, y2: height - 14, class: "baseline" }),
      bars, labels));
  }

  await Promise.all([loadCluster(), loadThroughput()]);
  ctx.every(2000, loadCluster);
  ctx.every(10000, loadThroughput);
}
