"""The forge's Python SDK: sandboxes ("VMs"), git repositories, runs,
webhooks and tokens over the forge's REST API, with a synchronous client
(`Forge`) and an asynchronous one (`AsyncForge`) on httpx.

Each API method is written once: it builds an `_Op` (the request, and how
to read its answer) and hands it to the client, which sends it with
httpx's `Client` (and returns the value) or `AsyncClient` (and returns an
awaitable). Only the streams (exec output, run logs, events) differ.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Union
from urllib.parse import quote

import httpx

from . import _ws
from . import types as t
from ._load import load


class ForgeError(Exception):
    """A failed call: the API's error `code`, the HTTP `status` (0 when the
    forge could not be reached) and the `message`."""

    def __init__(self, status: int, code: str, message: str, fields: Optional[List[Any]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # For a request with invalid fields: every problem, each a
        # `FieldError` (`field`, `message`).
        self.fields = fields or []

    def __repr__(self) -> str:
        return f"ForgeError(status={self.status}, code={self.code!r}, message={self.message!r})"

    @classmethod
    def from_response(cls, status: int, body: bytes, reason: str = "") -> "ForgeError":
        try:
            error = json.loads(body)["error"]
            if isinstance(error.get("code"), str) and isinstance(error.get("message"), str):
                fields = [
                    t.FieldError(field=str(item["field"]), message=str(item["message"]))
                    for item in error.get("fields") or []
                ]
                return cls(status, error["code"], error["message"], fields)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        text = body.decode("utf-8", "replace").strip()[:500] or reason or "no message"
        return cls(status, f"http_{status}", text)


def wire_name(key: str) -> str:
    """`idleTimeoutSeconds` and `idle_timeout_seconds` → `idle_timeout_secs`."""
    snake = re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)
    return snake[: -len("_seconds")] + "_secs" if snake.endswith("_seconds") else snake


# Keys whose values are the caller's own maps, left as they are.
_VERBATIM = {"env", "labels"}


def to_wire(value: Any) -> Any:
    """Options with every key in the API's spelling; `None` values dropped."""
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: Dict[str, Any] = {}
    for key, inner in value.items():
        if inner is None:
            continue
        name = wire_name(key)
        if name in out:
            raise ForgeError(0, "bad_request", f"option {key} is given twice (as {name})")
        out[name] = inner if name in _VERBATIM else to_wire(inner)
    return out


def _segment(raw: Any) -> str:
    """One path segment, escaped. `.` and `..` (escaped or not: URLs
    resolve `%2e%2e` too) would move the request to another endpoint of the
    API; they are refused before anything is sent."""
    text = str(raw)
    if text == "" or re.fullmatch(r"(?:\.|%2[eE]){1,2}", text):
        raise ForgeError(0, "bad_request", f"{text!r} is not allowed as a path segment")
    return quote(text, safe="")


def _seg(*parts: Any) -> str:
    return "/".join(_segment(p) for p in parts)


def _file_path(path: str) -> str:
    parts = str(path).lstrip("/").split("/")
    # A directory's trailing `/` is kept; other empty segments are refused.
    trailing = len(parts) > 1 and parts[-1] == ""
    if trailing:
        parts.pop()
    return "/".join(_segment(p) for p in parts) + ("/" if trailing else "")


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: httpx.Headers

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Op:
    method: str
    path: str
    read: Callable[[_Answer], Any] = lambda answer: answer.json()
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    content: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)


def _as(tp: Any) -> Callable[[_Answer], Any]:
    return lambda answer: load(tp, answer.json())


def _none(_answer: _Answer) -> None:
    return None


