// The HTTP API, as the dashboard uses it: every call sends the stored token as a Bearer
// header and turns a problem+json answer into an ApiError with its field errors.
//
// The token is kept in sessionStorage: it lives as long as the tab, is not shared with
// other tabs and is never written to disk, so closing the tab signs out. (Earlier
// versions kept it in localStorage; a token left there is removed on load.)

const TOKEN_KEY = "jobsched.token";
const ANONYMOUS_KEY = "jobsched.anonymous";

try { localStorage.removeItem(TOKEN_KEY); } catch { /* storage disabled */ }

export const auth = {
  get token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  get anonymous() { return sessionStorage.getItem(ANONYMOUS_KEY) === "1"; },
  get signedIn() { return Boolean(this.token) || this.anonymous; },
  signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.removeItem(ANONYMOUS_KEY);
  },
  continueWithoutToken() { sessionStorage.setItem(ANONYMOUS_KEY, "1"); },
  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ANONYMOUS_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    const title = problem.title || `HTTP ${status}`;
    super(problem.detail ? `${title}: ${problem.detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = problem.detail || "";
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
  }

  /** One line: the title and every field error, as the CLI prints it. */
  oneLine() {
    if (this.errors.length) {
      return `${this.title}: ${this.errors.map((e) => `${e.field}: ${e.reason}`).join("; ")}`;
    }
    return this.message;
  }
}

export async function request(method, path, body, { token } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const bearer = token ?? auth.token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { title: "Cannot reach the API", detail: String(error.message || error) });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { title: text.slice(0, 200) }; }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data && typeof data === "object" ? data : {});
    if (response.status === 401 && token === undefined) {
      window.dispatchEvent(new CustomEvent("jobsched:unauthorized"));
    }
    throw error;
  }
  return data;
}

const id = (value) => encodeURIComponent(value);

export const listJobs = (params) => request("GET", `/api/v1/jobs?${new URLSearchParams(params)}`);
export const getJob = (jobId) => request("GET", `/api/v1/jobs/${id(jobId)}`);
export const explainJob = (jobId) => request("GET", `/api/v1/jobs/${id(jobId)}/explain`);
export const createJob = (job) => request("POST", "/api/v1/jobs", job);
export const patchJob = (jobId, patch) => request("PATCH", `/api/v1/jobs/${id(jobId)}`, patch);
export const cancelJob = (jobId) => request("DELETE", `/api/v1/jobs/${id(jobId)}`);
export const pauseJob = (jobId) => request("POST", `/api/v1/jobs/${id(jobId)}/pause`);
export const resumeJob = (jobId) => request("POST", `/api/v1/jobs/${id(jobId)}/resume`);
export const triggerJob = (jobId) => request("POST", `/api/v1/jobs/${id(jobId)}/trigger`);
export const listExecutions = (jobId, limit = 50) =>
  request("GET", `/api/v1/jobs/${id(jobId)}/executions?limit=${limit}`);
export const getExecution = (executionId) => request("GET", `/api/v1/executions/${id(executionId)}`);
export const listDead = (params) => request("GET", `/api/v1/dead?${new URLSearchParams(params)}`);
export const retryExecution = (executionId) => request("POST", `/api/v1/executions/${id(executionId)}/retry`);
// job_id: whose hashed values (H) to show; a new job has none yet.
export const previewSchedule = (schedule, timezone, count = 5, jobId = null) =>
  request("POST", "/api/v1/schedules/preview",
    jobId ? { schedule, timezone, count, job_id: jobId } : { schedule, timezone, count });
export const getCluster = () => request("GET", "/api/v1/cluster");

export const listWebhooks = (params) => request("GET", `/api/v1/webhooks?${new URLSearchParams(params)}`);
export const getWebhook = (webhookId) => request("GET", `/api/v1/webhooks/${id(webhookId)}`);
export const createWebhook = (endpoint) => request("POST", "/api/v1/webhooks", endpoint);
export const patchWebhook = (webhookId, patch) => request("PATCH", `/api/v1/webhooks/${id(webhookId)}`, patch);
export const deleteWebhook = (webhookId) => request("DELETE", `/api/v1/webhooks/${id(webhookId)}`);
export const rotateWebhookSecret = (webhookId) => request("POST", `/api/v1/webhooks/${id(webhookId)}/rotate-secret`);
export const listDeliveries = (webhookId, params) =>
  request("GET", `/api/v1/webhooks/${id(webhookId)}/deliveries?${new URLSearchParams(params)}`);
export const redeliverWebhook = (webhookId, eventId) =>
  request("POST", `/api/v1/webhooks/${id(webhookId)}/deliveries/${id(eventId)}/redeliver`);
export const listWorkflows = (params) => request("GET", `/api/v1/workflows?${new URLSearchParams(params)}`);
export const getWorkflow = (workflowId) => request("GET", `/api/v1/workflows/${id(workflowId)}`);
export const cancelWorkflow = (workflowId) => request("DELETE", `/api/v1/workflows/${id(workflowId)}`);
export const pauseWorkflow = (workflowId) => request("POST", `/api/v1/workflows/${id(workflowId)}/pause`);
export const resumeWorkflow = (workflowId) => request("POST", `/api/v1/workflows/${id(workflowId)}/resume`);
export const startRun = (workflowId, input = {}) =>
  request("POST", `/api/v1/workflows/${id(workflowId)}/runs`, { input });
export const listRuns = (workflowId, limit = 50) =>
  request("GET", `/api/v1/workflows/${id(workflowId)}/runs?limit=${limit}`);
export const getRun = (runId) => request("GET", `/api/v1/workflow-runs/${id(runId)}`);
export const cancelRun = (runId) => request("POST", `/api/v1/workflow-runs/${id(runId)}/cancel`);
export const retryRun = (runId) => request("POST", `/api/v1/workflow-runs/${id(runId)}/retry`);
