// Workflows: the list, and one workflow with its nodes, actions and runs (a run opens its
// graph, run.js).

import {
  cancelWorkflow, getWorkflow, listRuns, listWorkflows, pauseWorkflow, resumeWorkflow, startRun,
} from "./api.js";
import { errorBanner, h, toast } from "./dom.js";
import { badge, duration, payloadSummary, timeCell, when } from "./format.js";

const STATES = ["", "active", "paused", "cancelled"];

function scheduleOf(workflow) {
  if (!workflow.schedule) return "by hand";
  const tz = workflow.timezone && workflow.timezone !== "UTC" ? ` (${workflow.timezone})` : "";
  return `${workflow.schedule}${tz}`;
}

export async function workflowsPage(ctx) {
  let state = ctx.params.get("state") || "";
  const status = h("div");
  const body = h("tbody");
  const select = h("select", {
    id: "workflow-state-filter", "aria-label": "Filter by state",
    onchange: () => { state = select.value; load(); },
  }, STATES.map((s) => h("option", { value: s, selected: s === state, text: s || "all states" })));

  ctx.view.append(
    h("div", { class: "page-head" }, h("h1", { text: "Workflows" })),
    h("div", { class: "toolbar" }, select),
    status,
    h("div", { class: "table-wrap" },
      h("table", { class: "data responsive", id: "workflows-table" },
        h("thead", {}, h("tr", {},
          ["Name", "State", "Nodes", "Schedule", "Next fire", "Last run"].map((t) => h("th", { text: t })))),
        body)),
    h("p", { class: "muted small", text: "Create workflows with `jobsched workflows create -f FILE`, the API or the Python client." }),
  );

  async function load() {
    try {
      const page = await listWorkflows(state ? { state, limit: 200 } : { limit: 200 });
      status.replaceChildren();
      body.replaceChildren(...page.items.map((w) => h("tr", { dataset: { workflowId: w.id, state: w.state } },
        h("td", { "data-label": "Name" }, h("a", { href: `#/workflows/${w.id}`, class: "job-name", text: w.name })),
        h("td", { "data-label": "State" }, badge(w.state)),
        h("td", { "data-label": "Nodes", text: String(w.node_count) }),
        h("td", { "data-label": "Schedule", class: "mono", text: scheduleOf(w) }),
        h("td", { "data-label": "Next fire" }, w.state === "active" ? timeCell(w.next_fire_at) : h("span", { class: "muted", text: "—" })),
        h("td", { "data-label": "Last run" }, w.last_run
          ? [h("a", { href: `#/runs/${w.last_run.id}` }, badge(w.last_run.state)), " ", timeCell(w.last_run.scheduled_for)]
          : h("span", { class: "muted", text: "never run" })))));
      if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "empty", text: "No workflows yet." })));
    } catch (error) {
      status.replaceChildren(errorBanner(error));
    }
  }

  await load();
  ctx.every(3000, load);
}

