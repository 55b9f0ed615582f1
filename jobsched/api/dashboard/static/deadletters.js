// Dead letters: executions whose retries ran out (GET /api/v1/dead), newest first, of the
// namespace or of one job (#/dead?job=ID). A row opens to show every attempt with its
// error and output; Retry re-drives one (POST /api/v1/executions/{id}/retry: one more
// attempt of the same execution), Retry selected does so for each ticked row.

import { getExecution, getJob, listDead, retryExecution } from "./api.js";
import { errorBanner, h, toast } from "./dom.js";
import { badge, duration, timeCell, when } from "./format.js";

const LIMIT = 200;
const COLUMNS = 7;

export async function deadLettersPage(ctx) {
  const jobFilter = ctx.params.get("job") || "";
  const names = new Map(); // job id -> name (or null while unknown)
  const selected = new Set();
  const expanded = new Map(); // execution id -> its detail row
  let items = [];
  let more = false;
  let busy = false;

  const status = h("div");
  const body = h("tbody");
  const summary = h("p", { class: "muted small", id: "dead-summary" });
  const selectAll = h("input", {
    type: "checkbox", id: "dead-select-all", "aria-label": "Select every dead execution shown",
    onchange: () => {
      for (const e of items) selectAll.checked ? selected.add(e.id) : selected.delete(e.id);
      draw();
    },
  });
  const retrySelected = h("button", {
    type: "button", class: "primary", id: "retry-selected", text: "Retry selected", disabled: true,
    onclick: () => retry([...selected]),
  });

  ctx.view.append(...[
    h("div", { class: "page-head" },
      h("h1", { text: "Dead letters" }),
      h("div", { class: "toolbar" }, retrySelected)),
    h("p", { class: "muted" },
      "Executions whose every attempt failed. Retrying one gives it one more attempt now (the same execution, attempt + 1); "
      + "a workflow node's is retried with its run, and a cancelled job's cannot be."),
    jobFilter
      ? h("p", { id: "dead-filter" }, "Only the dead executions of job ", h("a", { href: `#/jobs/${encodeURIComponent(jobFilter)}`, class: "mono", text: jobFilter }),
        " · ", h("a", { href: "#/dead", text: "show all" }))
      : null,
    status,
    h("div", { class: "table-wrap" },
      h("table", { class: "data responsive", id: "dead-table" },
        h("thead", {}, h("tr", {},
          h("th", {}, selectAll),
          ["Job", "Scheduled for", "Died", "Attempts", "Error", ""].map((t) => h("th", { text: t })))),
        body)),
    summary,
  ].filter(Boolean));

  function attemptsView(execution) {
    const attempts = execution.attempts || [];
    if (!attempts.length) return [h("p", { class: "muted", text: "No attempt was recorded." })];
    return attempts.map((a) => h("div", { class: "attempt" },
      h("div", { class: "attempt-head" },
        h("strong", { text: `Attempt ${a.attempt}` }), " ", badge(a.outcome || "running"),
        h("span", { class: "muted small" },
          ` on ${a.worker || "—"} · ${when(a.started_at)} · ${duration(a.started_at, a.finished_at)}`
          + (a.exit_code !== null && a.exit_code !== undefined ? ` · exit ${a.exit_code}` : ""))),
      a.error ? h("p", { class: "attempt-error", text: a.error }) : null,
      h("pre", { class: "output", text: a.output || "(no output)" })));
  }

  async function loadDetail(executionId) {
    const detail = expanded.get(executionId);
    if (!detail) return;
    try {
      const full = await getExecution(executionId);
      const head = h("p", { class: "muted small" }, `Execution `, h("code", { text: full.id }),
        full.reason ? ` · ${full.reason}` : "", ` · state ${full.state}`);
      detail.firstChild.replaceChildren(head, ...attemptsView(full));
    } catch (error) {
      detail.firstChild.replaceChildren(errorBanner(error));
    }
  }

  function toggle(execution, row) {
    if (expanded.has(execution.id)) {
      expanded.get(execution.id).remove();
      expanded.delete(execution.id);
      row.classList.remove("open");
      return;
    }
    const detail = h("tr", { class: "detail", dataset: { executionDetail: execution.id } },
      h("td", { colspan: COLUMNS }, h("p", { class: "muted", text: "Loading…" })));
    row.after(detail);
    row.classList.add("open");
    expanded.set(execution.id, detail);
    loadDetail(execution.id);
  }

  async function retry(ids) {
    if (!ids.length || busy) return;
    busy = true;
    draw();
    const outcomes = await Promise.all(ids.map(async (executionId) => {
      try {
        return { executionId, execution: await retryExecution(executionId) };
      } catch (error) {
        return { executionId, error };
      }
    }));
    const done = outcomes.filter((o) => o.execution);
    const failed = outcomes.filter((o) => o.error);
    for (const o of done) {
      selected.delete(o.executionId);
      expanded.get(o.executionId)?.remove();
      expanded.delete(o.executionId);
    }
    if (done.length === 1 && ids.length === 1) {
      toast(`Retried: attempt ${done[0].execution.attempt} is queued`, "ok");
    } else if (done.length) {
      toast(`Retried ${done.length} of ${ids.length}`, "ok");
    }
    for (const o of failed) {
      toast(`${o.executionId.slice(0, 8)}: ${o.error.oneLine ? o.error.oneLine() : String(o.error)}`, "error");
    }
    busy = false;
    await load();
  }

  function jobCell(e) {
    const name = names.get(e.job_id);
    return h("td", { "data-label": "Job" },
      h("a", { href: `#/jobs/${encodeURIComponent(e.job_id)}`, class: "job-name", text: name || e.job_id.slice(0, 8) }),
      h("div", { class: "muted small mono", text: e.id }));
  }

  function draw() {
    const rows = [];
    for (const e of items) {
      const box = h("input", {
        type: "checkbox", class: "select", "aria-label": `Select ${e.id}`, checked: selected.has(e.id),
        onclick: (event) => event.stopPropagation(),
        onchange: () => { box.checked ? selected.add(e.id) : selected.delete(e.id); drawSelection(); },
      });
      const retryButton = h("button", {
        type: "button", class: "secondary small retry", text: "Retry", disabled: busy,
        onclick: (event) => { event.stopPropagation(); retry([e.id]); },
      });
      const row = h("tr", { class: "clickable", tabindex: 0, dataset: { executionId: e.id, state: e.state } },
        h("td", {}, box),
        jobCell(e),
        h("td", { "data-label": "Scheduled for", text: when(e.scheduled_for) }),
        h("td", { "data-label": "Died" }, timeCell(e.finished_at)),
        h("td", { "data-label": "Attempts", text: String(e.attempt) }),
        h("td", { "data-label": "Error", class: "small error-text", text: (e.error || "—").slice(0, 160) }),
        h("td", {}, retryButton));
      row.addEventListener("click", () => toggle(e, row));
      row.addEventListener("keydown", (event) => { if (event.key === "Enter" && event.target === row) toggle(e, row); });
      rows.push(row);
      const open = expanded.get(e.id);
      if (open) {
        row.classList.add("open");
        rows.push(open);
      }
    }
    if (!rows.length) {
      rows.push(h("tr", {}, h("td", { colspan: COLUMNS, class: "empty", text: "No dead executions: every run ended or is still trying." })));
    }
    body.replaceChildren(...rows);
    summary.textContent = `${items.length}${more ? "+" : ""} dead execution(s)${more ? ` (the newest ${LIMIT} shown)` : ""}`;
    drawSelection();
  }

  function drawSelection() {
    const shown = new Set(items.map((e) => e.id));
    for (const id of [...selected]) if (!shown.has(id)) selected.delete(id);
    retrySelected.disabled = busy || !selected.size;
    retrySelected.textContent = selected.size ? `Retry selected (${selected.size})` : "Retry selected";
    selectAll.checked = items.length > 0 && selected.size === items.length;
  }

  async function loadNames() {
    const unknown = [...new Set(items.map((e) => e.job_id))].filter((id) => !names.has(id));
    await Promise.all(unknown.map(async (jobId) => {
      names.set(jobId, null);
      try {
        names.set(jobId, (await getJob(jobId)).name);
      } catch {
        // a job gone meanwhile: its id is shown instead
      }
    }));
  }

  async function load() {
    if (busy) return;
    const params = { limit: LIMIT };
    if (jobFilter) params.job_id = jobFilter;
    try {
      const page = await listDead(params);
      items = page.items;
      more = Boolean(page.next_cursor);
      status.replaceChildren();
      await loadNames();
    } catch (error) {
      status.replaceChildren(errorBanner(error));
    }
    if (!ctx.active) return;
    for (const id of [...expanded.keys()]) {
      if (!items.some((e) => e.id === id)) expanded.delete(id);
    }
    draw();
  }

  await load();
  ctx.every(3000, load);
}
