"""The forge API's types, generated from sdk/openapi.json by
scripts/gen_types.py. Do not edit: run `python3 scripts/gen_types.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Union

__all__ = [
    "AttemptView",
    "Author",
    "BranchReview",
    "BranchView",
    "BuildLog",
    "BuildStep",
    "Bytes",
    "CarriedVm",
    "CommitView",
    "Contents",
    "ContentsDir",
    "ContentsFile",
    "CreateNode",
    "CreateRepo",
    "CreateSnapshot",
    "CreateToken",
    "CreateVm",
    "CreateWebhook",
    "DeliveryPage",
    "DeliveryState",
    "DeliveryView",
    "DevServerSpec",
    "DevServerState",
    "DevServerStatus",
    "EgressUsage",
    "EntryKind",
    "ErrorBody",
    "ErrorCode",
    "ErrorDetail",
    "Event",
    "EventPage",
    "ExecExit",
    "ExecFailure",
    "ExecOutput",
    "ExecRequest",
    "ExecText",
    "FieldError",
    "FileEntry",
    "FileKind",
    "Finding",
    "FindingSeverity",
    "FindingTool",
    "ForkRequest",
    "Forks",
    "GithubLinkRequest",
    "GithubLinkView",
    "GithubOverview",
    "Installation",
    "Kept",
    "LogEvent",
    "MoveRequest",
    "MovedVm",
    "NodeReport",
    "NodeReportAnswer",
    "NodeState",
    "NodeView",
    "PauseRequest",
    "Persistence",
    "PersistenceKind",
    "ProcessState",
    "ProcessView",
    "Queued",
    "RefSyncState",
    "RefView",
    "RepoView",
    "ReviewComment",
    "ReviewVerdict",
    "RunAnalysis",
    "RunDetail",
    "RunEnd",
    "RunReview",
    "RunState",
    "RunView",
    "SandboxLimits",
    "SandboxQueue",
    "SandboxSystem",
    "ShareLink",
    "ShareLinkRequest",
    "SignalRequest",
    "SnapshotView",
    "StartProcess",
    "StepEvent",
    "StepState",
    "StepView",
    "System",
    "TemplatePoolStatus",
    "TemplateSpec",
    "TemplateState",
    "TemplateView",
    "TerminalTicket",
    "TimeoutRequest",
    "TokenScope",
    "TokenView",
    "TreeEntry",
    "UpdateWebhook",
    "VmDetail",
    "VmState",
    "VmStats",
    "VmView",
    "WarmPoolStatus",
    "WebhookAccepted",
    "WebhookView",
]


@dataclass
class AttemptView:
    """One attempt to deliver."""
    attempt: int
    duration_ms: int
    request_headers: List[List[str]]
    """`[[name, value]]`, signatures redacted."""
    response_body: str
    """The first 4 KiB, as text (invalid UTF-8 replaced)."""
    response_body_truncated: bool
    response_headers: List[List[str]]
    """`[[name, value]]`."""
    started_at: str
    error: Optional[Optional[str]] = None
    next_attempt_at: Optional[Optional[str]] = None
    response_status: Optional[Optional[int]] = None


@dataclass
class Author:
    email: str
    name: str


@dataclass
class BranchReview:
    """
    The forge's own review of a branch's run against the default branch,
    as the `review.posted` event that recorded it says.
    """
    base_branch: str
    """The default branch and its commit the change was read against."""
    base_commit: str
    body: str
    """The review in Markdown (as a pull request would get it)."""
    comments: List["ReviewComment"]
    """Comments on lines of the change (tools' findings, the model's)."""
    verdict: "ReviewVerdict"
    model: Optional[Optional[str]] = None
    """The model that was asked, when one is configured."""
    model_error: Optional[Optional[str]] = None
    """Why the model's review is missing, when it failed."""
    model_summary: Optional[Optional[str]] = None
    """What the model said."""
    posted_at: Optional[str] = None
    """When it was recorded; filled from the event."""


@dataclass
class BranchView:
    """`GET /v1/repos/{owner}/{name}/branches`: each branch and its head."""
    commit: "CommitView"
    name: str
    sandbox: Optional[Optional[str]] = None
    """
    The VM the branch's pipelines run in, once a push made one (its
    forks are other VMs, whose `parent` names it).
    """


@dataclass
class BuildLog:
    """
    Output of a build, as `GET /v1/templates/{name}/build?follow=true`
    sends it (`event: log`).
    """
    text: str


@dataclass
class BuildStep:
    """
    One step of a build, as `GET /v1/templates/{name}/build?follow=true`
    sends it (`event: step`).
    """
    index: int
    """From 1."""
    name: str
    total: int


# Raw bytes (a file's content): a string of any bytes in the document.
Bytes = str


