// The SDK's public surface. The API's own types (`VmView`, `ExecOutput`,
// ...) are generated from the OpenAPI document into ./types.d.ts.

import type * as Api from "./types.js";

export type * from "./types.js";

/**
 * Options accept the API's names (`idle_timeout_secs`) and their
 * camelCase forms (`idleTimeoutSecs`), with `Seconds` for `_secs`
 * (`idleTimeoutSeconds`).
 */
type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<CamelCase<Tail>>}`
  : S;
type Seconds<S extends string> = S extends `${infer Head}Secs` ? `${Head}Seconds` : never;
export type Options<T> = {
  [K in keyof T as K extends string ? K | CamelCase<K> | Seconds<CamelCase<K>> : K]?: T[K];
};

export interface ForgeOptions {
  /** Where the forge answers, e.g. `http://127.0.0.1:3000`; FORGE_URL when absent. */
  baseUrl?: string;
  /** An API token; FORGE_TOKEN when absent. */
  token?: string;
  /** The fetch to use; the platform's when absent. */
  fetch?: typeof fetch;
}

/** A failed call. */
export class ForgeError extends Error {
  /** The HTTP status; 0 when the forge could not be reached. */
  readonly status: number;
  /** The API's error code, `network` when unreachable, `http_<status>` for a non-API answer. */
  readonly code: Api.ErrorCode | "network" | `http_${number}`;
  /** For a request with invalid fields: every problem, each under its field. */
  readonly fields: Api.FieldError[];
}

export class Forge {
  constructor(options?: ForgeOptions);
  readonly vms: Vms;
  readonly git: { readonly repos: Repos };
  readonly snapshots: Snapshots;
  readonly templates: Templates;
  readonly runs: Runs;
  readonly webhooks: Webhooks;
  readonly tokens: Tokens;
  system(): Promise<Api.System>;
  openapi(): Promise<Record<string, unknown>>;
}

export function createForge(options?: ForgeOptions): Forge;
export default Forge;

export interface GitSource {
  /** One of this forge's repositories: `owner/name` or its clone URL. */
  repo: string;
  branch?: string;
}

export type CreateVmOptions = Options<Api.CreateVm> & {
  git?: { repos: [GitSource] | GitSource[] };
};

export interface Created extends Api.VmView {
  vm: Vm;
  vmId: string;
}

export class Vms {
  create(options?: CreateVmOptions): Promise<Created>;
  get(id: string): Promise<Vm>;
  ref(id: string): Vm;
  /** Every VM the token may see, oldest first, through every page. */
  list(filter?: {
    labels?: Record<string, string | null>;
    state?: Api.VmState;
    repo?: string;
  }): Promise<Vm[]>;
  delete(id: string): Promise<void>;
}

export type ExecOptions = Omit<Options<Api.ExecRequest>, "command" | "argv"> & {
  signal?: AbortSignal;
};
export type Command = string | string[] | Options<Api.ExecRequest>;

export class Vm {
  readonly id: string;
  /** The VM as the forge last showed it. */
  view: Partial<Api.VmDetail> & { id: string };
  readonly state: Api.VmState | undefined;
  readonly fs: VmFiles;
  readonly ports: VmPorts;
  refresh(): Promise<Api.VmDetail>;
  startProcess(
    command: string | string[],
    options?: { env?: Record<string, string>; cwd?: string },
  ): Promise<Api.ProcessView>;
  processes(): Promise<Api.ProcessView[]>;
  processLogs(pid: number, options?: { offset?: number }): Promise<string>;
  followProcess(
    pid: number,
    options?: { signal?: AbortSignal },
  ): AsyncGenerator<{ event: string; data: unknown }>;
  signalProcess(pid: number, signal: string): Promise<void>;
  /** Destroy it `ttlSecs` from now whatever it is doing; `null` removes the deadline. */
  setTimeout(ttlSecs: number | null): Promise<Api.VmView>;
  exec(command: Command, options?: ExecOptions): Promise<Api.ExecOutput>;
  execStream(command: Command, options?: ExecOptions): ExecStream;
  fork(options?: Options<Api.ForkRequest>): Promise<{ forks: Vm[] }>;
  pause(options?: Options<Api.PauseRequest>): Promise<Api.VmView>;
  resume(): Promise<Api.CarriedVm>;
  move(options?: { node?: string }): Promise<Api.MovedVm>;
  /** Keeps the VM's disk (and, where it can, memory and processes) as a snapshot. */
  snapshot(options?: Options<Api.CreateSnapshot>): Promise<Api.SnapshotView>;
  delete(): Promise<void>;
  terminal(options?: { cols?: number; rows?: number; WebSocket?: unknown }): Promise<Terminal>;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  text: string;
}

