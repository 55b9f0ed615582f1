// Webhooks: the namespace's endpoints (create one: its secret is shown once), and one
// endpoint's deliveries (state, attempts, last answer, next attempt) with redelivery,
// enable/disable, secret rotation and deletion.

import {
  createWebhook, deleteWebhook, getWebhook, listDeliveries, listWebhooks, patchWebhook,
  redeliverWebhook, rotateWebhookSecret,
} from "./api.js";
import { errorBanner, h, toast } from "./dom.js";
import { badge, timeCell, when } from "./format.js";

export const EVENT_TYPES = [
  "execution.succeeded", "execution.dead", "execution.cancelled", "job.completed",
  "workflow_run.succeeded", "workflow_run.failed", "workflow_run.cancelled",
];
const DELIVERY_STATES = ["", "pending", "succeeded", "failed", "exhausted"];

function labelsText(labels) {
  const entries = Object.entries(labels || {});
  return entries.length ? entries.map(([k, v]) => h("span", { class: "label", text: `${k}=${v}` })) : "any";
}

function endpointState(endpoint) {
  return badge(endpoint.enabled ? "enabled" : "disabled", endpoint.disabled_reason || "");
}

/** The secret of a create or rotate answer: shown here once, never again. */
function secretBox(secret) {
  return h("div", { class: "banner secret", id: "webhook-secret", role: "status" },
    h("strong", { text: "Signing secret — shown this once: " }),
    h("code", { class: "mono", text: secret }),
    h("p", { class: "muted small", text: "Give it to the receiver now; it verifies every delivery with it (Standard Webhooks)." }));
}

function parseLabels(text) {
  const labels = {};
  for (const line of text.split(/[\n,]/).map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`labels: "${line}" is not key=value`);
    labels[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return labels;
}

export async function webhooksPage(ctx) {
  const status = h("div");
  const created = h("div");
  const body = h("tbody");
  const url = h("input", { id: "w-url", type: "url", placeholder: "https://hooks.example.com/jobsched", required: true });
  const events = h("div", { class: "chips", id: "w-events" }, EVENT_TYPES.map((type) => h("label", { class: "chip" },
    h("input", { type: "checkbox", value: type, checked: type === "execution.dead" }), ` ${type}`)));
  const labels = h("input", { id: "w-labels", placeholder: "team=billing, env=prod (optional)" });
  const description = h("input", { id: "w-description", placeholder: "what it is for (optional)" });
  const formError = h("p", { class: "field-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary", id: "w-submit", text: "Create endpoint" });

  async function create(event) {
    event.preventDefault();
    formError.textContent = "";
    let spec;
    try {
      spec = {
        url: url.value.trim(),
        events: [...events.querySelectorAll("input:checked")].map((i) => i.value),
        labels: parseLabels(labels.value),
        description: description.value.trim(),
      };
    } catch (error) {
      formError.textContent = error.message;
      return;
    }
    submit.disabled = true;
    try {
      const endpoint = await createWebhook(spec);
      created.replaceChildren(secretBox(endpoint.secret),
        h("p", {}, h("a", { href: `#/webhooks/${endpoint.id}`, text: "Open the endpoint →" })));
      url.value = "";
      labels.value = "";
      description.value = "";
      await load();
    } catch (error) {
      formError.textContent = error.oneLine ? error.oneLine() : String(error);
    } finally {
      submit.disabled = false;
    }
  }

  ctx.view.append(
    h("div", { class: "page-head" }, h("h1", { text: "Webhooks" })),
    status,
    h("section", { class: "card" },
      h("h2", { text: "New endpoint" }),
      h("form", { id: "webhook-form", onsubmit: create },
        h("div", { class: "field" }, h("label", { for: "w-url", text: "URL" }), url),
        h("div", { class: "field" }, h("label", { text: "Events" }), events),
        h("div", { class: "grid two" },
          h("div", { class: "field" }, h("label", { for: "w-labels", text: "Only jobs with the labels" }), labels),
          h("div", { class: "field" }, h("label", { for: "w-description", text: "Description" }), description)),
        formError,
        h("div", { class: "actions" }, submit)),
      created),
    h("div", { class: "table-wrap" },
      h("table", { class: "data responsive", id: "webhooks-table" },
        h("thead", {}, h("tr", {}, ["URL", "Events", "Labels", "State", "Created"].map((t) => h("th", { text: t })))),
        body)),
  );

  async function load() {
    let page;
    try {
      page = await listWebhooks({ limit: 200 });
      status.replaceChildren();
    } catch (error) {
      status.replaceChildren(errorBanner(error));
      return;
    }
    body.replaceChildren(...page.items.map((e) => h("tr", { dataset: { webhookId: e.id } },
      h("td", { "data-label": "URL" }, h("a", { href: `#/webhooks/${e.id}`, class: "mono", text: e.url }),
        e.description ? h("div", { class: "muted small", text: e.description }) : null),
      h("td", { "data-label": "Events", class: "small", text: e.events.join(", ") }),
      h("td", { "data-label": "Labels" }, labelsText(e.labels)),
      h("td", { "data-label": "State" }, endpointState(e)),
      h("td", { "data-label": "Created" }, timeCell(e.created_at)))));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "empty", text: "No endpoint yet." })));
  }

  await load();
  ctx.every(5000, load);
}

