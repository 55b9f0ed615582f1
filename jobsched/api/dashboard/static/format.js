// Times, durations and states, formatted the same way on every page.

import { h } from "./dom.js";

export const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "dead", "skipped", "missed"]);

const clock = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});

/** "2026-11-27T09:00:00+01:00" as "2026-11-27 09:00:00 +01:00": the schedule's own clock. */
export function wallClock(iso) {
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$/.exec(iso || "");
  if (!match) return iso || "—";
  return `${match[1]} ${match[2]} ${match[3] === "Z" ? "UTC" : match[3]}`;
}

export function when(iso) {
  if (!iso) return "—";
  return clock.format(new Date(iso));
}

export function relative(iso, now = Date.now()) {
  if (!iso) return "—";
  const seconds = (new Date(iso).getTime() - now) / 1000;
  const size = Math.abs(seconds);
  if (size < 1) return "now";
  const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  const [unit, span] = units.find(([, s]) => size >= s);
  const amount = `${Math.floor(size / span)}${unit}`;
  return seconds > 0 ? `in ${amount}` : `${amount} ago`;
}

/** A time shown as "in 3m" with the exact local and UTC times on hover. */
export function timeCell(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  return h("time", { datetime: iso, title: `${when(iso)} (${iso})`, text: relative(iso) });
}

export function seconds(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? new Date(endIso).getTime() : Date.now();
  return Math.max(0, (end - new Date(startIso).getTime()) / 1000);
}

export function formatSeconds(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
}

/** "1.2 s" between two times; a run still going shows its time so far, with "…". */
export function duration(startIso, endIso) {
  const s = seconds(startIso, endIso);
  if (s === null) return "—";
  return endIso ? formatSeconds(s) : `${formatSeconds(s)}…`;
}

export function badge(state, extra = "") {
  if (!state) return h("span", { class: "muted", text: "—" });
  return h("span", { class: `badge state-${state}`, title: extra || state, text: state.replace("_", " ") });
}

export function payloadSummary(job) {
  const spec = job[job.kind] || {};
  if (job.kind === "shell") return (spec.argv || []).join(" ");
  if (job.kind === "http") return `${spec.method || "GET"} ${spec.url || ""}`;
  if (job.kind === "python") {
    const args = spec.args && Object.keys(spec.args).length ? JSON.stringify(spec.args) : "";
    return `${spec.function || ""}(${args})`;
  }
  return "";
}

export function scheduleText(job) {
  const tz = job.timezone && job.timezone !== "UTC" ? ` (${job.timezone})` : "";
  return `${job.schedule}${tz}`;
}
