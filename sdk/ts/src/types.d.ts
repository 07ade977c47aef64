// The forge API's types, generated from sdk/openapi.json by
// scripts/gen-types.mjs. Do not edit: run `npm run gen` instead.

/** One attempt to deliver. */
export interface AttemptView {
  attempt: number;
  duration_ms: number;
  error?: string | null;
  next_attempt_at?: string | null;
  /** `[[name, value]]`, signatures redacted. */
  request_headers: string[][];
  /** The first 4 KiB, as text (invalid UTF-8 replaced). */
  response_body: string;
  response_body_truncated: boolean;
  /** `[[name, value]]`. */
  response_headers: string[][];
  response_status?: number | null;
  started_at: string;
}

export interface Author {
  email: string;
  name: string;
}

/**
 * The forge's own review of a branch's run against the default branch,
 * as the `review.posted` event that recorded it says.
 */
export interface BranchReview {
  /** The default branch and its commit the change was read against. */
  base_branch: string;
  base_commit: string;
  /** The review in Markdown (as a pull request would get it). */
  body: string;
  /** Comments on lines of the change (tools' findings, the model's). */
  comments: ReviewComment[];
  /** The model that was asked, when one is configured. */
  model?: string | null;
  /** Why the model's review is missing, when it failed. */
  model_error?: string | null;
  /** What the model said. */
  model_summary?: string | null;
  /** When it was recorded; filled from the event. */
  posted_at?: string;
  verdict: ReviewVerdict;
}

/** `GET /v1/repos/{owner}/{name}/branches`: each branch and its head. */
export interface BranchView {
  commit: CommitView;
  name: string;
  /**
   * The VM the branch's pipelines run in, once a push made one (its
   * forks are other VMs, whose `parent` names it).
   */
  sandbox?: string | null;
}

/**
 * Output of a build, as `GET /v1/templates/{name}/build?follow=true`
 * sends it (`event: log`).
 */
export interface BuildLog {
  text: string;
}

/**
 * One step of a build, as `GET /v1/templates/{name}/build?follow=true`
 * sends it (`event: step`).
 */
export interface BuildStep {
  /** From 1. */
  index: number;
  name: string;
  total: number;
}

/** Raw bytes (a file's content): a string of any bytes in the document. */
export type Bytes = string;

/** A VM after a fork or a resume, and what it kept of its source. */
export type CarriedVm = VmView & {
  kept: Kept[];
  /** Why less than everything was kept, when the backend knows. */
  note?: string | null;
};

/** A commit as the API shows it. */
export interface CommitView {
  author: Author;
  id: string;
  message: string;
  /** Author time, RFC 3339. */
  time: string;
}

/**
 * `GET /v1/repos/{owner}/{name}/contents?branch=&path=`: what a path
 * names at the head of a branch.
 */
export type Contents = {
  branch: string;
  entries: TreeEntry[];
  path: string;
  type: "dir";
} | {
  binary: boolean;
  branch: string;
  path: string;
  size: number;
  /** `None` for binary content. */
  text?: string | null;
  truncated: boolean;
  type: "file";
};

/** `POST /v1/nodes`. */
export interface CreateNode {
  /**
   * The node's labels for placement, whatever it reports; absent: the
   * labels it reports. A node's word is its own: set them here when a
   * label decides where a tenant's sandboxes may run.
   */
  labels?: Record<string, string> | null;
  /**
   * Most memory placement counts on the node, in MiB, whatever it
   * reports; absent: what it reports.
   */
  max_memory_mib?: number | null;
  /** 1 to 63 of `a-z`, `0-9` and `-`. */
  name: string;
}

/** `POST /v1/repos`: an empty repository, or one imported from `import_url`. */
export interface CreateRepo {
  default_branch?: string | null;
  import_url?: string | null;
  /** `owner/name`. */
  name: string;
}

/** `POST /v1/vms/{id}/snapshots`. */
export interface CreateSnapshot {
  /**
   * Unique across the forge: letters, digits, `.`, `_`, `-` (at most
   * 63). `POST /v1/vms {"snapshot"}` takes the name or the id.
   */
  name?: string | null;
}

/** `POST /v1/tokens`. */
export interface CreateToken {
  name: string;
  /** `owner/name`: limit the token to this repository. */
  repo?: string | null;
  /** At least one. */
  scopes: TokenScope[];
}

