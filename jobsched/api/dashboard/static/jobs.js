// The jobs table: state, schedule, next fire and last outcome; filtered by state on the
// server and searched (name, id, schedule, kind, labels, command) in the browser.

import { listJobs } from "./api.js";
import { errorBanner, h } from "./dom.js";
import { badge, payloadSummary, scheduleText, timeCell } from "./format.js";

const STATES = ["", "active", "paused", "completed", "cancelled"];
const PAGE = 50;
const MAX = 500;

function matches(job, needle) {
  if (!needle) return true;
  const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  const haystack = [job.name, job.id, job.schedule, job.timezone, job.kind, labels, payloadSummary(job)]
    .join(" ").toLowerCase();
  return needle.toLowerCase().split(/\s+/).every((word) => haystack.includes(word));
}

export async function jobsPage(ctx) {
  const view = { state: ctx.params.get("state") || "", search: ctx.params.get("q") || "", limit: PAGE };
  let items = [];
  let more = false;

  const search = h("input", {
    id: "search", type: "search", placeholder: "Search name, schedule, label, command…",
    value: view.search, "aria-label": "Search jobs",
    oninput: () => { view.search = search.value; draw(); },
  });
  const stateSelect = h("select", {
    id: "state-filter", "aria-label": "Filter by state",
    onchange: () => { view.state = stateSelect.value; view.limit = PAGE; load(); },
  }, STATES.map((s) => h("option", { value: s, selected: s === view.state, text: s || "all states" })));
  const status = h("div");
  const body = h("tbody");
  const summary = h("p", { class: "muted small" });
  const moreButton = h("button", {
    type: "button", class: "secondary", hidden: true, text: "Show more",
    onclick: () => { view.limit = Math.min(MAX, view.limit + PAGE); load(); },
  });

  ctx.view.append(
    h("div", { class: "page-head" },
      h("h1", { text: "Jobs" }),
      h("a", { class: "button primary", href: "#/new", text: "New job" })),
    h("div", { class: "toolbar" }, search, stateSelect),
    status,
    h("div", { class: "table-wrap" },
      h("table", { class: "data responsive", id: "jobs-table" },
        h("thead", {}, h("tr", {},
          ["Name", "State", "Schedule", "Next fire", "Last outcome"].map((t) => h("th", { text: t })))),
        body)),
    summary,
    moreButton,
  );

  function draw() {
    const shown = items.filter((job) => matches(job, view.search));
    body.replaceChildren(...shown.map((job) => {
      const last = job.last_execution;
      return h("tr", { dataset: { jobId: job.id, state: job.state } },
        h("td", { "data-label": "Name" },
          h("a", { href: `#/jobs/${job.id}`, class: "job-name", text: job.name }),
          h("div", { class: "muted small mono", text: `${job.kind} · ${payloadSummary(job)}` })),
        h("td", { "data-label": "State" }, badge(job.state)),
        h("td", { "data-label": "Schedule", class: "mono", text: scheduleText(job) }),
        h("td", { "data-label": "Next fire" }, job.state === "active" ? timeCell(job.next_fire_at)
          : h("span", { class: "muted", text: job.state === "paused" ? "paused" : "—" })),
        h("td", { "data-label": "Last outcome" },
          last ? [badge(last.state, last.error || ""), " ", timeCell(last.finished_at || last.scheduled_for)]
            : h("span", { class: "muted", text: "not run yet" })),
      );
    }));
    if (!shown.length) {
      body.append(h("tr", {}, h("td", { colspan: 5, class: "empty" },
        items.length ? "No job matches the search." : "No jobs yet. ",
        items.length ? null : h("a", { href: "#/new", text: "Create one." }))));
    }
    summary.textContent = `${shown.length} of ${items.length}${more ? "+" : ""} job(s) shown`;
    moreButton.hidden = !more || view.limit >= MAX;
  }

  async function load() {
    const params = { limit: view.limit };
    if (view.state) params.state = view.state;
    try {
      const page = await listJobs(params);
      items = page.items;
      more = Boolean(page.next_cursor);
      status.replaceChildren();
    } catch (error) {
      status.replaceChildren(errorBanner(error));
    }
    draw();
  }

  await load();
  ctx.every(3000, load);
}