@dataclass
class CarriedVm:
    """A VM after a fork or a resume, and what it kept of its source."""
    backend: str
    """`container` or `microvm`."""
    created_at: str
    id: str
    kept: List["Kept"]
    mem_mib: int
    persistence: "Persistence"
    state: "VmState"
    vcpus: int
    branch: Optional[Optional[str]] = None
    dev_server: Optional[Optional["DevServerStatus"]] = None
    expires_at: Optional[Optional[str]] = None
    """
    When the VM is destroyed whatever its activity (RFC 3339); `null`:
    never.
    """
    idle_timeout_secs: Optional[Optional[int]] = None
    labels: Optional[Dict[str, str]] = None
    note: Optional[Optional[str]] = None
    """Why less than everything was kept, when the backend knows."""
    parent: Optional[Optional[str]] = None
    """The VM it was forked from."""
    preview_url: Optional[Optional[str]] = None
    """Where the dev server is seen, when the VM has one."""
    repo: Optional[Optional[str]] = None
    """`owner/name` of the repository checked out in it."""
    snapshot: Optional[Optional[str]] = None
    """The snapshot (id) it started from."""
    stored_bytes: Optional[Optional[int]] = None
    """
    Paused to disk on a node: the size in bytes of its copy in the
    snapshot store (`forge serve --snapshot-store`), once uploaded.
    With it, the VM resumes on another node if its own is lost.
    """
    template: Optional[Optional[str]] = None
    """The template it started from."""


@dataclass
class CommitView:
    """A commit as the API shows it."""
    author: "Author"
    id: str
    message: str
    time: str
    """Author time, RFC 3339."""


@dataclass
class ContentsDir:
    """A directory: directories first, then the rest, each sorted by name."""
    branch: str
    entries: List["TreeEntry"]
    path: str
    type: Literal["dir"]


@dataclass
class ContentsFile:
    """
    A file. A file over 1 MiB is `truncated`: only its first MiB is
    read, and `size` is the whole file's.
    """
    binary: bool
    branch: str
    path: str
    size: int
    truncated: bool
    type: Literal["file"]
    text: Optional[Optional[str]] = None
    """`None` for binary content."""


# `GET /v1/repos/{owner}/{name}/contents?branch=&path=`: what a path
# names at the head of a branch.
Contents = Union["ContentsDir", "ContentsFile"]


@dataclass
class CreateNode:
    """`POST /v1/nodes`."""
    name: str
    """1 to 63 of `a-z`, `0-9` and `-`."""
    labels: Optional[Optional[Dict[str, str]]] = None
    """
    The node's labels for placement, whatever it reports; absent: the
    labels it reports. A node's word is its own: set them here when a
    label decides where a tenant's sandboxes may run.
    """
    max_memory_mib: Optional[Optional[int]] = None
    """
    Most memory placement counts on the node, in MiB, whatever it
    reports; absent: what it reports.
    """


@dataclass
class CreateRepo:
    """`POST /v1/repos`: an empty repository, or one imported from `import_url`."""
    name: str
    """`owner/name`."""
    default_branch: Optional[Optional[str]] = None
    import_url: Optional[Optional[str]] = None


@dataclass
class CreateSnapshot:
    """`POST /v1/vms/{id}/snapshots`."""
    name: Optional[Optional[str]] = None
    """
    Unique across the forge: letters, digits, `.`, `_`, `-` (at most
    63). `POST /v1/vms {"snapshot"}` takes the name or the id.
    """


@dataclass
class CreateToken:
    """`POST /v1/tokens`."""
    name: str
    scopes: List["TokenScope"]
    """At least one."""
    repo: Optional[Optional[str]] = None
    """`owner/name`: limit the token to this repository."""


@dataclass
class CreateVm:
    """`POST /v1/vms`. Every field is optional; the server picks the defaults."""
    branch: Optional[Optional[str]] = None
    """Needs `repo`; the repository's default branch when absent."""
    dev_server: Optional[Optional["DevServerSpec"]] = None
    disk_mib: Optional[Optional[int]] = None
    env: Optional[Dict[str, str]] = None
    idle_timeout_secs: Optional[Optional[int]] = None
    labels: Optional[Dict[str, str]] = None
    """
    Up to 32 `key: value` pairs to find the VM by (`GET
    /v1/vms?label=key:value`); forks inherit them. Keys: letters,
    digits, `.`, `_`, `-`, `/` (at most 63); values at most 256 bytes.
    """
    mem_mib: Optional[Optional[int]] = None
    node_labels: Optional[Dict[str, str]] = None
    """
    Labels the sandbox node that runs it must have (`forge node run
    --label`; every node also has `backend`: `container` or `microvm`),
    e.g. `{"zone": "a"}`. Not with `snapshot` or `template`: those VMs
    run on their snapshot's node.
    """
    persistence: Optional[Optional["Persistence"]] = None
    repo: Optional[Optional[str]] = None
    """`owner/name`: `/workspace` holds a checkout of it."""
    snapshot: Optional[Optional[str]] = None
    """
    Start from this snapshot (its name or id): its files and, where it
    kept them, its running processes. Sizes come from it.
    """
    template: Optional[Optional[str]] = None
    """
    Start from this template (its name) instead of the default image;
    sizes, environment and server come from it.
    """
    ttl_secs: Optional[Optional[int]] = None
    """
    Destroy the VM this many seconds after it is created, whatever its
    activity (at most 30 days); `POST /v1/vms/{id}/timeout` moves it.
    """
    vcpus: Optional[Optional[int]] = None