/** `POST /v1/vms`. Every field is optional; the server picks the defaults. */
export interface CreateVm {
  /** Needs `repo`; the repository's default branch when absent. */
  branch?: string | null;
  dev_server?: null | DevServerSpec;
  disk_mib?: number | null;
  env?: Record<string, string>;
  idle_timeout_secs?: number | null;
  /**
   * Up to 32 `key: value` pairs to find the VM by (`GET
   * /v1/vms?label=key:value`); forks inherit them. Keys: letters,
   * digits, `.`, `_`, `-`, `/` (at most 63); values at most 256 bytes.
   */
  labels?: Record<string, string>;
  mem_mib?: number | null;
  /**
   * Labels the sandbox node that runs it must have (`forge node run
   * --label`; every node also has `backend`: `container` or `microvm`),
   * e.g. `{"zone": "a"}`. Not with `snapshot` or `template`: those VMs
   * run on their snapshot's node.
   */
  node_labels?: Record<string, string>;
  persistence?: null | Persistence;
  /** `owner/name`: `/workspace` holds a checkout of it. */
  repo?: string | null;
  /**
   * Start from this snapshot (its name or id): its files and, where it
   * kept them, its running processes. Sizes come from it.
   */
  snapshot?: string | null;
  /**
   * Start from this template (its name) instead of the default image;
   * sizes, environment and server come from it.
   */
  template?: string | null;
  /**
   * Destroy the VM this many seconds after it is created, whatever its
   * activity (at most 30 days); `POST /v1/vms/{id}/timeout` moves it.
   */
  ttl_secs?: number | null;
  vcpus?: number | null;
}

/** `POST …/webhooks`. */
export interface CreateWebhook {
  active?: boolean | null;
  /** Branch globs; empty: every branch. */
  branches?: string[];
  /** Event names, or `"*"`. */
  events: string[];
  /** Path globs; empty: every path. */
  paths?: string[];
  /** Generated when absent. */
  secret?: string | null;
  url: string;
}

/** `GET …/deliveries`: newest first. */
export interface DeliveryPage {
  deliveries: DeliveryView[];
  /** Pass as `before` for the next (older) page; `None` on the last one. */
  next_before?: number | null;
}

/** An outbound webhook delivery (`webhook_deliveries.status`). */
export type DeliveryState = "pending" | "delivered" | "failed";

export interface DeliveryView {
  attempt_log: AttemptView[];
  attempts: number;
  created_at: string;
  /** `None` for a ping. */
  event_id?: number | null;
  event_type: string;
  /** The `webhook-id` header of its requests. */
  id: string;
  /** Set while `pending`. */
  next_attempt_at?: string | null;
  /** Only when one delivery is read. */
  payload?: unknown;
  /** Pass as `before` for older deliveries. */
  seq: number;
  status: DeliveryState;
}

/** A dev server to start, watch and restart in the VM. */
export interface DevServerSpec {
  command: string;
  port: number;
}

/** A VM's dev server, as its supervisor last saw it (memory only). */
export type DevServerState = "starting" | "running" | "dead" | "backoff" | "paused";

/** What the API shows of a dev server. */
export interface DevServerStatus {
  command: string;
  /** The end of its output when it last died. */
  last_output?: string | null;
  /** Its session id inside the sandbox, while started. */
  pid?: number | null;
  port: number;
  /** Milliseconds until the next start, in `backoff`. */
  restart_in_ms?: number | null;
  restarts: number;
  state: DevServerState;
}

/** The VM's traffic through the egress proxy since the forge started. */
export interface EgressUsage {
  bytes_in: number;
  bytes_out: number;
  connections: number;
  refused: number;
}

/** What a directory entry is. */
export type EntryKind = "dir" | "file" | "symlink" | "submodule";

export interface ErrorBody {
  error: ErrorDetail;
}

/** What went wrong, for programs, with the HTTP status it comes with. */
export type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "cross_origin" | "push_refused" | "not_found" | "conflict" | "bad_pack" | "payload_too_large" | "unsupported_media_type" | "import_failed" | "capacity" | "quota" | "unavailable" | "sandbox_error" | "bad_gateway" | "github_unavailable" | "github_not_configured" | "agent_unresponsive" | "internal";

export interface ErrorDetail {
  code: ErrorCode;
  /**
   * For a request whose fields are invalid, every problem at once, each
   * under the field it concerns; `message` says them all too.
   */
  fields?: FieldError[];
  message: string;
}

