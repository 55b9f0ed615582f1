// Sign-in: the token is checked against the API, then kept in this tab's sessionStorage
// and sent as "Authorization: Bearer <token>" on every call.

import { auth, request } from "./api.js";
import { h } from "./dom.js";

export function signinPage(ctx) {
  const next = ctx.params.get("next") || "#/jobs";
  const goNext = () => { location.hash = next.startsWith("#/") && !next.startsWith("#/signin") ? next : "#/jobs"; };
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "current-password",
    placeholder: "token from `jobsched token create`", required: true,
  });
  const message = h("p", { class: "field-error", role: "alert" });
  const button = h("button", { type: "submit", class: "primary", text: "Sign in" });

  async function submit(event) {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      message.textContent = "Enter a token.";
      return;
    }
    button.disabled = true;
    message.textContent = "";
    try {
      await request("GET", "/api/v1/jobs?limit=1", undefined, { token });
      auth.signIn(token);
      goNext();
    } catch (error) {
      message.textContent = error.status === 401 || error.status === 403
        ? "This token was not accepted." : error.oneLine();
    } finally {
      button.disabled = false;
    }
  }

  ctx.view.append(h("section", { class: "card narrow signin" },
    h("h1", { text: "Sign in" }),
    ctx.params.get("expired") ? h("p", { class: "banner error", text: "Your token was not accepted; sign in again." }) : null,
    h("form", { onsubmit: submit },
      h("label", { for: "token", text: "API token" }),
      input,
      message,
      h("div", { class: "actions" }, button),
    ),
    h("p", { class: "muted small" },
      "The token is kept in this tab only (sessionStorage), sent with every request and "
        + "forgotten when the tab is closed. ",
      h("button", {
        type: "button", class: "link", id: "no-token",
        onclick: () => { auth.continueWithoutToken(); goNext(); },
        text: "Continue without a token",
      }),
      " while the server does not require one.",
    ),
  ));
  input.focus();
}