def _params(options: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        out[wire_name(key)] = str(value).lower() if isinstance(value, bool) else value
    return out


def _sse(lines: Iterator[str]) -> Iterator[Dict[str, Any]]:
    """Server-sent events from decoded lines: `{"event", "data"}`."""
    parser = _SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


class _SseParser:
    """Server-sent events, fed one decoded line at a time."""

    def __init__(self) -> None:
        self.event, self.data = "message", []  # type: str, List[str]

    def feed(self, line: str) -> Optional[Dict[str, Any]]:
        line = line.rstrip("\r")
        if not line:
            out = None
            if self.data:
                text = "\n".join(self.data)
                try:
                    parsed: Any = json.loads(text)
                except ValueError:
                    parsed = text
                out = {"event": self.event, "data": parsed}
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def _exec_body(command: Union[str, List[str], Dict[str, Any]], options: Dict[str, Any]) -> Dict[str, Any]:
    body = dict(options)
    if isinstance(command, str):
        body["command"] = command
    elif isinstance(command, list):
        body["argv"] = command
    else:
        body.update(command)
    return body


@dataclass
class OutputChunk:
    """A piece of a streamed command's output."""

    stream: str
    """`stdout` or `stderr`."""
    text: str


# ---------------------------------------------------------------- handles


class Vm:
    """A VM: `view` is how the forge last showed it."""

    def __init__(self, client: "_Client", view: Any):
        self._client = client
        self.view = view
        self.id: str = view.id
        self.fs = VmFiles(self)
        self.ports = VmPorts(self)

    def __repr__(self) -> str:
        return f"Vm({self.id!r}, state={getattr(self.view, 'state', None)!r})"

    @property
    def path(self) -> str:
        return f"/v1/vms/{_seg(self.id)}"

    @property
    def state(self) -> Optional[str]:
        return getattr(self.view, "state", None)

    def _keep(self, tp: Any) -> Callable[[_Answer], Any]:
        def read(answer: _Answer) -> Any:
            self.view = load(tp, answer.json())
            return self.view

        return read

    def refresh(self):
        """The VM now, with its usage (`VmDetail`)."""
        return self._client._do(_Op("GET", self.path, self._keep(t.VmDetail)))

    def set_timeout(self, ttl_secs: Optional[int]):
        """Destroys the VM `ttl_secs` from now, whatever it is doing (sooner
        or later than its deadline was); `None` removes the deadline."""
        body = {"ttl_secs": ttl_secs}
        return self._client._do(_Op("POST", f"{self.path}/timeout", self._keep(t.VmView), json=body))

    def exec(self, command: Union[str, List[str], Dict[str, Any]], **options: Any):
        """Runs `command` (a shell script, or an argv list) and answers when
        it ends (`ExecOutput`). Options: `cwd`, `env`, `stdin`, `timeout_secs`
        (or `timeout_seconds`)."""
        body = to_wire(_exec_body(command, options))
        return self._client._do(_Op("POST", f"{self.path}/exec", _as(t.ExecOutput), json=body))

    def exec_stream(self, command: Union[str, List[str], Dict[str, Any]], **options: Any):
        """Runs `command` and streams its output: iterate for `OutputChunk`s,
        then read `exit` (`ExecExit`). Closing the stream kills it."""
        body = to_wire(_exec_body(command, options))
        return self._client._exec_stream(f"{self.path}/exec", body)

    def fork(self, count: int = 1, labels: Optional[Dict[str, str]] = None, ttl_secs: Optional[int] = None):
        """`count` copies, memory and disk: a list of `Vm`s. They inherit the
        VM's labels (`labels` are set over them) and its deadline unless
        `ttl_secs` gives their own."""
        client = self._client
        read = lambda a: [Vm(client, v) for v in load(t.Forks, a.json()).forks]  # noqa: E731
        body = to_wire({"count": count, "labels": labels or {}, "ttl_secs": ttl_secs})
        return client._do(_Op("POST", f"{self.path}/fork", read, json=body))

    def pause(self, to_disk: bool = False):
        """Pauses in memory, or to disk (no CPU, no RAM)."""
        return self._client._do(
            _Op("POST", f"{self.path}/pause", self._keep(t.VmView), json={"to_disk": to_disk})
        )

    def resume(self):
        """Resumes where it stopped (`CarriedVm`: says what was kept)."""
        return self._client._do(_Op("POST", f"{self.path}/resume", self._keep(t.CarriedVm)))

    def move(self, node: Optional[str] = None):
        """Moves it, paused to disk, to another sandbox node (`node`, or the
        one with the most memory free) and resumes it there (admin;
        `MovedVm`)."""
        body = {"node": node} if node is not None else {}
        return self._client._do(_Op("POST", f"{self.path}/move", self._keep(t.MovedVm), json=body))

    def start_process(self, command: Union[str, List[str]], **options: Any):
        """Starts a background process (a shell script or an argv list, with
        `env`, `cwd`): it runs on after the call; its output is kept
        (`ProcessView`)."""
        body = to_wire(_exec_body(command, options))
        return self._client._do(_Op("POST", f"{self.path}/processes", _as(t.ProcessView), json=body))

    def processes(self):
        """The background processes, oldest first (`ProcessView`s)."""
        return self._client._do(_Op("GET", f"{self.path}/processes", _as(List[t.ProcessView])))

    def process_logs(self, pid: int, offset: int = 0):
        """What background process `pid` printed (the last MiB kept), as text."""
        read = lambda a: a.body.decode("utf-8", "replace")  # noqa: E731
        params = _params({"offset": offset})
        return self._client._do(_Op("GET", f"{self.path}/processes/{pid}/logs", read, params=params))

    def follow_process(self, pid: int):
        """Background process `pid`'s output as it comes: dicts `{"event":
        "output", "data": {"text"}}`, then one `{"event": "exit", "data":
        ProcessView}` (sync clients only)."""
        for event in self._client._stream(_Op("GET", f"{self.path}/processes/{pid}/logs")):
            yield event
            if event["event"] in ("exit", "error"):
                return

    def signal_process(self, pid: int, signal: str):
        """Sends `signal` ("TERM", "KILL", "INT", ...) to the process's group."""
        return self._client._do(
            _Op("POST", f"{self.path}/processes/{pid}/signal", _none, json={"signal": signal})
        )

    def snapshot(self, name: Optional[str] = None):
        """Keeps the VM's disk and, where the backend can, its memory and
        processes as a snapshot (`SnapshotView`; `kept` says which); the VM
        runs on. Start VMs from it with `vms.create(snapshot=...)`."""
        body = to_wire({"name": name})
        return self._client._do(_Op("POST", f"{self.path}/snapshots", _as(t.SnapshotView), json=body))

    def delete(self):
        return self._client._do(_Op("DELETE", self.path, _none))

    def terminal(self, cols: int = 80, rows: int = 24):
        """A shell on a `cols` x `rows` terminal in the VM, over a WebSocket
        (opened with a one-time ticket): `Terminal` (`AsyncTerminal` on
        `AsyncForge`)."""
        return self._client._terminal(self, cols, rows)


class VmFiles:
    def __init__(self, vm: Vm):
        self._vm = vm

    def _url(self, path: str) -> str:
        return f"{self._vm.path}/files/{_file_path(path)}"

    def read_file(self, path: str, encoding: Optional[str] = None):
        """The file's bytes, or its text when `encoding` is given."""
        read = (lambda a: a.body.decode(encoding)) if encoding else (lambda a: a.body)
        return self._vm._client._do(_Op("GET", self._url(path), read))

    def write_file(self, path: str, data: Union[str, bytes]):
        """Writes the file atomically, making missing parent directories."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        return self._vm._client._do(
            _Op(
                "PUT",
                self._url(path),
                _none,
                content=content,
                headers={"content-type": "application/octet-stream"},
            )
        )

    def readdir(self, path: str):
        """The directory's entries (`FileEntry`s); symlinks are not followed."""
        directory = path if path.endswith("/") else path + "/"
        return self._vm._client._do(_Op("GET", self._url(directory), _as(List[t.FileEntry])))

    def remove(self, path: str):
        return self._vm._client._do(_Op("DELETE", self._url(path), _none))


class VmPorts:
    def __init__(self, vm: Vm):
        self._vm = vm

    def url(self, port: int, path: str = "/") -> str:
        """Where the server on `port` answers (with the token)."""
        rest = path.lstrip("/")
        # Dot segments (escaped or not), `\` (a `/` to URLs) and control
        # characters (which URLs drop) could resolve out of the port's space.
        leaves = re.search(r"[\x00-\x1f\x7f\\]", rest) or any(
            re.fullmatch(r"(?:\.|%2[eE]){1,2}", part)
            for part in re.split(r"[?#]", rest, maxsplit=1)[0].split("/")
        )
        if leaves:
            raise ForgeError(0, "bad_request", f"{path!r} leaves the server's path")
        return f"{self._vm._client.base_url}{self._vm.path}/ports/{int(port)}/{rest}"

    def share(self, port: int, **options: Any):
        """A link to the server on `port` that works without a token, for
        `ttl_secs` (or `ttl_seconds`; default an hour)."""
        return self._vm._client._do(
            _Op(
                "POST",
                f"{self._vm.path}/ports/{int(port)}/links",
                _as(t.ShareLink),
                json=to_wire(options),
            )
        )

    def request(self, port: int, path: str = "/", method: str = "GET", **kwargs: Any):
        """An httpx request to the server on `port`, with the token (an
        awaitable on `AsyncForge`)."""
        headers = self._vm._client._headers(dict(kwargs.pop("headers", None) or {}))
        return self._vm._client._http.request(method, self.url(port, path), headers=headers, **kwargs)


# ---------------------------------------------------------------- namespaces


class Vms:
    def __init__(self, client: "_Client"):
        self._client = client

    def create(self, repo: Optional[str] = None, **options: Any):
        """A new VM. `repo` is one of this forge's repositories (`owner/name`
        or its clone URL), checked out in `/workspace`; the other options
        are the API's `CreateVm` (`persistence={"type": "persistent"}`,
        `idle_timeout_secs`, `mem_mib`, `env`, ...)."""
        body = dict(options)
        if repo is not None:
            body["repo"] = self._client.git.repos.name_of(repo)
        client = self._client
        read = lambda a: Vm(client, load(t.VmView, a.json()))  # noqa: E731
        return client._do(_Op("POST", "/v1/vms", read, json=to_wire(body)))

    def get(self, id: str):
        client = self._client
        read = lambda a: Vm(client, load(t.VmDetail, a.json()))  # noqa: E731
        return client._do(_Op("GET", f"/v1/vms/{_seg(id)}", read))

    def page(
        self,
        labels: Optional[Dict[str, Optional[str]]] = None,
        state: Optional[str] = None,
        repo: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ):
        """One page of the VMs the token may see, oldest first, and the next
        page's cursor (`None` on the last). `labels` must all match (a
        `None` value matches any); `state` and `repo` (`owner/name`) too."""
        client = self._client
        params = _params({"state": state, "repo": repo, "limit": limit, "cursor": cursor})
        if labels:
            params["label"] = [key if value is None else f"{key}:{value}" for key, value in labels.items()]
        read = lambda a: (  # noqa: E731
            [Vm(client, v) for v in load(List[t.VmView], a.json())],
            a.headers.get("x-next-cursor"),
        )
        return client._do(_Op("GET", "/v1/vms", read, params=params))

    def list(self, labels: Optional[Dict[str, Optional[str]]] = None, state: Optional[str] = None, repo: Optional[str] = None):
        """Every VM the token may see through every page (see `page`)."""
        if isinstance(self._client, AsyncForge):
            return self._alist(labels, state, repo)
        vms, cursor = self.page(labels, state, repo)
        while cursor is not None:
            more, cursor = self.page(labels, state, repo, cursor=cursor)
            vms.extend(more)
        return vms

    async def _alist(self, labels, state, repo):
        vms, cursor = await self.page(labels, state, repo)
        while cursor is not None:
            more, cursor = await self.page(labels, state, repo, cursor=cursor)
            vms.extend(more)
        return vms

    def ref(self, id: str) -> Vm:
        """A handle on VM `id` without asking the forge."""
        return _ref(self._client, id)

    def delete(self, id: str):
        return self._client._do(_Op("DELETE", f"/v1/vms/{_seg(id)}", _none))


def _ref(client: "_Client", id: str) -> Vm:
    class _Bare:
        pass

    bare = _Bare()
    bare.id = id  # type: ignore[attr-defined]
    return Vm(client, bare)


class Repos:
    def __init__(self, client: "_Client"):
        self._client = client

    def name_of(self, repo: str) -> str:
        """`owner/name` of a repository named so or by this forge's clone URL."""
        base = self._client.base_url
        name = repo[len(base) + 1 :].rstrip("/") if repo.startswith(base + "/") else repo
        name = re.sub(r"\.git$", "", name)
        # Exactly `owner/name`: anything more would name another endpoint.
        if re.fullmatch(r"[^/:?#\\]+/[^/:?#\\]+", name):
            return name
        raise ForgeError(
            0,
            "bad_request",
            f"{repo} is not a repository of this forge: import it first with "
            "forge.git.repos.create(name, source_url=...)",
        )

    def _path(self, name: str) -> str:
        owner, repo = self.name_of(name).split("/")
        return f"/v1/repos/{_seg(owner, repo)}"

    def create(self, name: str, default_branch: Optional[str] = None, source_url: Optional[str] = None):
        """A new repository `owner/name`: empty, or imported from `source_url`."""
        body = to_wire({"name": name, "default_branch": default_branch, "import_url": source_url})
        return self._client._do(_Op("POST", "/v1/repos", _as(t.RepoView), json=body))

    def list(self):
        return self._client._do(_Op("GET", "/v1/repos", _as(List[t.RepoView])))

    def get(self, name: str):
        return self._client._do(_Op("GET", self._path(name), _as(t.RepoView)))

    def delete(self, name: str):
        return self._client._do(_Op("DELETE", self._path(name), _none))

    def branches(self, name: str):
        return self._client._do(_Op("GET", f"{self._path(name)}/branches", _as(List[t.BranchView])))

    def contents(self, name: str, path: Optional[str] = None, branch: Optional[str] = None):
        """What `path` names on `branch`: `ContentsDir` or `ContentsFile`."""
        params = _params({"path": path, "branch": branch})
        return self._client._do(_Op("GET", f"{self._path(name)}/contents", _as(t.Contents), params=params))

    def runs(self, name: str, before: Optional[int] = None, limit: Optional[int] = None):
        params = _params({"before": before, "limit": limit})
        return self._client._do(_Op("GET", f"{self._path(name)}/runs", _as(List[t.RunView]), params=params))

    def event_page(self, name: str, after: int = 0, limit: Optional[int] = None, wait_secs: Optional[int] = None):
        params = _params({"after": after, "limit": limit, "wait_secs": wait_secs})
        return self._client._do(_Op("GET", f"{self._path(name)}/events", _as(t.EventPage), params=params))

    def events(self, name: str, after: int = 0, wait_secs: int = 30):
        """Every event after `after`, then each new one as it happens (the
        long poll), as an iterator (an async one on `AsyncForge`)."""
        return self._client._events(self, name, after, wait_secs)

    def github(self, name: str):
        return self._client._do(_Op("GET", f"{self._path(name)}/github", _as(t.GithubLinkView)))

    def link_github(self, name: str, repository: str):
        return self._client._do(
            _Op("POST", f"{self._path(name)}/github", _as(t.GithubLinkView), json={"repository": repository})
        )

    def unlink_github(self, name: str):
        return self._client._do(_Op("DELETE", f"{self._path(name)}/github", _none))


class Git:
    def __init__(self, client: "_Client"):
        self.repos = Repos(client)


class Runs:
    def __init__(self, client: "_Client"):
        self._client = client

    def get(self, id: int):
        return self._client._do(_Op("GET", f"/v1/runs/{_seg(id)}", _as(t.RunDetail)))

    def cancel(self, id: int):
        """Cancels a queued or running run; the run (still ending when
        the forge answered 202)."""
        return self._client._do(_Op("POST", f"/v1/runs/{_seg(id)}/cancel", _as(t.RunView)))

    def rerun(self, id: int):
        """Queues a new run of the run's commit with the same steps; the new run."""
        return self._client._do(_Op("POST", f"/v1/runs/{_seg(id)}/rerun", _as(t.RunView)))

    def logs(self, id: int):
        """Every step's log as text."""
        return self._client._do(
            _Op("GET", f"/v1/runs/{_seg(id)}/logs", lambda a: a.body.decode("utf-8", "replace"))
        )

    def follow(self, id: int):
        """The log live: dicts `{"event": "step"|"log"|"end", "data": ...}`
        (`StepEvent`, `LogEvent`, then one `RunEnd`)."""
        return self._client._follow(f"/v1/runs/{_seg(id)}/logs")


_RUN_EVENTS = {"step": t.StepEvent, "log": t.LogEvent, "end": t.RunEnd}


class Snapshots:
    def __init__(self, client: "_Client"):
        self._client = client

    def list(self):
        """The snapshots the token may see, with the space each takes."""
        return self._client._do(_Op("GET", "/v1/snapshots", _as(List[t.SnapshotView])))

    def get(self, key: str):
        """A snapshot by name or id."""
        return self._client._do(_Op("GET", f"/v1/snapshots/{_seg(key)}", _as(t.SnapshotView)))

    def delete(self, key: str):
        """Deletes a snapshot; VMs started from it run on."""
        return self._client._do(_Op("DELETE", f"/v1/snapshots/{_seg(key)}", _none))


class Templates:
    def __init__(self, client: "_Client"):
        self._client = client

    def build(self, name: str, **spec: Any):
        """Creates or changes template `name` from its spec (`apt`, `pip`,
        `npm`, `run`, `env`, `workdir`, `start`, `warm`, `pool`) and builds
        it, unless the same spec was built before (`reused`). `TemplateView`;
        `state` is "building" until the build ends (see `follow`)."""
        body = to_wire({"name": name, **spec})
        return self._client._do(_Op("POST", "/v1/templates", _as(t.TemplateView), json=body))

    def list(self):
        return self._client._do(_Op("GET", "/v1/templates", _as(List[t.TemplateView])))

    def get(self, name: str):
        return self._client._do(_Op("GET", f"/v1/templates/{_seg(name)}", _as(t.TemplateView)))

    def delete(self, name: str):
        """Deletes a template and, unless another shares its spec, its image."""
        return self._client._do(_Op("DELETE", f"/v1/templates/{_seg(name)}", _none))

    def log(self, name: str):
        """The build's log as text."""
        read = lambda a: a.body.decode("utf-8", "replace")  # noqa: E731
        return self._client._do(_Op("GET", f"/v1/templates/{_seg(name)}/build", read))

    def follow(self, name: str):
        """The build live: dicts `{"event": "log"|"step"|"done", "data":
        ...}` (`BuildLog`, `BuildStep`, then one `TemplateView`)."""
        return self._client._follow(f"/v1/templates/{_seg(name)}/build", _BUILD_EVENTS, "done")


_BUILD_EVENTS = {"log": t.BuildLog, "step": t.BuildStep, "done": t.TemplateView}


class Webhooks:
    def __init__(self, client: "_Client"):
        self._client = client

    def _path(self, repo: str, id: Optional[str] = None) -> str:
        base = f"{self._client.git.repos._path(repo)}/webhooks"
        return base if id is None else f"{base}/{_seg(id)}"

    def list(self, repo: str):
        return self._client._do(_Op("GET", self._path(repo), _as(List[t.WebhookView])))

    def create(self, repo: str, url: str, events: List[str], **options: Any):
        """A webhook on `repo`: `url`, `events` (or `["*"]`), `branches`,
        `paths`, `secret`, `active`."""
        body = to_wire({"url": url, "events": events, **options})
        return self._client._do(_Op("POST", self._path(repo), _as(t.WebhookView), json=body))

    def get(self, repo: str, id: str):
        return self._client._do(_Op("GET", self._path(repo, id), _as(t.WebhookView)))

    def update(self, repo: str, id: str, **changes: Any):
        return self._client._do(_Op("PATCH", self._path(repo, id), _as(t.WebhookView), json=to_wire(changes)))

    def delete(self, repo: str, id: str):
        return self._client._do(_Op("DELETE", self._path(repo, id), _none))

    def ping(self, repo: str, id: str):
        return self._client._do(_Op("POST", f"{self._path(repo, id)}/ping", _as(t.Queued)))

    def deliveries(self, repo: str, id: str, before: Optional[int] = None, limit: Optional[int] = None):
        params = _params({"before": before, "limit": limit})
        return self._client._do(
            _Op("GET", f"{self._path(repo, id)}/deliveries", _as(t.DeliveryPage), params=params)
        )

    def delivery(self, repo: str, id: str, delivery_id: str):
        return self._client._do(
            _Op("GET", f"{self._path(repo, id)}/deliveries/{_seg(delivery_id)}", _as(t.DeliveryView))
        )

    def redeliver(self, repo: str, id: str, delivery_id: str):
        return self._client._do(
            _Op("POST", f"{self._path(repo, id)}/deliveries/{_seg(delivery_id)}/redeliver", _as(t.Queued))
        )


class Tokens:
    def __init__(self, client: "_Client"):
        self._client = client

    def list(self):
        return self._client._do(_Op("GET", "/v1/tokens", _as(List[t.TokenView])))

    def create(self, name: str, scopes: List[str], repo: Optional[str] = None):
        """A new token; its secret (`token`) is in this answer only."""
        body = to_wire({"name": name, "scopes": scopes, "repo": repo})
        return self._client._do(_Op("POST", "/v1/tokens", _as(t.TokenView), json=body))

    def revoke(self, id: str):
        return self._client._do(_Op("DELETE", f"/v1/tokens/{_seg(id)}", _none))


# ---------------------------------------------------------------- clients


class _Client:
    def __init__(self, base_url: Optional[str], token: Optional[str]):
        base_url = base_url or os.environ.get("FORGE_URL")
        if not base_url:
            raise ForgeError(0, "bad_request", "no base_url: pass one, or set FORGE_URL")
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("FORGE_TOKEN")
        self.vms = Vms(self)
        self.git = Git(self)
        self.snapshots = Snapshots(self)
        self.templates = Templates(self)
        self.runs = Runs(self)
        self.webhooks = Webhooks(self)
        self.tokens = Tokens(self)

    def _headers(self, extra: Dict[str, str]) -> Dict[str, str]:
        headers = dict(extra)
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    def _request(self, op: _Op) -> httpx.Request:
        return self._http.build_request(
            op.method,
            self.base_url + op.path,
            params=op.params,
            json=op.json,
            content=op.content,
            headers=self._headers(op.headers),
        )

    @staticmethod
    def _network(op: _Op, error: Exception) -> ForgeError:
        return ForgeError(0, "network", f"{op.method} {op.path}: {error}")

    def _ticket_op(self, vm: Vm) -> _Op:
        return _Op("POST", f"{vm.path}/terminal/tickets", _as(t.TerminalTicket))

    def _terminal_url(self, vm: Vm, ticket: t.TerminalTicket, cols: int, rows: int) -> str:
        base = re.sub(r"^http", "ws", self.base_url)
        query = httpx.QueryParams({"ticket": ticket.ticket, "cols": cols, "rows": rows})
        return f"{base}{vm.path}/terminal?{query}"

    def system(self):
        """The forge's version and its sandbox backend, limits and queue."""
        return self._do(_Op("GET", "/v1/system", _as(t.System)))

    def openapi(self):
        """The forge's OpenAPI document (a dict)."""
        return self._do(_Op("GET", "/v1/openapi.json"))


class Forge(_Client):
    """The synchronous client: `Forge(base_url, token)`, or FORGE_URL and
    FORGE_TOKEN from the environment. Use as a context manager, or
    `close()` it."""

    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None, timeout: float = 300.0):
        super().__init__(base_url, token)
        self._http = httpx.Client(timeout=timeout)

    def __enter__(self) -> "Forge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, op: _Op) -> Any:
        try:
            response = self._http.send(self._request(op))
        except httpx.TransportError as error:
            raise self._network(op, error) from error
        if not response.is_success:
            raise ForgeError.from_response(response.status_code, response.content, response.reason_phrase)
        return op.read(_Answer(response.status_code, response.content, response.headers))

    def _stream(self, op: _Op) -> Iterator[Dict[str, Any]]:
        op.headers["accept"] = "text/event-stream"
        try:
            response = self._http.send(self._request(op), stream=True)
        except httpx.TransportError as error:
            raise self._network(op, error) from error
        try:
            if not response.is_success:
                body = response.read()
                raise ForgeError.from_response(response.status_code, body, response.reason_phrase)
            yield from _sse(response.iter_lines())
        finally:
            response.close()

    def _exec_stream(self, path: str, body: Dict[str, Any]) -> "ExecStream":
        return ExecStream(self._stream(_Op("POST", path, json=body)))

    def _terminal(self, vm: Vm, cols: int, rows: int) -> "Terminal":
        ticket = self._do(self._ticket_op(vm))
        try:
            return Terminal(_ws.SyncSocket(self._terminal_url(vm, ticket, cols, rows)))
        except (OSError, _ws.WebSocketError) as error:
            raise ForgeError(0, "network", f"the terminal did not open: {error}") from error

    def _follow(self, path: str, kinds: Dict[str, Any] = _RUN_EVENTS, last: str = "end") -> Iterator[Dict[str, Any]]:
        for event in self._stream(_Op("GET", path, params={"follow": "true"})):
            tp = kinds.get(event["event"])
            yield {"event": event["event"], "data": load(tp, event["data"]) if tp else event["data"]}
            if event["event"] == last:
                return

    def _events(self, repos: Repos, name: str, after: int, wait_secs: int) -> Iterator[t.Event]:
        while True:
            page = repos.event_page(name, after=after, wait_secs=wait_secs)
            yield from page.events
            after = page.next_cursor