@dataclass
class CreateWebhook:
    """`POST …/webhooks`."""
    events: List[str]
    """Event names, or `"*"`."""
    url: str
    active: Optional[Optional[bool]] = None
    branches: Optional[List[str]] = None
    """Branch globs; empty: every branch."""
    paths: Optional[List[str]] = None
    """Path globs; empty: every path."""
    secret: Optional[Optional[str]] = None
    """Generated when absent."""


@dataclass
class DeliveryPage:
    """`GET …/deliveries`: newest first."""
    deliveries: List["DeliveryView"]
    next_before: Optional[Optional[int]] = None
    """Pass as `before` for the next (older) page; `None` on the last one."""


# An outbound webhook delivery (`webhook_deliveries.status`).
DeliveryState = Literal["pending", "delivered", "failed"]


@dataclass
class DeliveryView:
    attempt_log: List["AttemptView"]
    attempts: int
    created_at: str
    event_type: str
    id: str
    """The `webhook-id` header of its requests."""
    seq: int
    """Pass as `before` for older deliveries."""
    status: "DeliveryState"
    event_id: Optional[Optional[int]] = None
    """`None` for a ping."""
    next_attempt_at: Optional[Optional[str]] = None
    """Set while `pending`."""
    payload: Optional[Any] = None
    """Only when one delivery is read."""


@dataclass
class DevServerSpec:
    """A dev server to start, watch and restart in the VM."""
    command: str
    port: int


# A VM's dev server, as its supervisor last saw it (memory only).
DevServerState = Literal["starting", "running", "dead", "backoff", "paused"]


@dataclass
class DevServerStatus:
    """What the API shows of a dev server."""
    command: str
    port: int
    restarts: int
    state: "DevServerState"
    last_output: Optional[Optional[str]] = None
    """The end of its output when it last died."""
    pid: Optional[Optional[int]] = None
    """Its session id inside the sandbox, while started."""
    restart_in_ms: Optional[Optional[int]] = None
    """Milliseconds until the next start, in `backoff`."""


@dataclass
class EgressUsage:
    """The VM's traffic through the egress proxy since the forge started."""
    bytes_in: int
    bytes_out: int
    connections: int
    refused: int


# What a directory entry is.
EntryKind = Literal["dir", "file", "symlink", "submodule"]


@dataclass
class ErrorBody:
    error: "ErrorDetail"


# What went wrong, for programs, with the HTTP status it comes with.
ErrorCode = Literal["bad_request", "unauthorized", "forbidden", "cross_origin", "push_refused", "not_found", "conflict", "bad_pack", "payload_too_large", "unsupported_media_type", "import_failed", "capacity", "quota", "unavailable", "sandbox_error", "bad_gateway", "github_unavailable", "github_not_configured", "agent_unresponsive", "internal"]


@dataclass
class ErrorDetail:
    code: "ErrorCode"
    message: str
    fields: Optional[List["FieldError"]] = None
    """
    For a request whose fields are invalid, every problem at once, each
    under the field it concerns; `message` says them all too.
    """


@dataclass
class Event:
    """
    One event. `kind` is open-ended (`push`, `branch.created`,
    `sync.diverged`, `webhook.disabled`, ...: the README lists them), and
    `payload` is the kind's own object, as webhooks deliver it.
    """
    created_at: str
    """RFC 3339."""
    id: int
    """The cursor: strictly increasing across the whole forge."""
    kind: str
    payload: Any
    actor: Optional[Optional[str]] = None
    """The token that caused the event."""
    ref: Optional[Optional[str]] = None
    repo: Optional[Optional[str]] = None
    """`owner/name` when the event happened."""
    repo_id: Optional[Optional[str]] = None
    """
    `null` for an event of the forge itself: a sandbox created without
    a repository.
    """


@dataclass
class EventPage:
    """A page of events."""
    events: List["Event"]
    next_cursor: int
    """Pass as `after` to continue."""


@dataclass
class ExecExit:
    """
    How a command ended: the answer's head, and the `exit` event of a
    streamed exec.
    """
    duration_ms: int
    exit_code: int
    """128 + the signal when a signal ended it."""
    timed_out: bool
    truncated: bool
    """Output beyond the limit was dropped."""


@dataclass
class ExecFailure:
    """The `error` event of a streamed exec."""
    message: str


@dataclass
class ExecOutput:
    """The answer of a (not streamed) exec."""
    duration_ms: int
    exit_code: int
    """128 + the signal when a signal ended it."""
    stderr: str
    stdout: str
    """Invalid UTF-8 replaced."""
    timed_out: bool
    truncated: bool
    """Output beyond the limit was dropped."""