export async function workflowPage(ctx, workflowId) {
  let workflow = null;
  const title = h("h1", { id: "workflow-title", text: "Workflow" });
  const state = h("span", { id: "workflow-state" });
  const actions = h("div", { class: "actions", id: "workflow-actions" });
  const banner = h("div");
  const details = h("dl", { class: "details", id: "workflow-details" });
  const nodes = h("tbody");
  const runs = h("tbody");

  ctx.view.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/workflows", text: "← Workflows" })),
    h("div", { class: "page-head" }, h("div", {}, title, " ", state), actions),
    banner,
    h("div", { class: "grid two" },
      h("section", { class: "card" }, h("h2", { text: "Definition" }), details),
      h("section", { class: "card" }, h("h2", { text: "Nodes" }),
        h("div", { class: "table-wrap" }, h("table", { class: "data", id: "nodes-table" },
          h("thead", {}, h("tr", {}, ["Node", "After", "Rule", "Runs"].map((t) => h("th", { text: t })))), nodes)))),
    h("section", { class: "card" }, h("h2", { text: "Runs" }),
      h("div", { class: "table-wrap" }, h("table", { class: "data responsive", id: "runs-table" },
        h("thead", {}, h("tr", {}, ["Scheduled for", "State", "Duration", "Reason"].map((t) => h("th", { text: t })))), runs))),
  );

  async function act(call, done) {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      const result = await call(workflowId);
      toast(done(result), "ok");
      if (result && result.nodes && result.workflow_id) location.hash = `#/runs/${result.id}`;
    } catch (error) {
      toast(error.oneLine ? error.oneLine() : String(error), "error");
    }
    await refresh();
  }

  function drawActions() {
    const live = workflow.state !== "cancelled";
    actions.replaceChildren(...[
      live ? h("button", { type: "button", id: "run-now", class: "primary", text: "Run now",
        onclick: () => act(startRun, () => "Run started") }) : null,
      workflow.state === "active" ? h("button", { type: "button", id: "pause", class: "secondary", text: "Pause",
        onclick: () => act(pauseWorkflow, () => "Workflow paused") }) : null,
      workflow.state === "paused" ? h("button", { type: "button", id: "resume", class: "secondary", text: "Resume",
        onclick: () => act(resumeWorkflow, () => "Workflow resumed") }) : null,
      live ? h("button", { type: "button", id: "cancel", class: "danger", text: "Cancel workflow",
        onclick: () => act(cancelWorkflow, () => "Workflow cancelled: no new runs") }) : null,
    ].filter(Boolean));
  }

  function draw(runItems) {
    const labels = Object.entries(workflow.labels || {});
    details.replaceChildren(...[
      ["Schedule", h("code", { text: scheduleOf(workflow) })],
      ["Next fire", workflow.state === "active" && workflow.next_fire_at ? timeCell(workflow.next_fire_at) : "—"],
      ["Concurrency", workflow.concurrency || "allow"],
      ["Misfire", workflow.misfire || "run_once"],
      ["Version", `${workflow.version} (${workflow.node_count} nodes)`],
      ["Labels", labels.length ? labels.map(([k, v]) => h("span", { class: "label", text: `${k}=${v}` })) : "—"],
      ["Id", h("code", { class: "small", text: workflow.id })],
      ["Created", when(workflow.created_at)],
    ].flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
    const shown = (workflow.nodes || []).slice(0, 200);
    nodes.replaceChildren(...shown.map((n) => h("tr", {},
      h("td", { class: "mono", text: n.key }),
      h("td", { class: "small mono", text: (n.depends_on || []).join(", ") || "—" }),
      h("td", { class: "small", text: n.trigger_rule || "all_success" }),
      h("td", { class: "small mono", text: payloadSummary(n) }))));
    if ((workflow.nodes || []).length > shown.length) {
      nodes.append(h("tr", {}, h("td", { colspan: 4, class: "empty", text: `… and ${workflow.nodes.length - shown.length} more` })));
    }
    runs.replaceChildren(...runItems.map((r) => h("tr", { class: "clickable", dataset: { runId: r.id, state: r.state },
      onclick: () => { location.hash = `#/runs/${r.id}`; } },
      h("td", { "data-label": "Scheduled for" }, h("a", { href: `#/runs/${r.id}`, text: when(r.scheduled_for) })),
      h("td", { "data-label": "State" }, badge(r.state)),
      h("td", { "data-label": "Duration", text: duration(r.started_at, r.finished_at) }),
      h("td", { "data-label": "Reason", class: "small muted", text: r.reason || "" }))));
    if (!runItems.length) runs.append(h("tr", {}, h("td", { colspan: 4, class: "empty", text: "No run yet." })));
  }

  async function refresh() {
    let runItems;
    try {
      [workflow, runItems] = await Promise.all([getWorkflow(workflowId), listRuns(workflowId).then((p) => p.items)]);
      banner.replaceChildren();
    } catch (error) {
      banner.replaceChildren(errorBanner(error.status === 404 ? { message: "No such workflow." } : error));
      return;
    }
    if (!ctx.active) return;
    document.title = `${workflow.name} · jobsched`;
    title.textContent = workflow.name;
    state.replaceChildren(badge(workflow.state));
    drawActions();
    draw(runItems);
  }

  await refresh();
  ctx.every(2000, refresh);
}