export class ExecStream implements AsyncIterable<OutputChunk> {
  /** How the command ended; rejects with a ForgeError when it could not run. */
  readonly exit: Promise<Api.ExecExit>;
  [Symbol.asyncIterator](): AsyncIterator<OutputChunk>;
  collect(): Promise<Api.ExecOutput>;
  close(): void;
}

export class Terminal implements AsyncIterable<Uint8Array> {
  /** When the socket closed; `reason` is `exited with code N` after the shell exits. */
  readonly closed: Promise<{ code: number; reason: string }>;
  write(data: string | Uint8Array): void;
  resize(cols: number, rows: number): void;
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<Uint8Array>;
}

export class VmFiles {
  readFile(path: string): Promise<Uint8Array>;
  readFile(path: string, options: "utf8" | "utf-8" | { encoding: "utf8" | "utf-8" }): Promise<string>;
  writeFile(path: string, data: string | Uint8Array): Promise<void>;
  readdir(path: string): Promise<Api.FileEntry[]>;
  remove(path: string): Promise<void>;
}

export class VmPorts {
  url(port: number, path?: string): string;
  fetch(port: number, path?: string, init?: RequestInit): Promise<Response>;
  share(port: number, options?: Options<Api.ShareLinkRequest>): Promise<Api.ShareLink>;
}

export type CreateRepoOptions = Options<Api.CreateRepo> & { source?: { url: string } };

export class Repos {
  nameOf(repo: string): string;
  create(options: CreateRepoOptions): Promise<Api.RepoView>;
  list(): Promise<Api.RepoView[]>;
  get(name: string): Promise<Api.RepoView>;
  delete(name: string): Promise<void>;
  branches(name: string): Promise<Api.BranchView[]>;
  contents(name: string, options?: { path?: string; branch?: string }): Promise<Api.Contents>;
  runs(name: string, options?: { before?: number; limit?: number }): Promise<Api.RunView[]>;
  eventPage(
    name: string,
    options?: { after?: number; limit?: number; waitSeconds?: number; signal?: AbortSignal },
  ): Promise<Api.EventPage>;
  events(
    name: string,
    options?: { after?: number; limit?: number; waitSeconds?: number; signal?: AbortSignal },
  ): AsyncGenerator<Api.Event>;
  github(name: string): Promise<Api.GithubLinkView>;
  linkGithub(name: string, repository: string): Promise<Api.GithubLinkView>;
  unlinkGithub(name: string): Promise<void>;
}

export type RunLogEvent =
  | { event: "step"; data: Api.StepEvent }
  | { event: "log"; data: Api.LogEvent }
  | { event: "end"; data: Api.RunEnd };

export class Snapshots {
  list(): Promise<Api.SnapshotView[]>;
  get(key: string): Promise<Api.SnapshotView>;
  delete(key: string): Promise<void>;
}

export type BuildEvent =
  | { event: "log"; data: Api.BuildLog }
  | { event: "step"; data: Api.BuildStep }
  | { event: "done"; data: Api.TemplateView };

export class Templates {
  /** Creates or changes a template and builds it unless its spec was built before. */
  build(spec: Options<Api.TemplateSpec>): Promise<Api.TemplateView>;
  list(): Promise<Api.TemplateView[]>;
  get(name: string): Promise<Api.TemplateView>;
  delete(name: string): Promise<void>;
  log(name: string): Promise<string>;
  follow(name: string, options?: { signal?: AbortSignal }): AsyncGenerator<BuildEvent>;
}

export class Runs {
  get(id: number): Promise<Api.RunDetail>;
  logs(id: number): Promise<string>;
  follow(id: number, options?: { signal?: AbortSignal }): AsyncGenerator<RunLogEvent>;
  /** Cancels a queued or running run; answers the run (still ending when the answer was 202). */
  cancel(id: number): Promise<Api.RunView>;
  /** Queues a new run of the run's commit with the same steps; answers the new run. */
  rerun(id: number): Promise<Api.RunView>;
}

export class Webhooks {
  list(repo: string): Promise<Api.WebhookView[]>;
  create(repo: string, options: Options<Api.CreateWebhook>): Promise<Api.WebhookView>;
  get(repo: string, id: string): Promise<Api.WebhookView>;
  update(repo: string, id: string, changes: Options<Api.UpdateWebhook>): Promise<Api.WebhookView>;
  delete(repo: string, id: string): Promise<void>;
  ping(repo: string, id: string): Promise<Api.Queued>;
  deliveries(repo: string, id: string, options?: { before?: number; limit?: number }): Promise<Api.DeliveryPage>;
  delivery(repo: string, id: string, deliveryId: string): Promise<Api.DeliveryView>;
  redeliver(repo: string, id: string, deliveryId: string): Promise<Api.Queued>;
}

export class Tokens {
  list(): Promise<Api.TokenView[]>;
  create(options: Options<Api.CreateToken>): Promise<Api.TokenView>;
  revoke(id: string): Promise<void>;
}