@dataclass
class ExecRequest:
    """
    `POST /v1/vms/{id}/exec`: exactly one of `command` (a shell script)
    and `argv`.
    """
    argv: Optional[Optional[List[str]]] = None
    command: Optional[Optional[str]] = None
    cwd: Optional[Optional[str]] = None
    env: Optional[Dict[str, str]] = None
    stdin: Optional[Optional[str]] = None
    timeout_secs: Optional[Optional[int]] = None


@dataclass
class ExecText:
    """The `stdout` and `stderr` events of a streamed exec."""
    text: str


@dataclass
class FieldError:
    """What is wrong with one field of a request."""
    field: str
    """The field's name in the request body (`url`, `events`, …)."""
    message: str


@dataclass
class FileEntry:
    """One entry of a directory listing (`GET /v1/vms/{id}/files/{dir}/`)."""
    gid: int
    kind: "FileKind"
    mode: int
    """Permission bits (`st_mode & 0o7777`)."""
    modified_unix_ms: int
    name: str
    size: int
    uid: int
    link_target: Optional[Optional[str]] = None
    """Where a symlink points (it is never followed)."""


FileKind = Literal["file", "dir", "symlink", "other"]


@dataclass
class Finding:
    """One problem a tool reported at a place in the checkout."""
    message: str
    path: str
    """Relative to the repository's root, `/`-separated."""
    severity: "FindingSeverity"
    tool: "FindingTool"
    line: Optional[Optional[int]] = None
    """1-based; `None` when the tool named only the file."""
    rule: Optional[Optional[str]] = None
    """The tool's rule or code (`TS2322`, `no-debugger`), when it gave one."""


FindingSeverity = Literal["error", "warning", "info"]


# Which tool reported a finding.
FindingTool = Literal["tsc", "eslint", "biome", "bun_test"]


@dataclass
class ForkRequest:
    """`POST /v1/vms/{id}/fork`."""
    count: Optional[Optional[int]] = None
    labels: Optional[Dict[str, str]] = None
    """Set on every copy, over the labels it inherits from its parent."""
    ttl_secs: Optional[Optional[int]] = None
    """The copies' deadline from now; without it they keep the parent's."""


@dataclass
class Forks:
    """The answer to a fork."""
    forks: List["CarriedVm"]


@dataclass
class GithubLinkRequest:
    """`POST /v1/repos/{owner}/{name}/github`."""
    repository: str
    """`owner/name` on GitHub."""


@dataclass
class GithubLinkView:
    """A forge repository's link to GitHub and each ref's sync state."""
    installation_id: int
    linked_at: str
    refs: List["RefView"]
    repository: str
    """`owner/name` on GitHub."""
    repo: Optional[Optional[str]] = None
    """The forge repository, `owner/name`: only in `GET /v1/github/repos`."""


@dataclass
class GithubOverview:
    """`GET /v1/github`: the App's public settings and its installations."""
    api_url: str
    app_id: int
    git_url: str
    installations: List["Installation"]
    reconcile_secs: int


@dataclass
class Installation:
    account: str
    created_at: str
    id: int
    """GitHub's installation id."""


# What a fork or a resume carried over.
Kept = Literal["disk", "memory", "processes"]


@dataclass
class LogEvent:
    """The `log` event: text a step wrote."""
    position: int
    text: str


@dataclass
class MoveRequest:
    """`POST /v1/vms/{id}/move`: where a VM paused to disk goes."""
    node: Optional[Optional[str]] = None
    """
    The node's name; by default the up node (other than its own, of
    the same backend) with the most memory free.
    """


@dataclass
class MovedVm:
    """A VM moved to another node and resumed there."""
    backend: str
    """`container` or `microvm`."""
    created_at: str
    id: str
    kept: List["Kept"]
    mem_mib: int
    node: str
    """The node that holds it now."""
    persistence: "Persistence"
    state: "VmState"
    vcpus: int
    branch: Optional[Optional[str]] = None
    dev_server: Optional[Optional["DevServerStatus"]] = None
    expires_at: Optional[Optional[str]] = None
    """
    When the VM is destroyed whatever its activity (RFC 3339); `null`:
    never.
    """
    idle_timeout_secs: Optional[Optional[int]] = None
    labels: Optional[Dict[str, str]] = None
    note: Optional[Optional[str]] = None
    """Why less than everything was kept, when the backend knows."""
    parent: Optional[Optional[str]] = None
    """The VM it was forked from."""
    preview_url: Optional[Optional[str]] = None
    """Where the dev server is seen, when the VM has one."""
    repo: Optional[Optional[str]] = None
    """`owner/name` of the repository checked out in it."""
    snapshot: Optional[Optional[str]] = None
    """The snapshot (id) it started from."""
    stored_bytes: Optional[Optional[int]] = None
    """
    Paused to disk on a node: the size in bytes of its copy in the
    snapshot store (`forge serve --snapshot-store`), once uploaded.
    With it, the VM resumes on another node if its own is lost.
    """
    template: Optional[Optional[str]] = None
    """The template it started from."""