/**
 * One event. `kind` is open-ended (`push`, `branch.created`,
 * `sync.diverged`, `webhook.disabled`, ...: the README lists them), and
 * `payload` is the kind's own object, as webhooks deliver it.
 */
export interface Event {
  /** The token that caused the event. */
  actor?: string | null;
  /** RFC 3339. */
  created_at: string;
  /** The cursor: strictly increasing across the whole forge. */
  id: number;
  kind: string;
  payload: unknown;
  ref?: string | null;
  /** `owner/name` when the event happened. */
  repo?: string | null;
  /**
   * `null` for an event of the forge itself: a sandbox created without
   * a repository.
   */
  repo_id?: string | null;
}

/** A page of events. */
export interface EventPage {
  events: Event[];
  /** Pass as `after` to continue. */
  next_cursor: number;
}

/**
 * How a command ended: the answer's head, and the `exit` event of a
 * streamed exec.
 */
export interface ExecExit {
  duration_ms: number;
  /** 128 + the signal when a signal ended it. */
  exit_code: number;
  timed_out: boolean;
  /** Output beyond the limit was dropped. */
  truncated: boolean;
}

/** The `error` event of a streamed exec. */
export interface ExecFailure {
  message: string;
}

/** The answer of a (not streamed) exec. */
export type ExecOutput = ExecExit & {
  stderr: string;
  /** Invalid UTF-8 replaced. */
  stdout: string;
};

/**
 * `POST /v1/vms/{id}/exec`: exactly one of `command` (a shell script)
 * and `argv`.
 */
export interface ExecRequest {
  argv?: string[] | null;
  command?: string | null;
  cwd?: string | null;
  env?: Record<string, string>;
  stdin?: string | null;
  timeout_secs?: number | null;
}

/** The `stdout` and `stderr` events of a streamed exec. */
export interface ExecText {
  text: string;
}

/** What is wrong with one field of a request. */
export interface FieldError {
  /** The field's name in the request body (`url`, `events`, …). */
  field: string;
  message: string;
}

/** One entry of a directory listing (`GET /v1/vms/{id}/files/{dir}/`). */
export interface FileEntry {
  gid: number;
  kind: FileKind;
  /** Where a symlink points (it is never followed). */
  link_target?: string | null;
  /** Permission bits (`st_mode & 0o7777`). */
  mode: number;
  modified_unix_ms: number;
  name: string;
  size: number;
  uid: number;
}

export type FileKind = "file" | "dir" | "symlink" | "other";

/** One problem a tool reported at a place in the checkout. */
export interface Finding {
  /** 1-based; `None` when the tool named only the file. */
  line?: number | null;
  message: string;
  /** Relative to the repository's root, `/`-separated. */
  path: string;
  /** The tool's rule or code (`TS2322`, `no-debugger`), when it gave one. */
  rule?: string | null;
  severity: FindingSeverity;
  tool: FindingTool;
}

export type FindingSeverity = "error" | "warning" | "info";

/** Which tool reported a finding. */
export type FindingTool = "tsc" | "eslint" | "biome" | "bun_test";

/** `POST /v1/vms/{id}/fork`. */
export interface ForkRequest {
  count?: number | null;
  /** Set on every copy, over the labels it inherits from its parent. */
  labels?: Record<string, string>;
  /** The copies' deadline from now; without it they keep the parent's. */
  ttl_secs?: number | null;
}

/** The answer to a fork. */
export interface Forks {
  forks: CarriedVm[];
}

/** `POST /v1/repos/{owner}/{name}/github`. */
export interface GithubLinkRequest {
  /** `owner/name` on GitHub. */
  repository: string;
}

/** A forge repository's link to GitHub and each ref's sync state. */
export interface GithubLinkView {
  installation_id: number;
  linked_at: string;
  refs: RefView[];
  /** The forge repository, `owner/name`: only in `GET /v1/github/repos`. */
  repo?: string | null;
  /** `owner/name` on GitHub. */
  repository: string;
}

/** `GET /v1/github`: the App's public settings and its installations. */
export interface GithubOverview {
  api_url: string;
  app_id: number;
  git_url: string;
  installations: Installation[];
  reconcile_secs: number;
}

export interface Installation {
  account: string;
  created_at: string;
  /** GitHub's installation id. */
  id: number;
}

