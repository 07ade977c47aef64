// The forge's TypeScript SDK: sandboxes ("VMs"), git repositories, runs,
// webhooks and tokens over the forge's REST API. ESM, no dependencies
// beyond the platform's fetch (and WebSocket for terminals).

import { ForgeError, Transport, events, filePath, pathOf, relativePath, toWire } from "./http.js";

export { ForgeError } from "./http.js";

/** The client: `new Forge({ baseUrl, token })`, or FORGE_URL and FORGE_TOKEN. */
export class Forge {
  constructor(options = {}) {
    const env = globalThis.process?.env ?? {};
    this.http = new Transport({
      baseUrl: options.baseUrl ?? env.FORGE_URL,
      token: options.token ?? env.FORGE_TOKEN,
      fetch: options.fetch,
    });
    this.vms = new Vms(this);
    this.git = { repos: new Repos(this) };
    this.snapshots = new Snapshots(this);
    this.templates = new Templates(this);
    this.runs = new Runs(this);
    this.webhooks = new Webhooks(this);
    this.tokens = new Tokens(this);
  }

  /** The forge's version and its sandbox backend, limits and queue. */
  async system() {
    return this.http.json("GET", "/v1/system");
  }

  /** The forge's OpenAPI document. */
  async openapi() {
    return this.http.json("GET", "/v1/openapi.json");
  }
}

export function createForge(options) {
  return new Forge(options);
}

export default Forge;

// ---------------------------------------------------------------- VMs

export class Vms {
  constructor(forge) {
    this.forge = forge;
  }

  /**
   * A new VM. Takes the API's `CreateVm` in either spelling, and
   * `git: { repos: [{ repo, branch }] }` naming one of this forge's
   * repositories (`owner/name` or its clone URL).
   */
  async create(options = {}) {
    const { git, ...rest } = options;
    const body = { ...rest };
    if (git !== undefined) {
      const repos = git.repos ?? [];
      if (repos.length !== 1) {
        throw new ForgeError(0, "bad_request", "git.repos takes exactly one repository");
      }
      body.repo = this.forge.git.repos.nameOf(repos[0].repo);
      if (repos[0].branch !== undefined) {
        body.branch = repos[0].branch;
      }
    }
    const view = await this.forge.http.json("POST", "/v1/vms", { json: body });
    const vm = new Vm(this.forge, view);
    return { vm, vmId: vm.id, ...view };
  }

  /** The VM `id`, with its usage; a ForgeError `not_found` if there is none. */
  async get(id) {
    const detail = await this.forge.http.json("GET", `/v1/vms/${pathOf(id)}`);
    return new Vm(this.forge, detail);
  }

  /** A handle on VM `id` without asking the forge. */
  ref(id) {
    return new Vm(this.forge, { id });
  }

  /**
   * Every VM the token may see, oldest first, through every page. Filters:
   * `labels` (`{ key: value }`, all required; a `null` value matches any),
   * `state` (`"running"`, `"paused"`, ...), `repo` (`owner/name`).
   */
  async list({ labels, state, repo } = {}) {
    const filter = new URLSearchParams();
    for (const [key, value] of Object.entries(labels ?? {})) {
      filter.append("label", value === null || value === undefined ? key : `${key}:${value}`);
    }
    const vms = [];
    let cursor;
    do {
      const response = await this.forge.http.send("GET", `/v1/vms?${filter}`, {
        query: { state, repo, cursor },
      });
      for (const view of await response.json()) {
        vms.push(new Vm(this.forge, view));
      }
      cursor = response.headers.get("x-next-cursor") ?? undefined;
    } while (cursor !== undefined);
    return vms;
  }

  async delete(id) {
    await this.forge.http.json("DELETE", `/v1/vms/${pathOf(id)}`);
  }
}

/** Options of an exec: a shell script (a string) or argv (an array). */
function execBody(command, options) {
  const body = { ...options };
  if (typeof command === "string") {
    body.command = command;
  } else if (Array.isArray(command)) {
    body.argv = command;
  } else if (command && typeof command === "object") {
    Object.assign(body, command);
  }
  return body;
}

