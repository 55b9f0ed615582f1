// Create and edit a job. Fields are checked as they are typed (locally, and the schedule
// by the preview endpoint, which also shows the next fire times); on submit, the API's
// problem+json field errors are shown next to the fields they name. An edit is sent as a
// JSON merge patch of only what changed.

import { createJob, getJob, patchJob, previewSchedule } from "./api.js";
import { errorBanner, h, toast } from "./dom.js";
import { timeCell, wallClock } from "./format.js";

const EXAMPLES = [
  ["immediate", "now, once"],
  ["*/10 * * * * *", "every 10 s"],
  ["*/5 * * * *", "every 5 min"],
  ["0 9 * * 1-5", "weekdays 09:00"],
  ["@daily", "daily"],
  ["@every 30s", "every 30 s"],
];

function timezones() {
  try {
    return ["UTC", ...Intl.supportedValuesOf("timeZone").filter((z) => z !== "UTC")];
  } catch {
    return ["UTC"];
  }
}

function browserZone() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return !zone || zone === "Etc/UTC" ? "UTC" : zone;
}

function lines(text) {
  return text.split("\n").map((l) => l.replace(/\r$/, "")).filter((l) => l.trim() !== "");
}

function pairs(text, sep, path, errors, { secrets = false } = {}) {
  const result = {};
  for (const line of lines(text)) {
    const at = line.indexOf(sep);
    if (at <= 0) {
      errors.push({ field: path, reason: `"${line}" is not KEY${sep}VALUE` });
      continue;
    }
    const key = line.slice(0, at).trim();
    const value = sep === ":" ? line.slice(at + 1).trim() : line.slice(at + 1);
    result[key] = secrets ? secretRef(value) ?? value : value;
  }
  return result;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A value written as {"secret": "NAME"} is a secret reference, as in the API: the
 * worker looks NAME up when it runs the job. Anything else is the value itself. */
export function secretRef(text) {
  if (!/^\s*\{[\s\S]*\}\s*$/.test(text)) return null;
  try {
    const parsed = JSON.parse(text);
    const keys = isObject(parsed) ? Object.keys(parsed) : [];
    return keys.length === 1 && keys[0] === "secret" && typeof parsed.secret === "string"
      ? { secret: parsed.secret } : null;
  } catch {
    return null;
  }
}

/** How a value of env or headers is written in the form: a reference as JSON. */
export function showValue(value) {
  return isObject(value) ? `{"secret": ${JSON.stringify(value.secret)}}` : String(value);
}

/** RFC 7396 patch turning `before` into `after` for the fields the form holds: nested
 * objects the form owns whole (retry, labels, env, ...) get null for removed keys. */
export function mergePatch(before, after, depth = 0) {
  const patch = {};
  for (const [key, value] of Object.entries(after)) {
    const old = before ? before[key] : undefined;
    if (isObject(value) && isObject(old)) {
      const sub = mergePatch(old, value, depth + 1);
      if (Object.keys(sub).length) patch[key] = sub;
    } else if (JSON.stringify(value) !== JSON.stringify(old)) {
      patch[key] = value;
    }
  }
  if (depth > 0 && before) {
    for (const key of Object.keys(before)) if (!(key in after)) patch[key] = null;
  }
  return patch;
}

export async function formPage(ctx, jobId) {
  const editing = Boolean(jobId);
  let original = null;
  const boxes = new Map(); // field path -> .field element
  const touched = new Set();
  let serverErrors = [];
  let previewSeq = 0;
  let previewTimer = null;
  let checkTimer = null;

  const control = (tag, props, ...children) => h(tag, { ...props, oninput: onInput, onchange: onInput }, ...children);

  function field(path, label, input, hint) {
    const box = h("div", { class: "field", dataset: { field: path } },
      h("label", { for: input.id, text: label }), input,
      hint ? h("p", { class: "hint", text: hint }) : null,
      h("p", { class: "field-error", role: "alert" }));
    boxes.set(path, box);
    input.addEventListener("blur", () => { touched.add(path); check(); });
    return box;
  }

  const f = {
    name: control("input", { id: "f-name", name: "name", required: true, maxlength: 200, autocomplete: "off" }),
    kind: control("select", { id: "f-kind", name: "kind" },
      ["shell", "http", "python"].map((k) => h("option", { value: k, text: k }))),
    argv: control("textarea", { id: "f-argv", rows: 3, spellcheck: "false", placeholder: "/bin/sh\n-c\necho hello" }),
    env: control("textarea", { id: "f-env", rows: 2, spellcheck: "false", placeholder: "NAME=value" }),
    cwd: control("input", { id: "f-cwd", spellcheck: "false", placeholder: "/tmp" }),
    method: control("select", { id: "f-method" },
      ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].map((m) => h("option", { value: m, text: m }))),
    url: control("input", { id: "f-url", type: "url", spellcheck: "false", placeholder: "https://example.org/hook" }),
    headers: control("textarea", { id: "f-headers", rows: 2, spellcheck: "false", placeholder: "Content-Type: application/json" }),
    body: control("textarea", { id: "f-body", rows: 3, spellcheck: "false" }),
    function: control("input", { id: "f-function", spellcheck: "false", placeholder: "myapp.tasks:send_report" }),
    args: control("textarea", { id: "f-args", rows: 3, spellcheck: "false", placeholder: '{"team": "billing"}' }),
    schedule: control("input", { id: "f-schedule", name: "schedule", required: true, spellcheck: "false", autocomplete: "off", placeholder: "*/5 * * * *" }),
    timezone: control("input", { id: "f-timezone", list: "timezones", spellcheck: "false", autocomplete: "off" }),
    timeout: control("input", { id: "f-timeout", type: "number", min: "0", step: "any", inputmode: "decimal" }),
    attempts: control("input", { id: "f-attempts", type: "number", min: "1", max: "100", step: "1", inputmode: "numeric" }),
    backoff: control("input", { id: "f-backoff", type: "number", min: "0", step: "any", inputmode: "decimal" }),
    maxBackoff: control("input", { id: "f-max-backoff", type: "number", min: "0", step: "any", inputmode: "decimal" }),
    concurrency: control("select", { id: "f-concurrency" },
      [["allow", "allow: runs may overlap"], ["forbid", "forbid: skip a fire while one runs"], ["replace", "replace: stop the running one"]]
        .map(([v, t]) => h("option", { value: v, text: t }))),
    priority: control("select", { id: "f-priority" },
      [["normal", "normal"], ["high", "high: starts before normal and low"], ["low", "low: a share of the slots, never starved"]]
        .map(([v, t]) => h("option", { value: v, text: t }))),
    misfire: control("select", { id: "f-misfire" },
      [["run_once", "run once for all missed fires"], ["run_all", "run every missed fire (capped)"], ["skip", "skip missed fires"]]
        .map(([v, t]) => h("option", { value: v, text: t }))),
    labels: control("textarea", { id: "f-labels", rows: 2, spellcheck: "false", placeholder: "team=billing" }),
  };

  const summary = h("div", { id: "form-errors" });
  const preview = h("div", { id: "schedule-preview", class: "preview" });
  const submit = h("button", { type: "submit", id: "submit", class: "primary", text: editing ? "Save changes" : "Create job" });
  const groups = {
    shell: h("div", { class: "kind-group", dataset: { kind: "shell" } },
      field("shell.argv", "Command", f.argv, "One argument per line; no shell is involved (use /bin/sh, -c and a script for shell syntax)."),
      h("div", { class: "grid two" },
        field("shell.env", "Environment", f.env, 'NAME=value per line; NAME={"secret": "S"} reads secret S when the job runs.'),
        field("shell.cwd", "Working directory", f.cwd))),
    http: h("div", { class: "kind-group", dataset: { kind: "http" } },
      h("div", { class: "grid url-row" }, field("http.method", "Method", f.method), field("http.url", "URL", f.url, "2xx is success.")),
      field("http.headers", "Headers", f.headers, 'Name: value per line; Name: {"secret": "S"} reads secret S when the job runs.'),
      field("http.body", "Body", f.body)),
    python: h("div", { class: "kind-group", dataset: { kind: "python" } },
      field("python.function", "Function", f.function, "module:function of a @task registered on the workers."),
      field("python.args", "Arguments", f.args, "A JSON object of keyword arguments.")),
  };

  const chips = h("div", { class: "chips" }, EXAMPLES.map(([value, label]) => h("button", {
    type: "button", class: "chip", title: value, text: label,
    onclick: () => { f.schedule.value = value; touched.add("schedule"); onInput({ target: f.schedule }); },
  })));

  const form = h("form", { id: "job-form", novalidate: true, onsubmit: onSubmit },
    summary,
    h("section", { class: "card" },
      h("h2", { text: "Job" }),
      h("div", { class: "grid two" }, field("name", "Name", f.name), field("kind", "Kind", f.kind)),
      groups.shell, groups.http, groups.python),
    h("section", { class: "card" },
      h("h2", { text: "Schedule" }),
      h("div", { class: "grid two" },
        h("div", {}, field("schedule", "Schedule", f.schedule,
          "immediate, an RFC 3339 time, cron (5 fields, or 6 with seconds first), @daily or @every 30s."), chips),
        field("timezone", "Time zone", f.timezone, "Cron schedules follow this zone's wall clock.")),
      h("h3", { text: "Next fire times" }),
      preview),
    h("section", { class: "card" },
      h("h2", { text: "Policies" }),
      h("div", { class: "grid four" },
        field("timeout_s", "Timeout (s)", f.timeout),
        field("retry.max_attempts", "Attempts", f.attempts),
        field("retry.backoff_s", "First backoff (s)", f.backoff),
        field("retry.max_backoff_s", "Max backoff (s)", f.maxBackoff)),
      h("div", { class: "grid three" },
        field("priority", "Priority", f.priority),
        field("concurrency", "Concurrency", f.concurrency),
        field("misfire", "Missed fires", f.misfire)),
      field("labels", "Labels", f.labels, "key=value per line.")),
    h("div", { class: "actions submit-row" }, submit,
      h("a", { class: "button secondary", href: editing ? `#/jobs/${jobId}` : "#/jobs", text: "Cancel" })),
    h("datalist", { id: "timezones" }, timezones().map((z) => h("option", { value: z }))),
  );

  ctx.view.append(
    h("p", { class: "crumbs" }, h("a", { href: editing ? `#/jobs/${jobId}` : "#/jobs", text: editing ? "← Job" : "← Jobs" })),
    h("h1", { text: editing ? "Edit job" : "New job" }),
    form,
  );

  function fill(job) {
    f.name.value = job.name || "";
    f.kind.value = job.kind || "shell";
    const shell = job.shell || {};
    f.argv.value = (shell.argv || []).join("\n");
    f.env.value = Object.entries(shell.env || {}).map(([k, v]) => `${k}=${showValue(v)}`).join("\n");
    f.cwd.value = shell.cwd || "";
    const http = job.http || {};
    f.method.value = http.method || "GET";
    f.url.value = http.url || "";
    f.headers.value = Object.entries(http.headers || {}).map(([k, v]) => `${k}: ${showValue(v)}`).join("\n");
    f.body.value = http.body || "";
    const python = job.python || {};
    f.function.value = python.function || "";
    f.args.value = python.args && Object.keys(python.args).length ? JSON.stringify(python.args, null, 2) : "";
    f.schedule.value = job.schedule || "";
    f.timezone.value = job.timezone || "UTC";
    const retry = job.retry || {};
    f.timeout.value = job.timeout_s ?? 300;
    f.attempts.value = retry.max_attempts ?? 1;
    f.backoff.value = retry.backoff_s ?? 2;
    f.maxBackoff.value = retry.max_backoff_s ?? 300;
    f.concurrency.value = job.concurrency || "allow";
    f.priority.value = job.priority || "normal";
    f.misfire.value = job.misfire || "run_once";
    f.labels.value = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join("\n");
  }

  function number(input, path, errors, { integer = false } = {}) {
    const text = input.value.trim();
    if (text === "") return undefined;
    const value = Number(text);
    if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      errors.push({ field: path, reason: integer ? "must be a whole number" : "must be a number" });
      return undefined;
    }
    return value;
  }

  /** The job the form describes, and what is wrong with it before asking the server. */
  function readForm() {
    const errors = [];
    const job = { name: f.name.value.trim(), schedule: f.schedule.value.trim(), timezone: f.timezone.value.trim() || "UTC", kind: f.kind.value };
    if (!job.name) errors.push({ field: "name", reason: "a job needs a name" });
    if (!job.schedule) errors.push({ field: "schedule", reason: "a job needs a schedule" });
    if (job.kind === "shell") {
      const argv = lines(f.argv.value);
      if (!argv.length) errors.push({ field: "shell.argv", reason: "give the program to run (one argument per line)" });
      job.shell = { argv, env: pairs(f.env.value, "=", "shell.env", errors, { secrets: true }) };
      if (f.cwd.value.trim()) job.shell.cwd = f.cwd.value.trim();
    } else if (job.kind === "http") {
      const url = f.url.value.trim();
      if (!/^https?:\/\/\S+$/.test(url)) errors.push({ field: "http.url", reason: "must be an http:// or https:// URL" });
      job.http = { method: f.method.value, url, headers: pairs(f.headers.value, ":", "http.headers", errors, { secrets: true }) };
      if (f.body.value) job.http.body = f.body.value;
    } else {
      const fn = f.function.value.trim();
      if (!/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/.test(fn)) errors.push({ field: "python.function", reason: "must be 'module.path:function'" });
      let args = {};
      if (f.args.value.trim()) {
        try {
          args = JSON.parse(f.args.value);
          if (!isObject(args)) throw new Error("not an object");
        } catch {
          errors.push({ field: "python.args", reason: "must be a JSON object" });
          args = {};
        }
      }
      job.python = { function: fn, args };
    }
    const timeout = number(f.timeout, "timeout_s", errors);
    if (timeout !== undefined) job.timeout_s = timeout;
    const retry = {};
    const attempts = number(f.attempts, "retry.max_attempts", errors, { integer: true });
    if (attempts !== undefined) retry.max_attempts = attempts;
    const backoff = number(f.backoff, "retry.backoff_s", errors);
    if (backoff !== undefined) retry.backoff_s = backoff;
    const maxBackoff = number(f.maxBackoff, "retry.max_backoff_s", errors);
    if (maxBackoff !== undefined) retry.max_backoff_s = maxBackoff;
    job.retry = retry;
    job.concurrency = f.concurrency.value;
    job.priority = f.priority.value;
    job.misfire = f.misfire.value;
    job.labels = pairs(f.labels.value, "=", "labels", errors);
    return { job, errors };
  }

  /** The .field box a server error path belongs to: "shell.argv[0]" -> shell.argv. */
  function boxFor(path) {
    let parts = path.replace(/\[\d+\]/g, "").split(".");
    while (parts.length) {
      const box = boxes.get(parts.join("."));
      if (box) return box;
      if (parts.length === 1 && ["shell", "http", "python"].includes(parts[0])) {
        return boxes.get(`${parts[0]}.${{ shell: "argv", http: "url", python: "function" }[parts[0]]}`);
      }
      parts = parts.slice(0, -1);
    }
    return null;
  }

  function showErrors(local, { all = false } = {}) {
    for (const box of boxes.values()) {
      box.classList.remove("invalid");
      box.querySelector(".field-error").textContent = "";
    }
    for (const error of [...serverErrors, ...local.filter((e) => all || touched.has(e.field))]) {
      const box = boxFor(error.field);
      if (!box || box.closest(".kind-group[hidden]")) continue; // listed in the summary
      box.classList.add("invalid");
      const line = box.querySelector(".field-error");
      line.textContent = line.textContent ? `${line.textContent}; ${error.reason}` : error.reason;
    }
  }

  /** Every error in one list above the form, so none is missed (some name no field). */
  function showSummary(title, errors) {
    if (!errors.length) {
      summary.replaceChildren();
      return;
    }
    summary.replaceChildren(h("div", { class: "banner error", role: "alert" },
      h("strong", { text: title }),
      h("ul", {}, errors.map((e) => h("li", { text: `${e.field}: ${e.reason}` })))));
  }

  function check({ all = false } = {}) {
    const { errors } = readForm();
    showErrors(errors, { all });
    if (all || summary.childElementCount) showSummary("Please fix these fields", [...serverErrors, ...errors]);
    return errors;
  }

  async function refreshPreview() {
    const schedule = f.schedule.value.trim();
    const timezone = f.timezone.value.trim() || "UTC";
    const seq = ++previewSeq;
    if (!schedule) {
      preview.replaceChildren(h("p", { class: "muted", text: "Type a schedule to see when it fires." }));
      return;
    }
    try {
      const result = await previewSchedule(schedule, timezone, 5, editing ? jobId : null);
      if (seq !== previewSeq) return;
      serverErrors = serverErrors.filter((e) => !["schedule", "timezone"].includes(e.field));
      preview.replaceChildren(result.items.length
        ? h("ol", { class: "fires" }, result.items.map((item) => h("li", {},
          h("span", { class: "mono", text: wallClock(item.local) }), " ", h("span", { class: "muted small" }, "(", timeCell(item.utc), ")"))))
        : h("p", { class: "muted", text: "This schedule does not fire again." }));
    } catch (error) {
      if (seq !== previewSeq) return;
      if (error.errors.length === 1 && error.errors[0].field === "job_id") {
        // A valid schedule with hashed values (H): its times depend on the new job's id.
        serverErrors = serverErrors.filter((e) => !["schedule", "timezone"].includes(e.field));
        preview.replaceChildren(h("p", { class: "muted",
          text: "H values are picked from the job's id: the fire times show once it is created." }));
      } else if (error.errors.length) {
        serverErrors = [...serverErrors.filter((e) => !["schedule", "timezone"].includes(e.field)),
          ...error.errors.map((e) => ({ ...e, field: e.field === "body" ? "schedule" : e.field }))];
        for (const e of error.errors) touched.add(e.field);
        preview.replaceChildren(h("p", { class: "muted", text: "No preview until the schedule is valid." }));
      } else {
        preview.replaceChildren(errorBanner(error));
      }
    }
    check();
  }

  function syncKind() {
    for (const [kind, group] of Object.entries(groups)) group.hidden = kind !== f.kind.value;
  }

  function onInput(event) {
    const target = event.target;
    const box = target.closest ? target.closest(".field") : null;
    if (box) {
      const path = box.dataset.field;
      touched.add(path);
      serverErrors = serverErrors.filter((e) => boxFor(e.field) !== box);
    }
    if (target === f.kind) syncKind();
    if (target === f.schedule || target === f.timezone) {
      clearTimeout(previewTimer);
      previewTimer = setTimeout(refreshPreview, 250);
    }
    clearTimeout(checkTimer);
    checkTimer = setTimeout(check, 150);
  }

  async function onSubmit(event) {
    event.preventDefault();
    const { job } = readForm();
    const errors = check({ all: true });
    if (errors.length) {
      boxFor(errors[0].field)?.querySelector("input, textarea, select")?.focus();
      return;
    }
    submit.disabled = true;
    try {
      let saved;
      if (editing) {
        const patch = mergePatch(original, job);
        if (!Object.keys(patch).length) {
          toast("Nothing changed");
          location.hash = `#/jobs/${jobId}`;
          return;
        }
        saved = await patchJob(jobId, patch);
        toast("Job saved", "ok");
      } else {
        saved = await createJob(job);
        toast("Job created", "ok");
      }
      location.hash = `#/jobs/${saved.id}`;
    } catch (error) {
      serverErrors = error.errors || [];
      showErrors([], { all: true });
      showSummary(error.title || "The job was not saved", serverErrors.length ? serverErrors
        : [{ field: "job", reason: error.oneLine ? error.oneLine() : String(error) }]);
      summary.scrollIntoView({ block: "nearest" });
    } finally {
      submit.disabled = false;
    }
  }

  if (editing) {
    try {
      original = await getJob(jobId);
    } catch (error) {
      form.replaceWith(errorBanner(error));
      return;
    }
    fill(original);
  } else {
    fill({ kind: "shell", timezone: browserZone(), schedule: "" });
    f.timeout.value = "";
    f.attempts.value = "";
    f.backoff.value = "";
    f.maxBackoff.value = "";
    f.timeout.placeholder = "300";
    f.attempts.placeholder = "1";
    f.backoff.placeholder = "2";
    f.maxBackoff.placeholder = "300";
  }
  syncKind();
  refreshPreview();
  f.name.focus();
}