/** What a fork or a resume carried over. */
export type Kept = "disk" | "memory" | "processes";

/** The `log` event: text a step wrote. */
export interface LogEvent {
  position: number;
  text: string;
}

/** `POST /v1/vms/{id}/move`: where a VM paused to disk goes. */
export interface MoveRequest {
  /**
   * The node's name; by default the up node (other than its own, of
   * the same backend) with the most memory free.
   */
  node?: string | null;
}

/** A VM moved to another node and resumed there. */
export type MovedVm = CarriedVm & {
  /** The node that holds it now. */
  node: string;
};

/** `POST /v1/nodes/report`: what a node says of itself, every 2 s. */
export interface NodeReport {
  /** Where the control plane reaches its sandboxes, `host:port`. */
  address: string;
  backend: string;
  disk_bytes: number;
  free_disk_bytes: number;
  free_memory_bytes: number;
  /**
   * The key the control plane presents there; the node makes a new one
   * each time it starts.
   */
  key: string;
  labels?: Record<string, string>;
  memory_bytes: number;
  /**
   * The SHA-256 (hex) of the self-signed certificate it serves TLS
   * with, made anew each time it starts; absent: it serves in clear,
   * which the control plane accepts only on a loopback address.
   */
  tls_sha256?: string | null;
  vcpus: number;
}

/** The answer to a report. */
export interface NodeReportAnswer {
  /** The node's name, as the admin added it. */
  node: string;
  /** When to report next, in seconds. */
  report_every_secs: number;
}

/** Whether a node reports. */
export type NodeState = "new" | "up" | "lost";

export interface NodeView {
  /** Where it serves sandboxes (`host:port`), once it reported. */
  address?: string | null;
  /**
   * Memory a new sandbox may take here, in MiB: the smaller of what the
   * node reported free and its memory less what is committed.
   */
  available_mib: number;
  /** `container` or `microvm`, once it reported. */
  backend?: string | null;
  /**
   * Memory of the VMs placed on it that hold memory (running or paused
   * in memory), in MiB.
   */
  committed_mib: number;
  created_at: string;
  disk_bytes: number;
  free_disk_bytes: number;
  /** What the node last reported free, at most the cap. */
  free_memory_bytes: number;
  id: string;
  /** Its labels for placement: the admin's when set, else its own. */
  labels: Record<string, string>;
  /** Whether the admin set the labels (the node's own are ignored). */
  labels_set: boolean;
  last_seen_at?: string | null;
  /** The admin's cap on the memory placement counts here, in MiB. */
  max_memory_mib?: number | null;
  /**
   * Its memory as placement counts it: what it reported, at most the
   * cap.
   */
  memory_bytes: number;
  name: string;
  /** Sandboxes placed on it (VMs, their snapshots and pooled copies). */
  sandboxes: number;
  state: NodeState;
  /**
   * The SHA-256 (hex) of the certificate it serves TLS with; `null`: in
   * clear (on loopback only).
   */
  tls_sha256?: string | null;
  /**
   * The node's token (`forge node run --token`): only in the answer to
   * creation, stored as a hash.
   */
  token?: string | null;
  vcpus: number;
}

/** `POST /v1/vms/{id}/pause`; no body is a pause in memory. */
export interface PauseRequest {
  to_disk?: boolean;
}

/** What becomes of an idle VM: `{"type": "persistent" | "ephemeral"}`. */
export interface Persistence {
  type: PersistenceKind;
}

export type PersistenceKind = "ephemeral" | "persistent";

/** Whether a background process still runs. */
export type ProcessState = "running" | "exited";

/** A background process of a VM. */
export interface ProcessView {
  command: string;
  /** Once exited: the code, or 128 + the signal that ended it. */
  exit_code?: number | null;
  /** Bytes it printed (stdout and stderr together). */
  output_bytes: number;
  /** Of those, the oldest no longer kept (the VM keeps the last MiB). */
  output_dropped: number;
  pid: number;
  /** RFC 3339. */
  started_at: string;
  state: ProcessState;
}

/** The answer to a ping or a redelivery: the delivery that was queued. */
export interface Queued {
  delivery_id: string;
}

/**
 * How a ref of a repository linked to GitHub compares with GitHub's
 * (`github_refs.state`).
 */
export type RefSyncState = "in_sync" | "ahead" | "behind" | "diverged" | "error";

