// One job: what it runs, its schedule and next fire times (from the preview endpoint),
// actions, the output of the run going on (live, every second) and the latest output, why
// it runs when it does (the explain endpoint), and its execution history with durations
// and attempts (an open running one also refreshed every second).

import {
  cancelJob, explainJob, getExecution, getJob, listExecutions, pauseJob, previewSchedule, resumeJob, triggerJob,
} from "./api.js";
import { errorBanner, h, svg, toast } from "./dom.js";
import {
  TERMINAL, badge, duration, formatSeconds, payloadSummary, scheduleText, seconds, timeCell, wallClock, when,
} from "./format.js";

const HISTORY = 50;
// The explanation asks ZooKeeper and RabbitMQ too: fetched less often than the job.
const EXPLAIN_EVERY_MS = 5000;
// A running attempt's output is written by its worker every second (output_flush_s).
const LIVE_EVERY_MS = 1000;

export async function jobPage(ctx, jobId) {
  let job = null;
  let executions = [];
  let previewKey = "";
  let previewStale = 0;
  let latestShown = "";
  const expanded = new Map(); // execution id -> details element
  let confirmTimer = null;

  const title = h("h1", { id: "job-title", text: "Job" });
  const state = h("span", { id: "job-state" });
  const actions = h("div", { class: "actions", id: "job-actions" });
  const banner = h("div");
  const details = h("dl", { class: "details", id: "job-details" });
  const fires = h("ol", { class: "fires", id: "next-fires" });
  const firesNote = h("p", { class: "muted small" });
  const latest = h("div", { id: "latest-output" });
  const live = h("div", { id: "live-output" });
  const liveCard = h("section", { class: "card", id: "live-card", hidden: true },
    h("h2", { text: "Running now" }), live);
  let liveId = null; // the execution the live card shows
  const seenRunning = new Set();
  const why = h("div", { id: "job-explain" }, h("p", { class: "muted", text: "Loading…" }));
  let explainedAt = 0;
  let explainedKey = "";
  const chart = h("div", { class: "chart", id: "duration-chart" });
  const history = h("tbody");

  ctx.view.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs", text: "← Jobs" })),
    h("div", { class: "page-head" }, h("div", {}, title, " ", state), actions),
    banner,
    h("div", { class: "grid two" },
      h("section", { class: "card" }, h("h2", { text: "Definition" }), details),
      h("section", { class: "card" }, h("h2", { text: "Next fire times" }), firesNote, fires)),
    h("section", { class: "card", id: "job-explain-card" }, h("h2", { text: "Why / next run" }), why),
    liveCard,
    h("section", { class: "card" }, h("h2", { text: "Latest output" }), latest),
    h("section", { class: "card" },
      h("div", { class: "page-head" }, h("h2", { text: "Executions" }),
        h("a", { href: `#/dead?job=${encodeURIComponent(jobId)}`, id: "job-dead-letters", class: "small", text: "Dead letters of this job" })),
      chart,
      h("div", { class: "table-wrap" },
        h("table", { class: "data responsive", id: "executions-table" },
          h("thead", {}, h("tr", {},
            ["Scheduled for", "State", "Attempt", "Duration", "Worker", ""].map((t) => h("th", { text: t })))),
          history))),
  );

  function button(label, id, kind, onclick) {
    return h("button", { type: "button", id, class: kind, text: label, onclick });
  }

  async function act(name, call, done) {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      const result = await call(jobId);
      toast(done(result), "ok");
    } catch (error) {
      toast(error.oneLine ? error.oneLine() : String(error), "error");
    }
    await refresh();
  }

  function confirmCancel(event) {
    const target = event.currentTarget;
    if (target.dataset.armed) {
      clearTimeout(confirmTimer);
      delete target.dataset.armed;
      act("cancel", cancelJob, () => "Job cancelled: it will not fire again");
      return;
    }
    target.dataset.armed = "1";
    target.textContent = "Confirm cancel";
    confirmTimer = setTimeout(() => {
      delete target.dataset.armed;
      target.textContent = "Cancel job";
    }, 5000);
  }

  function drawActions() {
    const live = job.state === "active" || job.state === "paused";
    actions.replaceChildren(...[
      job.state !== "cancelled"
        ? button("Run now", "trigger", "secondary", () => act("trigger", triggerJob, () => "Triggered a run now"))
        : null,
      job.state === "active" ? button("Pause", "pause", "secondary", () => act("pause", pauseJob, () => "Job paused")) : null,
      job.state === "paused" ? button("Resume", "resume", "primary", () => act("resume", resumeJob, () => "Job resumed")) : null,
      live ? h("a", { class: "button secondary", id: "edit", href: `#/jobs/${job.id}/edit`, text: "Edit" }) : null,
      live ? button("Cancel job", "cancel", "danger", confirmCancel) : null,
    ].filter(Boolean));
  }

  function drawDetails() {
    const retry = job.retry || {};
    const labels = Object.entries(job.labels || {});
    const rows = [
      ["Kind", job.kind],
      ["Runs", h("code", { text: payloadSummary(job) })],
      ["Schedule", h("code", { text: scheduleText(job) })],
      ["Next fire", job.state === "active" ? [timeCell(job.next_fire_at), " ", h("span", { class: "muted small", text: when(job.next_fire_at) })] : "—"],
      ["Timeout", `${job.timeout_s ?? 300} s`],
      ["Retry", `${retry.max_attempts ?? 1} attempt(s), backoff ${retry.backoff_s ?? 2} s … ${retry.max_backoff_s ?? 300} s`],
      ["Priority", job.priority || "normal"],
      ["Concurrency", job.concurrency || "allow"],
      ["Misfire", job.misfire || "run_once"],
      ["Labels", labels.length ? labels.map(([k, v]) => h("span", { class: "label", text: `${k}=${v}` })) : "—"],
      ["Id", h("code", { class: "small", text: job.id })],
      ["Created", when(job.created_at)],
      ["Updated", when(job.updated_at)],
    ];
    details.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
  }

  async function drawFires() {
    if (job.state !== "active" && job.state !== "paused") {
      firesNote.textContent = `This job is ${job.state}: it does not fire again.`;
      fires.replaceChildren();
      previewKey = "";
      return;
    }
    const zone = job.timezone || "UTC";
    firesNote.textContent = job.state === "paused"
      ? "Paused: these times apply once it is resumed." : `Wall-clock times in ${zone}.`;
    const key = `${job.schedule}|${job.timezone}`;
    if (key === previewKey && Date.now() < previewStale) return;
    previewKey = key;
    try {
      const preview = await previewSchedule(job.schedule, job.timezone || "UTC", 5, job.id);
      // Fetched again once the first listed time has passed (or after a minute).
      const first = preview.items.length ? new Date(preview.items[0].utc).getTime() : Infinity;
      previewStale = Math.min(first, Date.now() + 60_000);
      fires.replaceChildren(...preview.items.map((f) => h("li", {},
        h("span", { class: "mono", text: wallClock(f.local) }), " ", h("span", { class: "muted small" }, "(", timeCell(f.utc), ")"))));
      if (!preview.items.length) fires.replaceChildren(h("li", { class: "muted", text: "No further fire time." }));
    } catch (error) {
      fires.replaceChildren(h("li", {}, errorBanner(error)));
    }
  }

  function attemptsView(execution) {
    const attempts = execution.attempts || [];
    if (!attempts.length) return h("p", { class: "muted", text: "No attempt has started yet." });
    return attempts.map((a) => h("div", { class: "attempt" },
      h("div", { class: "attempt-head" },
        h("strong", { text: `Attempt ${a.attempt}` }), " ", badge(a.outcome || "running"),
        h("span", { class: "muted small" },
          ` on ${a.worker} · ${when(a.started_at)} · ${duration(a.started_at, a.finished_at)}`
          + (a.exit_code !== null && a.exit_code !== undefined ? ` · exit ${a.exit_code}` : ""))),
      a.error ? h("p", { class: "attempt-error", text: a.error }) : null,
      h("pre", { class: "output", dataset: { attempt: a.attempt }, text: a.output || (a.finished_at ? "(no output)" : "(no output yet)") })));
  }

  /** Put ``fresh`` (attempt views) in ``box``, keeping each output's scroll: one read to
   *  its end stays at its end as lines arrive. */
  function replaceKeepingScroll(box, fresh) {
    const scrolled = new Map();
    for (const pre of box.querySelectorAll("pre.output[data-attempt]")) {
      const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 4;
      scrolled.set(pre.dataset.attempt, atEnd ? Infinity : pre.scrollTop);
    }
    box.replaceChildren(...fresh);
    for (const pre of box.querySelectorAll("pre.output[data-attempt]")) {
      const top = scrolled.get(pre.dataset.attempt);
      if (top !== undefined) pre.scrollTop = top === Infinity ? pre.scrollHeight : top;
    }
  }

  function hideLive() {
    liveCard.hidden = true;
    live.replaceChildren();
    liveId = null;
  }

  async function drawLive() {
    // The newest run going on: its attempt's output so far, every LIVE_EVERY_MS.
    const running = executions.find((e) => e.state === "running");
    if (!running) {
      hideLive();
      seenRunning.clear();
      return;
    }
    try {
      const full = await getExecution(running.id);
      if (!ctx.active) return;
      const current = (full.attempts || []).filter((a) => a.attempt === full.attempt);
      // Shown once seen running twice or with output so far (a run of a moment, as an
      // every-second job's, does not flash up), then until the list says it ended.
      const going = full.state === "running";
      const show = liveId === full.id
        || (going && (seenRunning.has(full.id) || current.some((a) => a.output)));
      if (going) seenRunning.add(full.id);
      if (!show) {
        hideLive();
        return;
      }
      liveId = full.id;
      liveCard.hidden = false;
      replaceKeepingScroll(live, [
        h("p", {}, badge(full.state), " ", h("span", { class: "muted small", text: `run for ${when(full.scheduled_for)}, output so far (refreshed every second)` })),
        ...[].concat(attemptsView({ attempts: current }))]);
    } catch (error) {
      live.replaceChildren(errorBanner(error));
    }
  }

  async function drawLatest() {
    const finished = executions.find((e) => TERMINAL.has(e.state));
    if (!finished) {
      latest.replaceChildren(h("p", { class: "muted", text: "No run has finished yet." }));
      latestShown = "";
      return;
    }
    const key = `${finished.id}|${finished.state}|${finished.attempt}`;
    if (key === latestShown) return;
    try {
      const full = await getExecution(finished.id);
      latestShown = key;
      latest.replaceChildren(
        h("p", {}, badge(full.state), " ", h("span", { class: "muted small", text: `run for ${when(full.scheduled_for)}, ` }), timeCell(full.finished_at)),
        ...[].concat(attemptsView(full)).slice(-1),
      );
    } catch (error) {
      latest.replaceChildren(errorBanner(error));
    }
  }

  function drawChart() {
    const runs = executions.slice(0, HISTORY).reverse();
    if (!runs.length) {
      chart.replaceChildren(h("p", { class: "muted", text: "No executions yet." }));
      return;
    }
    const values = runs.map((e) => seconds(e.started_at, e.finished_at) ?? 0);
    const max = Math.max(...values, 0.001);
    const width = chart.clientWidth || 600;
    const height = 90;
    const step = width / Math.max(runs.length, 20);
    const bars = runs.map((e, i) => {
      const v = values[i];
      const barHeight = e.started_at ? Math.max(3, (v / max) * (height - 14)) : 3;
      return svg("rect", {
        x: (i * step + 1).toFixed(1), y: (height - barHeight).toFixed(1),
        width: Math.max(2, step - 2).toFixed(1), height: barHeight.toFixed(1),
        class: `bar state-${e.state}`, rx: 1.5,
      }, svg("title", {}, `${when(e.scheduled_for)}: ${e.state}, ${duration(e.started_at, e.finished_at)}`));
    });
    chart.replaceChildren(
      svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
        "aria-label": "Durations of the latest executions, coloured by outcome" }, bars),
      h("p", { class: "muted small", text: `Durations of the last ${runs.length} executions, oldest first (tallest ${formatSeconds(max)}); colour = outcome.` }));
  }

  function toggle(execution, row) {
    if (expanded.has(execution.id)) {
      expanded.get(execution.id).remove();
      expanded.delete(execution.id);
      row.classList.remove("open");
      return;
    }
    const cell = h("td", { colspan: 6 }, h("p", { class: "muted", text: "Loading…" }));
    const detail = h("tr", { class: "detail", dataset: { executionDetail: execution.id } }, cell);
    row.after(detail);
    row.classList.add("open");
    expanded.set(execution.id, detail);
    loadDetail(execution.id);
  }

  async function loadDetail(executionId) {
    const detail = expanded.get(executionId);
    if (!detail) return;
    try {
      const full = await getExecution(executionId);
      detail.dataset.state = full.state;
      const reason = full.reason ? h("p", { class: "muted", text: `Reason: ${full.reason}` }) : null;
      replaceKeepingScroll(detail.firstChild, [reason, ...[].concat(attemptsView(full))].filter(Boolean));
    } catch (error) {
      detail.firstChild.replaceChildren(errorBanner(error));
    }
  }

  function drawHistory() {
    const rows = [];
    for (const e of executions) {
      const row = h("tr", { class: "clickable", dataset: { executionId: e.id, state: e.state }, tabindex: 0 },
        h("td", { "data-label": "Scheduled for" }, h("span", { text: when(e.scheduled_for) })),
        h("td", { "data-label": "State" }, badge(e.state, e.error || e.reason || "")),
        h("td", { "data-label": "Attempt", text: String(e.attempt) }),
        h("td", { "data-label": "Duration", text: duration(e.started_at, e.finished_at) }),
        h("td", { "data-label": "Worker", class: "small", text: e.worker || "—" }),
        h("td", { class: "chevron", text: "▸" }));
      row.addEventListener("click", () => toggle(e, row));
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") toggle(e, row); });
      rows.push(row);
      const open = expanded.get(e.id);
      if (open) {
        row.classList.add("open");
        rows.push(open);
      }
    }
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 6, class: "empty", text: "This job has not fired yet." })));
    history.replaceChildren(...rows);
  }

  async function followRunning() {
    // Open executions still going, and the live card, again every LIVE_EVERY_MS.
    const open = [...expanded].filter(([, detail]) => !TERMINAL.has(detail.dataset.state || ""));
    await Promise.all([drawLive(), ...open.map(([id]) => loadDetail(id))]);
  }

  async function drawExplain() {
    // Again after EXPLAIN_EVERY_MS, or at once when the job's state or a run changed.
    const key = `${job.state}|${job.updated_at}|${executions.map((e) => `${e.id}:${e.state}`).join(",")}`;
    if (key === explainedKey && Date.now() - explainedAt < EXPLAIN_EVERY_MS) return;
    explainedKey = key;
    explainedAt = Date.now();
    let report;
    try {
      report = await explainJob(jobId);
    } catch (error) {
      why.replaceChildren(errorBanner(error));
      return;
    }
    const fire = report.next_fire;
    const workers = report.workers;
    const queue = report.queue;
    const rows = [
      ["Next fire", fire.at ? [timeCell(fire.at), " ", h("span", { class: "muted small", text: when(fire.at) })] : "none"],
      ["Why", h("span", { id: "explain-reason", dataset: { reason: fire.reason }, text: fire.detail })],
      report.paused_since ? ["Paused since", when(report.paused_since)] : null,
      ["Runs", report.max_runs != null ? `${report.run_count} of max ${report.max_runs}` : String(report.run_count)],
      ["Workers alive", h("span", { id: "explain-workers", class: workers.alive === 0 ? "warn" : "",
        text: workers.alive == null ? `unknown (${workers.error})` : String(workers.alive) })],
      [`Queue (${queue.priority})`, queue.depth == null ? `unknown (${queue.error})` : `${queue.depth} waiting`],
    ].filter(Boolean);
    const recent = report.recent.length
      ? h("table", { class: "data", id: "explain-recent" },
        h("thead", {}, h("tr", {}, ["Scheduled for", "State", "Reason"].map((t) => h("th", { text: t })))),
        h("tbody", {}, ...report.recent.map((e) => h("tr", { dataset: { executionId: e.id } },
          h("td", { text: when(e.scheduled_for) }), h("td", {}, badge(e.state)),
          h("td", { class: "small", text: (e.reason && e.reason !== "triggered" ? e.reason : e.error || e.reason) || "—" })))))
      : h("p", { class: "muted small", text: "No missed, skipped, coalesced or dead runs lately." });
    why.replaceChildren(
      h("p", { id: "explain-summary", text: report.summary }),
      h("dl", { class: "details" }, ...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)])),
      recent);
  }

  async function refresh() {
    try {
      [job, executions] = await Promise.all([getJob(jobId), listExecutions(jobId, HISTORY).then((p) => p.items)]);
      banner.replaceChildren();
    } catch (error) {
      banner.replaceChildren(errorBanner(error.status === 404 ? { message: "No such job." } : error));
      return;
    }
    if (!ctx.active) return;
    document.title = `${job.name} · jobsched`;
    title.textContent = job.name;
    state.replaceChildren(badge(job.state));
    if (!actions.querySelector("[data-armed]")) drawActions();
    drawDetails();
    drawHistory();
    drawChart();
    await Promise.all([drawFires(), drawLatest(), drawExplain()]);
  }

  await refresh();
  await drawLive();
  ctx.every(1500, refresh);
  ctx.every(LIVE_EVERY_MS, followRunning);
}