@dataclass
class NodeReport:
    """`POST /v1/nodes/report`: what a node says of itself, every 2 s."""
    address: str
    """Where the control plane reaches its sandboxes, `host:port`."""
    backend: str
    disk_bytes: int
    free_disk_bytes: int
    free_memory_bytes: int
    key: str
    """
    The key the control plane presents there; the node makes a new one
    each time it starts.
    """
    memory_bytes: int
    vcpus: int
    labels: Optional[Dict[str, str]] = None
    tls_sha256: Optional[Optional[str]] = None
    """
    The SHA-256 (hex) of the self-signed certificate it serves TLS
    with, made anew each time it starts; absent: it serves in clear,
    which the control plane accepts only on a loopback address.
    """


@dataclass
class NodeReportAnswer:
    """The answer to a report."""
    node: str
    """The node's name, as the admin added it."""
    report_every_secs: int
    """When to report next, in seconds."""


# Whether a node reports.
NodeState = Literal["new", "up", "lost"]


@dataclass
class NodeView:
    available_mib: int
    """
    Memory a new sandbox may take here, in MiB: the smaller of what the
    node reported free and its memory less what is committed.
    """
    committed_mib: int
    """
    Memory of the VMs placed on it that hold memory (running or paused
    in memory), in MiB.
    """
    created_at: str
    disk_bytes: int
    free_disk_bytes: int
    free_memory_bytes: int
    """What the node last reported free, at most the cap."""
    id: str
    labels: Dict[str, str]
    """Its labels for placement: the admin's when set, else its own."""
    labels_set: bool
    """Whether the admin set the labels (the node's own are ignored)."""
    memory_bytes: int
    """
    Its memory as placement counts it: what it reported, at most the
    cap.
    """
    name: str
    sandboxes: int
    """Sandboxes placed on it (VMs, their snapshots and pooled copies)."""
    state: "NodeState"
    vcpus: int
    address: Optional[Optional[str]] = None
    """Where it serves sandboxes (`host:port`), once it reported."""
    backend: Optional[Optional[str]] = None
    """`container` or `microvm`, once it reported."""
    last_seen_at: Optional[Optional[str]] = None
    max_memory_mib: Optional[Optional[int]] = None
    """The admin's cap on the memory placement counts here, in MiB."""
    tls_sha256: Optional[Optional[str]] = None
    """
    The SHA-256 (hex) of the certificate it serves TLS with; `null`: in
    clear (on loopback only).
    """
    token: Optional[Optional[str]] = None
    """
    The node's token (`forge node run --token`): only in the answer to
    creation, stored as a hash.
    """


@dataclass
class PauseRequest:
    """`POST /v1/vms/{id}/pause`; no body is a pause in memory."""
    to_disk: Optional[bool] = None


@dataclass
class Persistence:
    """What becomes of an idle VM: `{"type": "persistent" | "ephemeral"}`."""
    type: "PersistenceKind"


PersistenceKind = Literal["ephemeral", "persistent"]


# Whether a background process still runs.
ProcessState = Literal["running", "exited"]


@dataclass
class ProcessView:
    """A background process of a VM."""
    command: str
    output_bytes: int
    """Bytes it printed (stdout and stderr together)."""
    output_dropped: int
    """Of those, the oldest no longer kept (the VM keeps the last MiB)."""
    pid: int
    started_at: str
    """RFC 3339."""
    state: "ProcessState"
    exit_code: Optional[Optional[int]] = None
    """Once exited: the code, or 128 + the signal that ended it."""


@dataclass
class Queued:
    """The answer to a ping or a redelivery: the delivery that was queued."""
    delivery_id: str


# How a ref of a repository linked to GitHub compares with GitHub's
# (`github_refs.state`).
RefSyncState = Literal["in_sync", "ahead", "behind", "diverged", "error"]


@dataclass
class RefView:
    """What the last sync saw of one ref."""
    last_sync_at: str
    ref_name: str
    state: "RefSyncState"
    forge_sha: Optional[Optional[str]] = None
    github_sha: Optional[Optional[str]] = None
    last_error: Optional[Optional[str]] = None
    synced_sha: Optional[Optional[str]] = None
    """The last commit both sides agreed on."""


@dataclass
class RepoView:
    clone_url: str
    created_at: str
    default_branch: str
    id: str
    name: str
    """`owner/name`."""


@dataclass
class ReviewComment:
    """A comment on a line of a change (the new side)."""
    body: str
    """Markdown."""
    line: int
    path: str


# The review event the bot posted on a pull request
# (`github_reviews.verdict`), spelled as GitHub's API spells it.
ReviewVerdict = Literal["COMMENT", "APPROVE", "REQUEST_CHANGES"]


@dataclass
class RunAnalysis:
    """
    What the analysis after a run's steps found: the project's own
    TypeScript compiler, ESLint and Biome when it uses them, and the
    failing tests and compiler errors in the steps' logs.
    """
    findings: List["Finding"]
    notes: List[str]
    """What went wrong on the way (a tool that timed out or crashed)."""
    tools: List[str]
    """The tools that ran (`tsc`, `ESLint`, `Biome`)."""