/** What the last sync saw of one ref. */
export interface RefView {
  forge_sha?: string | null;
  github_sha?: string | null;
  last_error?: string | null;
  last_sync_at: string;
  ref_name: string;
  state: RefSyncState;
  /** The last commit both sides agreed on. */
  synced_sha?: string | null;
}

export interface RepoView {
  clone_url: string;
  created_at: string;
  default_branch: string;
  id: string;
  /** `owner/name`. */
  name: string;
}

/** A comment on a line of a change (the new side). */
export interface ReviewComment {
  /** Markdown. */
  body: string;
  line: number;
  path: string;
}

/**
 * The review event the bot posted on a pull request
 * (`github_reviews.verdict`), spelled as GitHub's API spells it.
 */
export type ReviewVerdict = "COMMENT" | "APPROVE" | "REQUEST_CHANGES";

/**
 * What the analysis after a run's steps found: the project's own
 * TypeScript compiler, ESLint and Biome when it uses them, and the
 * failing tests and compiler errors in the steps' logs.
 */
export interface RunAnalysis {
  findings: Finding[];
  /** What went wrong on the way (a tool that timed out or crashed). */
  notes: string[];
  /** The tools that ran (`tsc`, `ESLint`, `Biome`). */
  tools: string[];
}

/** `GET /v1/runs/{id}`: the run and the pull-request review it decided. */
export type RunDetail = RunView & {
  analysis?: null | RunAnalysis;
  branch_review?: null | BranchReview;
  commit?: null | CommitView;
  review?: null | RunReview;
};

/** The `end` event: the run finished. */
export interface RunEnd {
  error?: string | null;
  state: RunState;
}

/** The review the GitHub bot posted (or claimed) for a run. */
export interface RunReview {
  /** `owner/name` on GitHub. */
  github_repo: string;
  head_sha: string;
  number: number;
  /** `None` while the review is claimed but not yet posted. */
  posted_at?: string | null;
  verdict: ReviewVerdict;
}

/** A pipeline run's lifecycle (`runs.state`). */
export type RunState = "queued" | "running" | "passed" | "failed" | "cancelled" | "error";

/** A run and its steps, as the list shows it. */
export interface RunView {
  branch: string;
  commit_id: string;
  created_at: string;
  error?: string | null;
  /** The push (or pipeline request) event that asked for it. */
  event_id: number;
  finished_at?: string | null;
  id: number;
  /** The commit of `plan_ref` the steps were read from. */
  plan_commit?: string | null;
  /** The branch whose steps ran, when not the commit's own (a review). */
  plan_ref?: string | null;
  repo_id: string;
  /** `owner/name` when the run was queued. */
  repo_name: string;
  started_at?: string | null;
  state: RunState;
  steps: StepView[];
  /** Set in every step's environment (`git push -o ci.variable=K=V`). */
  variables?: Record<string, string>;
  vm_id?: string | null;
}

export interface SandboxLimits {
  max_disk_mib: number;
  max_file_bytes: number;
  max_fork_count: number;
  max_live: number;
  /** `None`: no cap on the memory of live VMs together. */
  max_live_mem_mib?: number | null;
  max_live_per_token?: number | null;
  max_mem_mib: number;
  max_vcpus: number;
}

export interface SandboxQueue {
  max_wait_secs: number;
  waiting: number;
}

/** The sandbox backend, its limits and its queue. */
export interface SandboxSystem {
  /** `None` when no backend can run; `reason` says why. */
  backend?: string | null;
  /** The guest image's root directory. */
  image?: string | null;
  limits: SandboxLimits;
  queue: SandboxQueue;
  reason: string;
  /** Sandboxes kept ready for creates (`--warm-pool`). */
  warm_pool?: WarmPoolStatus;
}

/** The answer to a [`ShareLinkRequest`]. */
export interface ShareLink {
  /** RFC 3339. */
  expires_at?: string | null;
  ttl_secs: number;
  url: string;
}

/**
 * `POST /v1/vms/{id}/ports/{port}/links`: a link to the VM's server on
 * `port` that works without a token for `ttl_secs` (default an hour).
 */
export interface ShareLinkRequest {
  ttl_secs?: number | null;
}

/**
 * `POST /v1/vms/{id}/processes/{pid}/signal`: `TERM`, `KILL`, `INT`,
 * `HUP`, `QUIT`, `USR1`, `USR2`, `STOP` or `CONT` (with or without `SIG`).
 */