export async function webhookPage(ctx, webhookId) {
  let endpoint = null;
  let stateFilter = ctx.params.get("state") || "";
  let confirmTimer = null;
  const title = h("h1", { id: "webhook-title", class: "mono", text: "Webhook" });
  const state = h("span", { id: "webhook-state" });
  const actions = h("div", { class: "actions", id: "webhook-actions" });
  const banner = h("div");
  const secret = h("div");
  const details = h("dl", { class: "details", id: "webhook-details" });
  const deliveries = h("tbody");
  const filter = h("select", {
    id: "delivery-state", "aria-label": "Filter by state",
    onchange: () => { stateFilter = filter.value; loadDeliveries(); },
  }, DELIVERY_STATES.map((s) => h("option", { value: s, selected: s === stateFilter, text: s || "all states" })));

  ctx.view.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/webhooks", text: "← Webhooks" })),
    h("div", { class: "page-head" }, h("div", {}, title, " ", state), actions),
    banner,
    secret,
    h("section", { class: "card" }, h("h2", { text: "Endpoint" }), details),
    h("section", { class: "card" },
      h("div", { class: "page-head" }, h("h2", { text: "Deliveries" }), filter),
      h("div", { class: "table-wrap" },
        h("table", { class: "data responsive", id: "deliveries-table" },
          h("thead", {}, h("tr", {}, ["Event", "State", "Attempts", "Last answer", "Next attempt", ""].map((t) => h("th", { text: t })))),
          deliveries))),
  );

  async function act(call, done) {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      const result = await call();
      toast(done(result), "ok");
      return result;
    } catch (error) {
      toast(error.oneLine ? error.oneLine() : String(error), "error");
      return null;
    } finally {
      await refresh();
    }
  }

  function armed(button, label, armedLabel, run) {
    return (event) => {
      const target = event.currentTarget;
      if (target.dataset.armed) {
        clearTimeout(confirmTimer);
        delete target.dataset.armed;
        run();
        return;
      }
      target.dataset.armed = "1";
      target.textContent = armedLabel;
      confirmTimer = setTimeout(() => { delete target.dataset.armed; target.textContent = label; }, 5000);
    };
  }

  function drawActions() {
    const toggle = endpoint.enabled
      ? h("button", { type: "button", id: "disable", class: "secondary", text: "Disable",
        onclick: () => act(() => patchWebhook(webhookId, { enabled: false }), () => "Disabled: nothing is recorded for it") })
      : h("button", { type: "button", id: "enable", class: "primary", text: "Enable",
        onclick: () => act(() => patchWebhook(webhookId, { enabled: true }), () => "Enabled: what waited is sent now") });
    const rotate = h("button", { type: "button", id: "rotate", class: "secondary", text: "Rotate secret" });
    rotate.addEventListener("click", armed(rotate, "Rotate secret", "Confirm rotation", async () => {
      const rotated = await act(() => rotateWebhookSecret(webhookId), () => "New secret; the old one signs for 24 h more");
      if (rotated) secret.replaceChildren(secretBox(rotated.secret));
    }));
    const remove = h("button", { type: "button", id: "delete", class: "danger", text: "Delete" });
    remove.addEventListener("click", armed(remove, "Delete", "Confirm delete", async () => {
      try {
        await deleteWebhook(webhookId);
        toast("Endpoint deleted", "ok");
        location.hash = "#/webhooks";
      } catch (error) {
        toast(error.oneLine ? error.oneLine() : String(error), "error");
      }
    }));
    actions.replaceChildren(toggle, rotate, remove);
  }

  function drawDetails() {
    const rows = [
      ["URL", h("code", { text: endpoint.url })],
      ["Events", endpoint.events.join(", ")],
      ["Labels", labelsText(endpoint.labels)],
      ["State", [endpointState(endpoint), endpoint.disabled_reason ? ` ${endpoint.disabled_reason}` : ""]],
      ["Description", endpoint.description || "—"],
      ["Old secret", endpoint.previous_secret_until && new Date(endpoint.previous_secret_until) > new Date()
        ? ["also signs until ", when(endpoint.previous_secret_until)] : "—"],
      ["Id", h("code", { class: "small", text: endpoint.id })],
      ["Created", when(endpoint.created_at)],
      ["Updated", when(endpoint.updated_at)],
    ];
    details.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
  }

  async function loadDeliveries() {
    const params = { limit: 100 };
    if (stateFilter) params.state = stateFilter;
    let page;
    try {
      page = await listDeliveries(webhookId, params);
    } catch (error) {
      deliveries.replaceChildren(h("tr", {}, h("td", { colspan: 6 }, errorBanner(error))));
      return;
    }
    deliveries.replaceChildren(...page.items.map((d) => {
      const answer = d.last_status !== null && d.last_status !== undefined ? `${d.last_status}` : "—";
      const detail = d.state === "succeeded" ? (d.last_answer || "") : (d.last_error || d.last_answer || "");
      const redeliver = h("button", {
        type: "button", class: "secondary small redeliver", text: "Redeliver",
        disabled: !endpoint?.enabled,
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          try {
            await redeliverWebhook(webhookId, d.event_id);
            toast("Queued again: it is sent now", "ok");
          } catch (error) {
            toast(error.oneLine ? error.oneLine() : String(error), "error");
          }
          await loadDeliveries();
        },
      });
      return h("tr", { dataset: { eventId: d.event_id, state: d.state } },
        h("td", { "data-label": "Event" }, h("span", { class: "mono small", text: d.event_type }),
          h("div", { class: "muted small mono", text: d.event_id }), h("div", { class: "muted small" }, timeCell(d.created_at))),
        h("td", { "data-label": "State" }, badge(d.state, d.last_error || "")),
        h("td", { "data-label": "Attempts", text: String(d.attempts) }),
        h("td", { "data-label": "Last answer" }, h("span", { class: "mono", text: answer }),
          detail ? h("div", { class: "muted small answer", text: detail.slice(0, 200) }) : null,
          d.last_duration_ms !== null && d.last_duration_ms !== undefined
            ? h("div", { class: "muted small", text: `${Math.round(d.last_duration_ms)} ms` }) : null),
        h("td", { "data-label": "Next attempt" }, d.next_attempt_at ? timeCell(d.next_attempt_at) : h("span", { class: "muted", text: "—" })),
        h("td", {}, redeliver));
    }));
    if (!page.items.length) {
      deliveries.append(h("tr", {}, h("td", { colspan: 6, class: "empty", text: stateFilter ? `No ${stateFilter} delivery.` : "No delivery yet." })));
    }
  }

  async function refresh() {
    try {
      endpoint = await getWebhook(webhookId);
      banner.replaceChildren();
    } catch (error) {
      banner.replaceChildren(errorBanner(error.status === 404 ? { message: "No such webhook endpoint." } : error));
      return;
    }
    if (!ctx.active) return;
    document.title = `${endpoint.url} · jobsched`;
    title.textContent = endpoint.url;
    state.replaceChildren(endpointState(endpoint));
    if (!actions.querySelector("[data-armed]")) drawActions();
    drawDetails();
    await loadDeliveries();
  }

  await refresh();
  ctx.every(2000, refresh);
}