export class Vm {
  constructor(forge, view) {
    this.forge = forge;
    this.id = view.id;
    /** The VM as the forge last showed it (`VmView`). */
    this.view = view;
    this.fs = new VmFiles(this);
    this.ports = new VmPorts(this);
  }

  get path() {
    return `/v1/vms/${pathOf(this.id)}`;
  }

  get state() {
    return this.view.state;
  }

  /**
   * Destroys the VM `ttlSecs` from now, whatever it is doing (sooner or
   * later than its deadline was); `null` removes the deadline.
   */
  async setTimeout(ttlSecs) {
    this.view = await this.forge.http.json("POST", `${this.path}/timeout`, {
      json: { ttlSecs },
    });
    return this.view;
  }

  /** The VM as the forge shows it now, with usage (`VmDetail`). */
  async refresh() {
    this.view = await this.forge.http.json("GET", this.path);
    return this.view;
  }

  /**
   * Runs `command` (a shell script, or an argv array) and answers when it
   * ends: `{ stdout, stderr, exit_code, duration_ms, timed_out, truncated }`.
   * A paused VM is resumed first.
   */
  async exec(command, options = {}) {
    return this.forge.http.json("POST", `${this.path}/exec`, {
      json: execBody(command, options),
      signal: options.signal,
    });
  }

  /**
   * Runs `command` and streams its output: iterate for
   * `{ stream: "stdout" | "stderr", text }` chunks; `exit` resolves with
   * how it ended. Breaking out of the loop (or `close()`) kills it.
   */
  execStream(command, options = {}) {
    const { signal, ...rest } = options;
    return new ExecStream(this, execBody(command, rest), signal);
  }

  /**
   * `count` copies, memory and disk: `{ forks: Vm[] }`. Options `{ count,
   * labels, ttlSecs }`; forks inherit the VM's labels.
   */
  async fork(options = {}) {
    const { forks } = await this.forge.http.json("POST", `${this.path}/fork`, {
      json: { ...options, count: options.count ?? 1 },
    });
    return { forks: forks.map((view) => new Vm(this.forge, view)) };
  }

  /** Pauses in memory, or to disk with `{ toDisk: true }` (no CPU, no RAM). */
  async pause(options = {}) {
    this.view = await this.forge.http.json("POST", `${this.path}/pause`, {
      json: options,
    });
    return this.view;
  }

  /** Resumes where it stopped; the answer says what was kept. */
  async resume() {
    this.view = await this.forge.http.json("POST", `${this.path}/resume`);
    return this.view;
  }

  /**
   * Moves it, paused to disk, to another sandbox node (`{ node }`, or the
   * one with the most memory free) and resumes it there (admin).
   */
  async move(options = {}) {
    this.view = await this.forge.http.json("POST", `${this.path}/move`, {
      json: options,
    });
    return this.view;
  }

  /**
   * Starts a background process (a shell script or an argv array, with
   * `{ env, cwd }`): it runs on after the call; its output is kept.
   */
  async startProcess(command, options = {}) {
    return this.forge.http.json("POST", `${this.path}/processes`, {
      json: execBody(command, options),
    });
  }

  /** The background processes, oldest first (`ProcessView[]`). */
  async processes() {
    return this.forge.http.json("GET", `${this.path}/processes`);
  }

  /** What background process `pid` printed (the last MiB kept), as text. */
  async processLogs(pid, { offset } = {}) {
    const response = await this.forge.http.send("GET", `${this.path}/processes/${pid}/logs`, {
      query: { offset },
    });
    return response.text();
  }

  /**
   * Background process `pid`'s output as it comes: `{ event: "output",
   * data: { text } }`, then one `{ event: "exit", data: ProcessView }`.
   */
  async *followProcess(pid, options = {}) {
    const response = await this.forge.http.send("GET", `${this.path}/processes/${pid}/logs`, {
      accept: "text/event-stream",
      signal: options.signal,
    });
    for await (const event of events(response)) {
      yield event;
      if (event.event === "exit" || event.event === "error") {
        return;
      }
    }
  }