export interface SignalRequest {
  signal: string;
}

/** A snapshot as every snapshot endpoint shows it. */
export interface SnapshotView {
  /** `container` or `microvm`. */
  backend: string;
  branch?: string | null;
  created_at: string;
  /** Bytes its disk layer takes, when the backend knows. */
  disk_bytes?: number | null;
  id: string;
  /**
   * What it holds: always `disk`; `memory` and `processes` when the
   * backend could save them (VMs from it then resume its processes).
   */
  kept: Kept[];
  mem_mib: number;
  name?: string | null;
  /** Why less than everything was kept, when known. */
  note?: string | null;
  /** `owner/name` of the repository the source VM had checked out. */
  repo?: string | null;
  /** Bytes its saved memory and processes take. */
  saved_bytes?: number | null;
  /** The VM it was taken from (it may be gone since). */
  source_vm?: string | null;
  /** The template whose image it is, if any: deleted with its template. */
  template?: string | null;
  /** Every VM started from it has these. */
  vcpus: number;
}

/**
 * `POST /v1/vms/{id}/processes`: a background process, exactly one of
 * `command` (a shell script) and `argv`.
 */
export interface StartProcess {
  argv?: string[] | null;
  command?: string | null;
  cwd?: string | null;
  env?: Record<string, string>;
}

/** The `step` event: a step started or changed status. */
export interface StepEvent {
  duration_ms?: number | null;
  exit_code?: number | null;
  name: string;
  position: number;
  status: StepState;
}

/** A step of a run (`run_steps.status`). */
export type StepState = "pending" | "running" | "passed" | "failed" | "skipped" | "cancelled";

/** A step of a run (its log is read from `/logs`). */
export interface StepView {
  command: string;
  duration_ms?: number | null;
  exit_code?: number | null;
  name: string;
  position: number;
  status: StepState;
}

/** `GET /v1/system`. */
export interface System {
  sandboxes: SandboxSystem;
  version: string;
}

/** A template's warm pool. */
export interface TemplatePoolStatus {
  ready: number;
  target: number;
  template: string;
}

/**
 * `POST /v1/templates`: what to build. Every list runs in this order:
 * `apt`, `pip`, `npm`, then `run`; all of it in a sandbox, whose downloads
 * go through the egress proxy and its allow-list.
 */
export interface TemplateSpec {
  /** Debian packages (`apt-get install --no-install-recommends`). */
  apt?: string[];
  /**
   * `debian-bookworm` (the forge's own image, with git, Node.js, npm and
   * Bun) when absent.
   */
  base?: string | null;
  disk_mib?: number | null;
  /** Environment of the build's commands and of every VM from it. */
  env?: Record<string, string>;
  mem_mib?: number | null;
  /** Letters, digits, `.`, `_`, `-` (at most 63). */
  name: string;
  /** npm packages installed globally (`npm install -g`). */
  npm?: string[];
  /** Python packages (`pip install`; Debian's `python3-pip` is added). */
  pip?: string[];
  /**
   * Sandboxes from this template to keep created and paused, handed
   * out by creates at once (at most 50; `--warm-pool <name>=N` may ask
   * for more). Not part of what builds: changing it rebuilds nothing.
   */
  pool?: number | null;
  /** Shell commands (`/bin/sh -c`), run in `workdir`, each must succeed. */
  run?: string[];
  start?: null | DevServerSpec;
  /** Sizes of the build and of every VM from the template. */
  vcpus?: number | null;
  /**
   * Boot once, run `start` until its port answers, and keep that
   * (memory and processes) as the image: VMs answer on the port at once.
   */
  warm?: boolean;
  /**
   * An absolute path: created, the build's `run` and `start` commands
   * run there, and so do a VM's commands that name no `cwd`.
   */
  workdir?: string | null;
}

/** A template's build (`template_builds.state`). */
export type TemplateState = "building" | "ready" | "failed";

/** A template as every template endpoint shows it. */
export interface TemplateView {
  build_ms?: number | null;
  created_at: string;
  /** Why the build failed. */
  error?: string | null;
  name: string;
  /** On `POST`: an earlier build of the same spec is used, nothing builds. */
  reused?: boolean;
  snapshot?: null | SnapshotView;
  spec: TemplateSpec;
  /** The hash of what the spec builds (not its name): one build per hash. */
  spec_hash: string;
  state: TemplateState;
  updated_at: string;
}