@dataclass
class RunDetail:
    """`GET /v1/runs/{id}`: the run and the pull-request review it decided."""
    branch: str
    commit_id: str
    created_at: str
    event_id: int
    """The push (or pipeline request) event that asked for it."""
    id: int
    repo_id: str
    repo_name: str
    """`owner/name` when the run was queued."""
    state: "RunState"
    steps: List["StepView"]
    analysis: Optional[Optional["RunAnalysis"]] = None
    branch_review: Optional[Optional["BranchReview"]] = None
    commit: Optional[Optional["CommitView"]] = None
    error: Optional[Optional[str]] = None
    finished_at: Optional[Optional[str]] = None
    plan_commit: Optional[Optional[str]] = None
    """The commit of `plan_ref` the steps were read from."""
    plan_ref: Optional[Optional[str]] = None
    """The branch whose steps ran, when not the commit's own (a review)."""
    review: Optional[Optional["RunReview"]] = None
    started_at: Optional[Optional[str]] = None
    variables: Optional[Dict[str, str]] = None
    """Set in every step's environment (`git push -o ci.variable=K=V`)."""
    vm_id: Optional[Optional[str]] = None


@dataclass
class RunEnd:
    """The `end` event: the run finished."""
    state: "RunState"
    error: Optional[Optional[str]] = None


@dataclass
class RunReview:
    """The review the GitHub bot posted (or claimed) for a run."""
    github_repo: str
    """`owner/name` on GitHub."""
    head_sha: str
    number: int
    verdict: "ReviewVerdict"
    posted_at: Optional[Optional[str]] = None
    """`None` while the review is claimed but not yet posted."""


# A pipeline run's lifecycle (`runs.state`).
RunState = Literal["queued", "running", "passed", "failed", "cancelled", "error"]


@dataclass
class RunView:
    """A run and its steps, as the list shows it."""
    branch: str
    commit_id: str
    created_at: str
    event_id: int
    """The push (or pipeline request) event that asked for it."""
    id: int
    repo_id: str
    repo_name: str
    """`owner/name` when the run was queued."""
    state: "RunState"
    steps: List["StepView"]
    error: Optional[Optional[str]] = None
    finished_at: Optional[Optional[str]] = None
    plan_commit: Optional[Optional[str]] = None
    """The commit of `plan_ref` the steps were read from."""
    plan_ref: Optional[Optional[str]] = None
    """The branch whose steps ran, when not the commit's own (a review)."""
    started_at: Optional[Optional[str]] = None
    variables: Optional[Dict[str, str]] = None
    """Set in every step's environment (`git push -o ci.variable=K=V`)."""
    vm_id: Optional[Optional[str]] = None


@dataclass
class SandboxLimits:
    max_disk_mib: int
    max_file_bytes: int
    max_fork_count: int
    max_live: int
    max_mem_mib: int
    max_vcpus: int
    max_live_mem_mib: Optional[Optional[int]] = None
    """`None`: no cap on the memory of live VMs together."""
    max_live_per_token: Optional[Optional[int]] = None


@dataclass
class SandboxQueue:
    max_wait_secs: int
    waiting: int


@dataclass
class SandboxSystem:
    """The sandbox backend, its limits and its queue."""
    limits: "SandboxLimits"
    queue: "SandboxQueue"
    reason: str
    backend: Optional[Optional[str]] = None
    """`None` when no backend can run; `reason` says why."""
    image: Optional[Optional[str]] = None
    """The guest image's root directory."""
    warm_pool: Optional["WarmPoolStatus"] = None
    """Sandboxes kept ready for creates (`--warm-pool`)."""


@dataclass
class ShareLink:
    """The answer to a [`ShareLinkRequest`]."""
    ttl_secs: int
    url: str
    expires_at: Optional[Optional[str]] = None
    """RFC 3339."""


@dataclass
class ShareLinkRequest:
    """
    `POST /v1/vms/{id}/ports/{port}/links`: a link to the VM's server on
    `port` that works without a token for `ttl_secs` (default an hour).
    """
    ttl_secs: Optional[Optional[int]] = None


@dataclass
class SignalRequest:
    """
    `POST /v1/vms/{id}/processes/{pid}/signal`: `TERM`, `KILL`, `INT`,
    `HUP`, `QUIT`, `USR1`, `USR2`, `STOP` or `CONT` (with or without `SIG`).
    """
    signal: str


@dataclass
class SnapshotView:
    """A snapshot as every snapshot endpoint shows it."""
    backend: str
    """`container` or `microvm`."""
    created_at: str
    id: str
    kept: List["Kept"]
    """
    What it holds: always `disk`; `memory` and `processes` when the
    backend could save them (VMs from it then resume its processes).
    """
    mem_mib: int
    vcpus: int
    """Every VM started from it has these."""
    branch: Optional[Optional[str]] = None
    disk_bytes: Optional[Optional[int]] = None
    """Bytes its disk layer takes, when the backend knows."""
    name: Optional[Optional[str]] = None
    note: Optional[Optional[str]] = None
    """Why less than everything was kept, when known."""
    repo: Optional[Optional[str]] = None
    """`owner/name` of the repository the source VM had checked out."""
    saved_bytes: Optional[Optional[int]] = None
    """Bytes its saved memory and processes take."""
    source_vm: Optional[Optional[str]] = None
    """The VM it was taken from (it may be gone since)."""
    template: Optional[Optional[str]] = None
    """The template whose image it is, if any: deleted with its template."""