  /** Sends `signal` ("TERM", "KILL", "INT", ...) to the process's group. */
  async signalProcess(pid, signal) {
    // `202` with no body.
    await this.forge.http.send("POST", `${this.path}/processes/${pid}/signal`, {
      json: { signal },
    });
  }

  /**
   * Keeps the VM's disk and, where the backend can, its memory and
   * processes as a snapshot (`SnapshotView`; `kept` says which); the VM
   * runs on. `{ name }` names it. Start VMs from it with
   * `vms.create({ snapshot })`.
   */
  async snapshot(options = {}) {
    return this.forge.http.json("POST", `${this.path}/snapshots`, { json: options });
  }

  async delete() {
    await this.forge.http.json("DELETE", this.path);
  }

  /**
   * A shell on a terminal in the VM, over a WebSocket (the platform's:
   * Bun, Node 22, or Node 20 with --experimental-websocket).
   */
  async terminal(options = {}) {
    const Socket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Socket !== "function") {
      throw new ForgeError(
        0,
        "bad_request",
        "no WebSocket: use Bun, Node 22, or Node 20 with --experimental-websocket (or pass one)",
      );
    }
    const { ticket } = await this.forge.http.json("POST", `${this.path}/terminal/tickets`);
    const url = this.forge.http.url(`${this.path}/terminal`, {
      ticket,
      cols: options.cols,
      rows: options.rows,
    });
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return Terminal.open(new Socket(url.toString()));
  }
}

export class ExecStream {
  constructor(vm, body, signal) {
    this.controller = new AbortController();
    if (signal) {
      signal.addEventListener("abort", () => this.controller.abort(signal.reason), { once: true });
    }
    let settle;
    /** How the command ended (`ExecExit`); rejects with its error. */
    this.exit = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.exit.catch(() => {});
    this.settle = settle;
    this.response = vm.forge.http.send("POST", `${vm.path}/exec`, {
      json: body,
      accept: "text/event-stream",
      signal: this.controller.signal,
    });
    this.response.catch((error) => settle.reject(error));
  }

  async *[Symbol.asyncIterator]() {
    let ended = false;
    try {
      for await (const { event, data } of events(await this.response)) {
        if (event === "stdout" || event === "stderr") {
          yield { stream: event, text: data.text };
        } else if (event === "exit") {
          ended = true;
          this.settle.resolve(data);
        } else if (event === "error") {
          ended = true;
          const error = new ForgeError(502, "sandbox_error", data.message ?? String(data));
          this.settle.reject(error);
          throw error;
        }
      }
      if (!ended) {
        const error = new ForgeError(0, "network", "the exec stream ended before the command did");
        this.settle.reject(error);
        throw error;
      }
    } finally {
      if (!ended) {
        this.close();
      }
    }
  }

  /** Everything, collected: `{ stdout, stderr, ...ExecExit }`. */
  async collect() {
    let stdout = "";
    let stderr = "";
    for await (const chunk of this) {
      if (chunk.stream === "stdout") {
        stdout += chunk.text;
      } else {
        stderr += chunk.text;
      }
    }
    return { stdout, stderr, ...(await this.exit) };
  }

  /** Stops reading; the forge kills the command. */
  close() {
    this.controller.abort();
  }
}

export class Terminal {
  constructor(socket) {
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    this.queue = [];
    this.waiting = null;
    /** Resolves with `{ code, reason }` when the socket closes. */
    this.closed = new Promise((resolve) => {
      socket.addEventListener("close", (event) => {
        resolve({ code: event.code, reason: event.reason });
        this.wake();
      });
    });
    socket.addEventListener("message", (event) => {
      const data =
        typeof event.data === "string"
          ? new TextEncoder().encode(event.data)
          : new Uint8Array(event.data);
      this.queue.push(data);
      this.wake();
    });
  }

  static open(socket) {
    return new Promise((resolve, reject) => {
      socket.addEventListener("open", () => resolve(new Terminal(socket)), { once: true });
      socket.addEventListener(
        "error",
        () => reject(new ForgeError(0, "network", "the terminal's WebSocket did not open")),
        { once: true },
      );
    });
  }