/**
 * `POST /v1/vms/{id}/terminal/tickets`: a one-time ticket that opens the
 * VM's terminal WebSocket (`?ticket=`) without a token in the URL.
 */
export interface TerminalTicket {
  expires_in_secs: number;
  ticket: string;
}

/**
 * `POST /v1/vms/{id}/timeout`: the VM's deadline becomes `ttl_secs` from
 * now (longer or shorter than it was); `null` removes it.
 */
export interface TimeoutRequest {
  /**
   * Required; `null` to remove the deadline (a missing field is an
   * error, not a removal).
   */
  ttl_secs?: number | null;
}

/** What a token may do. */
export type TokenScope = "admin" | "repo:write" | "repo:read";

export interface TokenView {
  created_at: string;
  id: string;
  /**
   * When it was last presented, to the minute: a use within a minute of
   * the one recorded is not written again.
   */
  last_used_at?: string | null;
  name: string;
  /** The repository it is limited to, `owner/name`. */
  repo?: string | null;
  revoked_at?: string | null;
  scopes: TokenScope[];
  /** The secret: only in the answer to creation, never stored. */
  token?: string | null;
}

/** One entry of a directory listing. */
export interface TreeEntry {
  kind: EntryKind;
  name: string;
}

/** `PATCH …/webhooks/{id}`: what is absent stays as it is. */
export interface UpdateWebhook {
  active?: boolean | null;
  branches?: string[] | null;
  events?: string[] | null;
  paths?: string[] | null;
  /**
   * Replace the secret (with `secret`, or a generated one); the old one
   * keeps signing for the rotation window.
   */
  rotate_secret?: boolean;
  secret?: string | null;
  url?: string | null;
}

/**
 * `GET /v1/vms/{id}`: the view, usage while it holds resources, and its
 * egress counters.
 */
export type VmDetail = VmView & {
  egress: EgressUsage;
  stats?: null | VmStats;
};

/** A sandbox's lifecycle (`vms.state`, `VmView::state`). */
export type VmState = "running" | "paused" | "paused_to_disk" | "crashed" | "lost";

/** Usage of one sandbox, as its backend measures it. */
export interface VmStats {
  cpu_usage_ns: number;
  disk_bytes?: number | null;
  memory_bytes: number;
  state: VmState;
}

/** A VM as every VM endpoint shows it. */
export interface VmView {
  /** `container` or `microvm`. */
  backend: string;
  branch?: string | null;
  created_at: string;
  dev_server?: null | DevServerStatus;
  /**
   * When the VM is destroyed whatever its activity (RFC 3339); `null`:
   * never.
   */
  expires_at?: string | null;
  id: string;
  idle_timeout_secs?: number | null;
  labels?: Record<string, string>;
  mem_mib: number;
  /** The VM it was forked from. */
  parent?: string | null;
  persistence: Persistence;
  /** Where the dev server is seen, when the VM has one. */
  preview_url?: string | null;
  /** `owner/name` of the repository checked out in it. */
  repo?: string | null;
  /** The snapshot (id) it started from. */
  snapshot?: string | null;
  state: VmState;
  /**
   * Paused to disk on a node: the size in bytes of its copy in the
   * snapshot store (`forge serve --snapshot-store`), once uploaded.
   * With it, the VM resumes on another node if its own is lost.
   */
  stored_bytes?: number | null;
  /** The template it started from. */
  template?: string | null;
  vcpus: number;
}

/**
 * The warm pools: how many sandboxes of the forge's image the default
 * pool keeps and how many are ready now, and the same for each template's.
 */
export interface WarmPoolStatus {
  ready: number;
  target: number;
  templates?: TemplatePoolStatus[];
}

/** The answer to an inbound GitHub webhook. */
export interface WebhookAccepted {
  /** Its `X-GitHub-Delivery`. */
  delivery: string;
  /** Seen before (by id or by body): not processed again. */
  duplicate: boolean;
}

export interface WebhookView {
  active: boolean;
  branches: string[];
  consecutive_failures: number;
  created_at: string;
  disabled_reason?: string | null;
  events: string[];
  id: string;
  paths: string[];
  /** While set, the previous secret still signs every request too. */
  previous_secret_expires_at?: string | null;
  /** Only in the answer that set it. */
  secret?: string | null;
  updated_at: string;
  url: string;
}