@dataclass
class StartProcess:
    """
    `POST /v1/vms/{id}/processes`: a background process, exactly one of
    `command` (a shell script) and `argv`.
    """
    argv: Optional[Optional[List[str]]] = None
    command: Optional[Optional[str]] = None
    cwd: Optional[Optional[str]] = None
    env: Optional[Dict[str, str]] = None


@dataclass
class StepEvent:
    """The `step` event: a step started or changed status."""
    name: str
    position: int
    status: "StepState"
    duration_ms: Optional[Optional[int]] = None
    exit_code: Optional[Optional[int]] = None


# A step of a run (`run_steps.status`).
StepState = Literal["pending", "running", "passed", "failed", "skipped", "cancelled"]


@dataclass
class StepView:
    """A step of a run (its log is read from `/logs`)."""
    command: str
    name: str
    position: int
    status: "StepState"
    duration_ms: Optional[Optional[int]] = None
    exit_code: Optional[Optional[int]] = None


@dataclass
class System:
    """`GET /v1/system`."""
    sandboxes: "SandboxSystem"
    version: str


@dataclass
class TemplatePoolStatus:
    """A template's warm pool."""
    ready: int
    target: int
    template: str


@dataclass
class TemplateSpec:
    """
    `POST /v1/templates`: what to build. Every list runs in this order:
    `apt`, `pip`, `npm`, then `run`; all of it in a sandbox, whose downloads
    go through the egress proxy and its allow-list.
    """
    name: str
    """Letters, digits, `.`, `_`, `-` (at most 63)."""
    apt: Optional[List[str]] = None
    """Debian packages (`apt-get install --no-install-recommends`)."""
    base: Optional[Optional[str]] = None
    """
    `debian-bookworm` (the forge's own image, with git, Node.js, npm and
    Bun) when absent.
    """
    disk_mib: Optional[Optional[int]] = None
    env: Optional[Dict[str, str]] = None
    """Environment of the build's commands and of every VM from it."""
    mem_mib: Optional[Optional[int]] = None
    npm: Optional[List[str]] = None
    """npm packages installed globally (`npm install -g`)."""
    pip: Optional[List[str]] = None
    """Python packages (`pip install`; Debian's `python3-pip` is added)."""
    pool: Optional[Optional[int]] = None
    """
    Sandboxes from this template to keep created and paused, handed
    out by creates at once (at most 50; `--warm-pool <name>=N` may ask
    for more). Not part of what builds: changing it rebuilds nothing.
    """
    run: Optional[List[str]] = None
    """Shell commands (`/bin/sh -c`), run in `workdir`, each must succeed."""
    start: Optional[Optional["DevServerSpec"]] = None
    vcpus: Optional[Optional[int]] = None
    """Sizes of the build and of every VM from the template."""
    warm: Optional[bool] = None
    """
    Boot once, run `start` until its port answers, and keep that
    (memory and processes) as the image: VMs answer on the port at once.
    """
    workdir: Optional[Optional[str]] = None
    """
    An absolute path: created, the build's `run` and `start` commands
    run there, and so do a VM's commands that name no `cwd`.
    """


# A template's build (`template_builds.state`).
TemplateState = Literal["building", "ready", "failed"]


@dataclass
class TemplateView:
    """A template as every template endpoint shows it."""
    created_at: str
    name: str
    spec: "TemplateSpec"
    spec_hash: str
    """The hash of what the spec builds (not its name): one build per hash."""
    state: "TemplateState"
    updated_at: str
    build_ms: Optional[Optional[int]] = None
    error: Optional[Optional[str]] = None
    """Why the build failed."""
    reused: Optional[bool] = None
    """On `POST`: an earlier build of the same spec is used, nothing builds."""
    snapshot: Optional[Optional["SnapshotView"]] = None


@dataclass
class TerminalTicket:
    """
    `POST /v1/vms/{id}/terminal/tickets`: a one-time ticket that opens the
    VM's terminal WebSocket (`?ticket=`) without a token in the URL.
    """
    expires_in_secs: int
    ticket: str


@dataclass
class TimeoutRequest:
    """
    `POST /v1/vms/{id}/timeout`: the VM's deadline becomes `ttl_secs` from
    now (longer or shorter than it was); `null` removes it.
    """
    ttl_secs: Optional[Optional[int]] = None
    """
    Required; `null` to remove the deadline (a missing field is an
    error, not a removal).
    """


# What a token may do.
TokenScope = Literal["admin", "repo:write", "repo:read"]


@dataclass
class TokenView:
    created_at: str
    id: str
    name: str
    scopes: List["TokenScope"]
    last_used_at: Optional[Optional[str]] = None
    """
    When it was last presented, to the minute: a use within a minute of
    the one recorded is not written again.
    """
    repo: Optional[Optional[str]] = None
    """The repository it is limited to, `owner/name`."""
    revoked_at: Optional[Optional[str]] = None
    token: Optional[Optional[str]] = None
    """The secret: only in the answer to creation, never stored."""