  wake() {
    const waiting = this.waiting;
    this.waiting = null;
    waiting?.();
  }

  /** Sends keystrokes (text or bytes). */
  write(data) {
    this.socket.send(typeof data === "string" ? new TextEncoder().encode(data) : data);
  }

  resize(cols, rows) {
    this.socket.send(JSON.stringify({ resize: { cols, rows } }));
  }

  close() {
    this.socket.close(1000);
  }

  /** The terminal's output as byte chunks, until it closes. */
  async *[Symbol.asyncIterator]() {
    for (;;) {
      if (this.queue.length > 0) {
        yield this.queue.shift();
        continue;
      }
      if (this.socket.readyState >= 2) {
        return;
      }
      await new Promise((resolve) => {
        this.waiting = resolve;
      });
    }
  }
}

export class VmFiles {
  constructor(vm) {
    this.vm = vm;
  }

  url(path) {
    return `${this.vm.path}/files/${filePath(path)}`;
  }

  /** The file's bytes, or its text with `{ encoding: "utf8" }` (or "utf-8"). */
  async readFile(path, options = {}) {
    const response = await this.vm.forge.http.send("GET", this.url(path));
    const bytes = new Uint8Array(await response.arrayBuffer());
    const encoding = typeof options === "string" ? options : options.encoding;
    return encoding ? new TextDecoder(encoding).decode(bytes) : bytes;
  }

  /** Writes the file atomically, making missing parent directories. */
  async writeFile(path, data) {
    await this.vm.forge.http.send("PUT", this.url(path), { bytes: data });
  }

  /** The directory's entries (`FileEntry[]`); symlinks are not followed. */
  async readdir(path) {
    const dir = String(path).endsWith("/") ? path : `${path}/`;
    return this.vm.forge.http.json("GET", this.url(dir));
  }

  async remove(path) {
    await this.vm.forge.http.send("DELETE", this.url(path));
  }
}

export class VmPorts {
  constructor(vm) {
    this.vm = vm;
  }

  /** Where the server on `port` answers (with the token), as a URL. */
  url(port, path = "/") {
    const prefix = `${this.vm.forge.http.baseUrl}${this.vm.path}/ports/${Number(port)}/`;
    const url = `${prefix}${relativePath(path)}`;
    // However the path reads, the URL it makes stays under the port's.
    if (!new URL(url).pathname.startsWith(new URL(prefix).pathname)) {
      throw new ForgeError(0, "bad_request", `${JSON.stringify(path)} leaves the server's path`);
    }
    return url;
  }

  /** A request to the server on `port`, with the token. */
  async fetch(port, path = "/", init = {}) {
    const headers = { ...this.vm.forge.http.headers(), ...(init.headers ?? {}) };
    return this.vm.forge.http.fetch(this.url(port, path), { ...init, headers });
  }

  /** A link to the server on `port` that works without a token, for `ttlSeconds` (default an hour). */
  async share(port, options = {}) {
    return this.vm.forge.http.json("POST", `${this.vm.path}/ports/${Number(port)}/links`, {
      json: options,
    });
  }
}

// ---------------------------------------------------------------- git

export class Repos {
  constructor(forge) {
    this.forge = forge;
  }