def _collected(chunks: List[OutputChunk], exit: Optional[t.ExecExit]) -> t.ExecOutput:
    """A streamed command's whole output and how it ended."""
    assert exit is not None, "the stream ended with the command"
    return t.ExecOutput(
        stdout="".join(c.text for c in chunks if c.stream == "stdout"),
        stderr="".join(c.text for c in chunks if c.stream == "stderr"),
        exit_code=exit.exit_code,
        duration_ms=exit.duration_ms,
        timed_out=exit.timed_out,
        truncated=exit.truncated,
    )


class ExecStream:
    """A streamed command: iterate for `OutputChunk`s; `exit` is how it
    ended (`ExecExit`) once the iteration is over. `close()` kills it."""

    def __init__(self, events: Iterator[Dict[str, Any]]):
        self._events = events
        self.exit: Optional[t.ExecExit] = None

    def __iter__(self) -> Iterator[OutputChunk]:
        for event in self._events:
            kind, data = event["event"], event["data"]
            if kind in ("stdout", "stderr"):
                yield OutputChunk(kind, data["text"])
            elif kind == "exit":
                self.exit = load(t.ExecExit, data)
                return
            elif kind == "error":
                raise ForgeError(502, "sandbox_error", data.get("message", str(data)))
        raise ForgeError(0, "network", "the exec stream ended before the command did")

    def collect(self) -> t.ExecOutput:
        return _collected(list(self), self.exit)

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close:
            close()

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncForge(_Client):
    """The asynchronous client: every method is awaited; streams are async
    iterators. Use with `async with`, or `await aclose()`."""

    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None, timeout: float = 300.0):
        super().__init__(base_url, token)
        self._http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> "AsyncForge":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, op: _Op) -> Any:
        try:
            response = await self._http.send(self._request(op))
        except httpx.TransportError as error:
            raise self._network(op, error) from error
        if not response.is_success:
            raise ForgeError.from_response(response.status_code, response.content, response.reason_phrase)
        return op.read(_Answer(response.status_code, response.content, response.headers))

    async def _stream(self, op: _Op) -> AsyncIterator[Dict[str, Any]]:
        op.headers["accept"] = "text/event-stream"
        try:
            response = await self._http.send(self._request(op), stream=True)
        except httpx.TransportError as error:
            raise self._network(op, error) from error
        try:
            if not response.is_success:
                body = await response.aread()
                raise ForgeError.from_response(response.status_code, body, response.reason_phrase)
            parser = _SseParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event
        finally:
            await response.aclose()

    def _exec_stream(self, path: str, body: Dict[str, Any]) -> "AsyncExecStream":
        return AsyncExecStream(self._stream(_Op("POST", path, json=body)))

    async def _terminal(self, vm: Vm, cols: int, rows: int) -> "AsyncTerminal":
        ticket = await self._do(self._ticket_op(vm))
        try:
            return AsyncTerminal(await _ws.AsyncSocket.connect(self._terminal_url(vm, ticket, cols, rows)))
        except (OSError, _ws.WebSocketError) as error:
            raise ForgeError(0, "network", f"the terminal did not open: {error}") from error

    async def _follow(
        self, path: str, kinds: Dict[str, Any] = _RUN_EVENTS, last: str = "end"
    ) -> AsyncIterator[Dict[str, Any]]:
        stream = self._stream(_Op("GET", path, params={"follow": "true"}))
        try:
            async for event in stream:
                tp = kinds.get(event["event"])
                yield {"event": event["event"], "data": load(tp, event["data"]) if tp else event["data"]}
                if event["event"] == last:
                    return
        finally:
            await stream.aclose()

    async def _events(self, repos: Repos, name: str, after: int, wait_secs: int) -> AsyncIterator[t.Event]:
        while True:
            page = await repos.event_page(name, after=after, wait_secs=wait_secs)
            for event in page.events:
                yield event
            after = page.next_cursor