@dataclass
class TreeEntry:
    """One entry of a directory listing."""
    kind: "EntryKind"
    name: str


@dataclass
class UpdateWebhook:
    """`PATCH …/webhooks/{id}`: what is absent stays as it is."""
    active: Optional[Optional[bool]] = None
    branches: Optional[Optional[List[str]]] = None
    events: Optional[Optional[List[str]]] = None
    paths: Optional[Optional[List[str]]] = None
    rotate_secret: Optional[bool] = None
    """
    Replace the secret (with `secret`, or a generated one); the old one
    keeps signing for the rotation window.
    """
    secret: Optional[Optional[str]] = None
    url: Optional[Optional[str]] = None


@dataclass
class VmDetail:
    """
    `GET /v1/vms/{id}`: the view, usage while it holds resources, and its
    egress counters.
    """
    backend: str
    """`container` or `microvm`."""
    created_at: str
    egress: "EgressUsage"
    id: str
    mem_mib: int
    persistence: "Persistence"
    state: "VmState"
    vcpus: int
    branch: Optional[Optional[str]] = None
    dev_server: Optional[Optional["DevServerStatus"]] = None
    expires_at: Optional[Optional[str]] = None
    """
    When the VM is destroyed whatever its activity (RFC 3339); `null`:
    never.
    """
    idle_timeout_secs: Optional[Optional[int]] = None
    labels: Optional[Dict[str, str]] = None
    parent: Optional[Optional[str]] = None
    """The VM it was forked from."""
    preview_url: Optional[Optional[str]] = None
    """Where the dev server is seen, when the VM has one."""
    repo: Optional[Optional[str]] = None
    """`owner/name` of the repository checked out in it."""
    snapshot: Optional[Optional[str]] = None
    """The snapshot (id) it started from."""
    stats: Optional[Optional["VmStats"]] = None
    stored_bytes: Optional[Optional[int]] = None
    """
    Paused to disk on a node: the size in bytes of its copy in the
    snapshot store (`forge serve --snapshot-store`), once uploaded.
    With it, the VM resumes on another node if its own is lost.
    """
    template: Optional[Optional[str]] = None
    """The template it started from."""


# A sandbox's lifecycle (`vms.state`, `VmView::state`).
VmState = Literal["running", "paused", "paused_to_disk", "crashed", "lost"]


@dataclass
class VmStats:
    """Usage of one sandbox, as its backend measures it."""
    cpu_usage_ns: int
    memory_bytes: int
    state: "VmState"
    disk_bytes: Optional[Optional[int]] = None


@dataclass
class VmView:
    """A VM as every VM endpoint shows it."""
    backend: str
    """`container` or `microvm`."""
    created_at: str
    id: str
    mem_mib: int
    persistence: "Persistence"
    state: "VmState"
    vcpus: int
    branch: Optional[Optional[str]] = None
    dev_server: Optional[Optional["DevServerStatus"]] = None
    expires_at: Optional[Optional[str]] = None
    """
    When the VM is destroyed whatever its activity (RFC 3339); `null`:
    never.
    """
    idle_timeout_secs: Optional[Optional[int]] = None
    labels: Optional[Dict[str, str]] = None
    parent: Optional[Optional[str]] = None
    """The VM it was forked from."""
    preview_url: Optional[Optional[str]] = None
    """Where the dev server is seen, when the VM has one."""
    repo: Optional[Optional[str]] = None
    """`owner/name` of the repository checked out in it."""
    snapshot: Optional[Optional[str]] = None
    """The snapshot (id) it started from."""
    stored_bytes: Optional[Optional[int]] = None
    """
    Paused to disk on a node: the size in bytes of its copy in the
    snapshot store (`forge serve --snapshot-store`), once uploaded.
    With it, the VM resumes on another node if its own is lost.
    """
    template: Optional[Optional[str]] = None
    """The template it started from."""


@dataclass
class WarmPoolStatus:
    """
    The warm pools: how many sandboxes of the forge's image the default
    pool keeps and how many are ready now, and the same for each template's.
    """
    ready: int
    target: int
    templates: Optional[List["TemplatePoolStatus"]] = None


@dataclass
class WebhookAccepted:
    """The answer to an inbound GitHub webhook."""
    delivery: str
    """Its `X-GitHub-Delivery`."""
    duplicate: bool
    """Seen before (by id or by body): not processed again."""


@dataclass
class WebhookView:
    active: bool
    branches: List[str]
    consecutive_failures: int
    created_at: str
    events: List[str]
    id: str
    paths: List[str]
    updated_at: str
    url: str
    disabled_reason: Optional[Optional[str]] = None
    previous_secret_expires_at: Optional[Optional[str]] = None
    """While set, the previous secret still signs every request too."""
    secret: Optional[Optional[str]] = None
    """Only in the answer that set it."""