  /** `owner/name` of a repository given by name or by this forge's clone URL. */
  nameOf(repo) {
    const text = String(repo);
    const base = this.forge.http.baseUrl;
    const name = text.startsWith(`${base}/`)
      ? text.slice(base.length + 1).replace(/\/+$/, "").replace(/\.git$/, "")
      : text.replace(/\.git$/, "");
    // Exactly `owner/name`: anything more would name another endpoint.
    if (/^[^/:?#\\]+\/[^/:?#\\]+$/.test(name)) {
      return name;
    }
    throw new ForgeError(
      0,
      "bad_request",
      `${text} is not a repository of this forge: import it first with forge.git.repos.create({ name, source: { url } })`,
    );
  }

  path(name) {
    const [owner, repo] = this.nameOf(name).split("/");
    return `/v1/repos/${pathOf(owner, repo)}`;
  }

  /**
   * A new repository `name` (`owner/name`): empty, or imported from
   * `source: { url }` (or `importUrl`).
   */
  async create(options) {
    const { source, ...rest } = options;
    const body = { ...rest };
    if (source?.url !== undefined) {
      body.import_url = source.url;
    }
    return this.forge.http.json("POST", "/v1/repos", { json: body });
  }

  async list() {
    return this.forge.http.json("GET", "/v1/repos");
  }

  async get(name) {
    return this.forge.http.json("GET", this.path(name));
  }

  async delete(name) {
    await this.forge.http.json("DELETE", this.path(name));
  }

  async branches(name) {
    return this.forge.http.json("GET", `${this.path(name)}/branches`);
  }

  /** What `path` names on `branch` (default branch when absent): a file or a directory. */
  async contents(name, options = {}) {
    return this.forge.http.json("GET", `${this.path(name)}/contents`, { query: options });
  }

  /** The repository's runs, newest first (`before`, `limit`). */
  async runs(name, options = {}) {
    return this.forge.http.json("GET", `${this.path(name)}/runs`, { query: options });
  }

  /** One page of events after `after` (`EventPage`). */
  async eventPage(name, options = {}) {
    const { signal, ...query } = options;
    return this.forge.http.json("GET", `${this.path(name)}/events`, { query, signal });
  }

  /**
   * Every event after `after` (0: from the start), then each new one as it
   * happens, over the long poll. Ends when the loop breaks or `signal`
   * aborts.
   */
  async *events(name, options = {}) {
    const { signal, waitSeconds = 30, limit } = options;
    let after = options.after ?? 0;
    while (!signal?.aborted) {
      const page = await this.eventPage(name, { after, limit, waitSeconds, signal });
      for (const event of page.events) {
        yield event;
      }
      after = page.next_cursor;
    }
  }

  /** The repository's GitHub link. */
  async github(name) {
    return this.forge.http.json("GET", `${this.path(name)}/github`);
  }

  async linkGithub(name, repository) {
    return this.forge.http.json("POST", `${this.path(name)}/github`, { json: { repository } });
  }

  async unlinkGithub(name) {
    await this.forge.http.json("DELETE", `${this.path(name)}/github`);
  }
}

// ---------------------------------------------------------------- snapshots

export class Snapshots {
  constructor(forge) {
    this.forge = forge;
  }

  /** The snapshots the token may see, with the space each takes. */
  async list() {
    return this.forge.http.json("GET", "/v1/snapshots");
  }

  /** A snapshot by name or id. */
  async get(key) {
    return this.forge.http.json("GET", `/v1/snapshots/${pathOf(key)}`);
  }

  /** Deletes a snapshot; VMs started from it run on. */
  async delete(key) {
    await this.forge.http.json("DELETE", `/v1/snapshots/${pathOf(key)}`);
  }
}

// ---------------------------------------------------------------- templates

export class Templates {
  constructor(forge) {
    this.forge = forge;
  }

  /**
   * Creates or changes a template from its spec (`{ name, apt, pip, npm,
   * run, env, workdir, start, warm, pool }`) and builds it, unless the
   * same spec was built before (`reused`). `TemplateView`; `state` is
   * `"building"` until the build ends (see `follow`).
   */
  async build(spec) {
    return this.forge.http.json("POST", "/v1/templates", { json: spec });
  }

  async list() {
    return this.forge.http.json("GET", "/v1/templates");
  }

  async get(name) {
    return this.forge.http.json("GET", `/v1/templates/${pathOf(name)}`);
  }

  /** Deletes a template and, unless another shares its spec, its image. */
  async delete(name) {
    await this.forge.http.json("DELETE", `/v1/templates/${pathOf(name)}`);
  }

  /** The build's log as text. */
  async log(name) {
    const response = await this.forge.http.send("GET", `/v1/templates/${pathOf(name)}/build`);
    return response.text();
  }