class AsyncExecStream:
    """`ExecStream` for `AsyncForge`: `async for` the chunks."""

    def __init__(self, events: AsyncIterator[Dict[str, Any]]):
        self._events = events
        self.exit: Optional[t.ExecExit] = None

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        async for event in self._events:
            kind, data = event["event"], event["data"]
            if kind in ("stdout", "stderr"):
                yield OutputChunk(kind, data["text"])
            elif kind == "exit":
                self.exit = load(t.ExecExit, data)
                return
            elif kind == "error":
                raise ForgeError(502, "sandbox_error", data.get("message", str(data)))
        raise ForgeError(0, "network", "the exec stream ended before the command did")

    async def collect(self) -> t.ExecOutput:
        return _collected([chunk async for chunk in self], self.exit)

    async def aclose(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]


def _keys(data: Union[str, bytes]) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def _resize(cols: int, rows: int) -> bytes:
    return json.dumps({"resize": {"cols": cols, "rows": rows}}).encode()


class Terminal:
    """A shell on a terminal in a VM: `write` keystrokes, iterate the
    output's byte chunks until the shell exits; `closed` is then
    `(1000, "exited with code N")`."""

    def __init__(self, socket: "_ws.SyncSocket"):
        self._socket = socket

    @property
    def closed(self) -> Optional[tuple]:
        return self._socket.closed

    def write(self, data: Union[str, bytes]) -> None:
        self._socket.send(_ws.OP_BINARY, _keys(data))

    def resize(self, cols: int, rows: int) -> None:
        self._socket.send(_ws.OP_TEXT, _resize(cols, rows))

    def __iter__(self) -> Iterator[bytes]:
        while (message := self._socket.receive()) is not None:
            yield message[1]

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncTerminal:
    """`Terminal` for `AsyncForge`: `await write(...)`, `async for` the output."""

    def __init__(self, socket: "_ws.AsyncSocket"):
        self._socket = socket

    @property
    def closed(self) -> Optional[tuple]:
        return self._socket.closed

    async def write(self, data: Union[str, bytes]) -> None:
        await self._socket.send(_ws.OP_BINARY, _keys(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._socket.send(_ws.OP_TEXT, _resize(cols, rows))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (message := await self._socket.receive()) is not None:
            yield message[1]

    async def aclose(self) -> None:
        await self._socket.close()
