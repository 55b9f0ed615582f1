// The dashboard: a hash router over a few pages, each refreshing itself while shown.

import { auth } from "./api.js";
import { h } from "./dom.js";
import { clusterPage } from "./cluster.js";
import { deadLettersPage } from "./deadletters.js";
import { formPage } from "./form.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { runPage } from "./run.js";
import { signinPage } from "./signin.js";
import { webhookPage, webhooksPage } from "./webhooks.js";
import { workflowPage, workflowsPage } from "./workflows.js";

const ROUTES = [
  [/^\/jobs$/, jobsPage, "jobs"],
  [/^\/new$/, formPage, "new"],
  [/^\/jobs\/([^/]+)\/edit$/, formPage, "jobs"],
  [/^\/jobs\/([^/]+)$/, jobPage, "jobs"],
  [/^\/workflows$/, workflowsPage, "workflows"],
  [/^\/workflows\/([^/]+)$/, workflowPage, "workflows"],
  [/^\/runs\/([^/]+)$/, runPage, "workflows"],
  [/^\/cluster$/, clusterPage, "cluster"],
  [/^\/dead$/, deadLettersPage, "dead"],
  [/^\/webhooks$/, webhooksPage, "webhooks"],
  [/^\/webhooks\/([^/]+)$/, webhookPage, "webhooks"],
  [/^\/signin$/, signinPage, ""],
];

let stopCurrent = () => {};

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?");
  return { path, params: new URLSearchParams(query) };
}

/** What a page gets: where to draw, and timers that stop when the page is left. */
function pageContext(view, params) {
  const timers = [];
  let active = true;
  return {
    view,
    params,
    get active() { return active; },
    every(ms, refresh) {
      let running = false;
      const tick = async () => {
        if (!active || running || document.hidden) return;
        running = true;
        try { await refresh(); } finally { running = false; }
      };
      timers.push(setInterval(tick, ms));
      return tick;
    },
    stop() {
      active = false;
      timers.forEach(clearInterval);
    },
  };
}

function drawAuth() {
  const box = document.getElementById("auth");
  if (auth.token) {
    box.replaceChildren(
      h("span", { class: "muted signed-in", text: "Signed in" }),
      h("button", { class: "link", type: "button", onclick: signOut, text: "Sign out" }),
    );
  } else {
    box.replaceChildren(h("a", { href: "#/signin", text: "Sign in" }));
  }
}

function signOut() {
  auth.signOut();
  location.hash = "#/signin";
}

async function render() {
  stopCurrent();
  drawAuth();
  const { path, params } = parseHash();
  if (!auth.signedIn && path !== "/signin") {
    location.replace(`#/signin?next=${encodeURIComponent(`#${path}`)}`);
    return;
  }
  const route = ROUTES.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", Boolean(route) && link.dataset.nav === route[2]);
  }
  const view = document.getElementById("view");
  view.replaceChildren();
  if (!route) {
    view.append(h("h1", { text: "Not found" }), h("p", {}, h("a", { href: "#/jobs", text: "Back to the jobs" })));
    return;
  }
  const [pattern, page] = route;
  const ctx = pageContext(view, params);
  stopCurrent = () => ctx.stop();
  const args = path.match(pattern).slice(1).map(decodeURIComponent);
  try {
    await page(ctx, ...args);
  } catch (error) {
    console.error(error);
  }
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", render);
window.addEventListener("jobsched:unauthorized", () => {
  auth.signOut();
  const { path } = parseHash();
  if (path !== "/signin") location.hash = `#/signin?next=${encodeURIComponent(`#${path}`)}&expired=1`;
});
render();