  /**
   * The build live: `{ event: "log", data: { text } }` (the log so far
   * first), `{ event: "step", data: BuildStep }` as each step starts, then
   * one `{ event: "done", data: TemplateView }`.
   */
  async *follow(name, options = {}) {
    const response = await this.forge.http.send("GET", `/v1/templates/${pathOf(name)}/build`, {
      query: { follow: true },
      accept: "text/event-stream",
      signal: options.signal,
    });
    for await (const event of events(response)) {
      yield event;
      if (event.event === "done") {
        return;
      }
    }
  }
}

// ---------------------------------------------------------------- runs

export class Runs {
  constructor(forge) {
    this.forge = forge;
  }

  /** A run with its steps (`RunDetail`). */
  async get(id) {
    return this.forge.http.json("GET", `/v1/runs/${pathOf(id)}`);
  }

  /** Cancels a queued or running run (`RunView`; still ending after a 202). */
  async cancel(id) {
    return this.forge.http.json("POST", `/v1/runs/${pathOf(id)}/cancel`);
  }

  /** Queues a new run of the run's commit with the same steps (`RunView`). */
  async rerun(id) {
    return this.forge.http.json("POST", `/v1/runs/${pathOf(id)}/rerun`);
  }

  /** Every step's log as text. */
  async logs(id) {
    const response = await this.forge.http.send("GET", `/v1/runs/${pathOf(id)}/logs`);
    return response.text();
  }

  /**
   * The run's log live: `{ event: "step", data: StepEvent }` and
   * `{ event: "log", data: LogEvent }` as they happen, then one
   * `{ event: "end", data: RunEnd }`.
   */
  async *follow(id, options = {}) {
    const response = await this.forge.http.send("GET", `/v1/runs/${pathOf(id)}/logs`, {
      query: { follow: true },
      accept: "text/event-stream",
      signal: options.signal,
    });
    for await (const event of events(response)) {
      yield event;
      if (event.event === "end") {
        return;
      }
    }
  }
}

// ---------------------------------------------------------------- webhooks

export class Webhooks {
  constructor(forge) {
    this.forge = forge;
  }

  path(repo, id) {
    const base = `${this.forge.git.repos.path(repo)}/webhooks`;
    return id === undefined ? base : `${base}/${pathOf(id)}`;
  }

  async list(repo) {
    return this.forge.http.json("GET", this.path(repo));
  }

  /** A webhook on `repo`: `url`, `events` (or `["*"]`), branch and path globs. */
  async create(repo, options) {
    return this.forge.http.json("POST", this.path(repo), { json: options });
  }

  async get(repo, id) {
    return this.forge.http.json("GET", this.path(repo, id));
  }

  async update(repo, id, changes) {
    return this.forge.http.json("PATCH", this.path(repo, id), { json: changes });
  }

  async delete(repo, id) {
    await this.forge.http.json("DELETE", this.path(repo, id));
  }

  async ping(repo, id) {
    return this.forge.http.json("POST", `${this.path(repo, id)}/ping`);
  }

  /** A page of deliveries, newest first (`before`, `limit`). */
  async deliveries(repo, id, options = {}) {
    return this.forge.http.json("GET", `${this.path(repo, id)}/deliveries`, { query: options });
  }

  async delivery(repo, id, deliveryId) {
    return this.forge.http.json("GET", `${this.path(repo, id)}/deliveries/${pathOf(deliveryId)}`);
  }

  async redeliver(repo, id, deliveryId) {
    return this.forge.http.json(
      "POST",
      `${this.path(repo, id)}/deliveries/${pathOf(deliveryId)}/redeliver`,
    );
  }
}

// ---------------------------------------------------------------- tokens

export class Tokens {
  constructor(forge) {
    this.forge = forge;
  }

  async list() {
    return this.forge.http.json("GET", "/v1/tokens");
  }

  /** A new token; its secret (`token`) is in this answer only. */
  async create(options) {
    return this.forge.http.json("POST", "/v1/tokens", { json: options });
  }

  async revoke(id) {
    await this.forge.http.json("DELETE", `/v1/tokens/${pathOf(id)}`);
  }
}

export { toWire };
