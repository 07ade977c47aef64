"""The Python SDK against a real forge, sync and async.

The harness (tests/tests/sdk.rs) starts the forge and sets FORGE_URL,
FORGE_TOKEN (admin), FORGE_TEST_REPO (a Bun project with a finished run)
and FORGE_TEMPLATE_URL (a clone URL to import from).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from forge_sdk import AsyncForge, Forge, ForgeError, types

for _name in ("FORGE_URL", "FORGE_TOKEN", "FORGE_TEST_REPO", "FORGE_TEMPLATE_URL"):
    if not os.environ.get(_name):
        raise RuntimeError(f"{_name} is not set: run this suite through tests/tests/sdk.rs")

URL = os.environ["FORGE_URL"]
TOKEN = os.environ["FORGE_TOKEN"]
REPO = os.environ["FORGE_TEST_REPO"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def forge():
    with Forge(URL, TOKEN) as client:
        yield client


@pytest.fixture
def vms(forge):
    """Makes VMs for one test and deletes them after it."""
    made = []

    def make(**options):
        vm = forge.vms.create(**options)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        try:
            vm.delete()
        except ForgeError:
            pass


def fails_with(status: int, code: str):
    class Check:
        def __enter__(self):
            return self

        def __exit__(self, kind, error, tb):
            assert kind is ForgeError, f"a ForgeError, not {kind}: {error}"
            assert (error.status, error.code) == (status, code), repr(error)
            assert error.message
            self.error = error
            return True

    return Check()


def eventually(what, probe, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.2)


def test_system_openapi_and_environment(forge, monkeypatch):
    system = forge.system()
    assert isinstance(system, types.System) and system.sandboxes.backend
    assert forge.openapi()["openapi"] == "3.1.0"
    monkeypatch.setenv("FORGE_URL", URL)
    monkeypatch.setenv("FORGE_TOKEN", TOKEN)
    with Forge() as from_env:
        assert isinstance(from_env.vms.list(), list)


def test_every_failure_is_a_forge_error(forge):
    with fails_with(404, "not_found"):
        forge.vms.get("nosuchvm")
    with fails_with(404, "not_found"):
        forge.git.repos.get("nobody/nothing")
    with Forge(URL, "forge_not-a-token") as stranger, fails_with(401, "unauthorized"):
        stranger.vms.list()
    with fails_with(400, "bad_request"):
        forge.vms.create(vcpus=200)
    with fails_with(422, "bad_request"):
        forge.vms.create(no_such_option=True)
    with Forge("http://127.0.0.1:9", "t") as nowhere, fails_with(0, "network"):
        nowhere.system()
    with fails_with(0, "bad_request"):
        forge.git.repos.name_of("https://elsewhere.example/a/b.git")


def test_options_in_either_spelling(vms, forge):
    vm = vms(idleTimeoutSeconds=120, persistence={"type": "persistent"}, mem_mib=256, env={"MY_VAR": "as written"})
    assert (vm.view.idle_timeout_secs, vm.view.mem_mib, vm.view.persistence.type) == (120, 256, "persistent")
    assert vm.exec("echo $MY_VAR").stdout == "as written\n"
    assert vms(idle_timeout_seconds=90).refresh().idle_timeout_secs == 90
    with fails_with(0, "bad_request"):
        forge.vms.create(idleTimeoutSeconds=1, idle_timeout_secs=2)


def test_get_list_delete(vms, forge):
    vm = vms()
    got = forge.vms.get(vm.id)
    assert got.state == "running" and isinstance(got.view, types.VmDetail)
    assert any(v.id == vm.id for v in forge.vms.list())
    run = str(os.getpid())
    labelled = vms(labels={"suite": "py", "run": run})
    found = forge.vms.list(labels={"suite": "py", "run": run}, state="running")
    assert [v.id for v in found] == [labelled.id], "labels filter the list"
    page, cursor = forge.vms.page(labels={"suite": "py", "run": run}, limit=1)
    assert [v.id for v in page] == [labelled.id] and cursor, "a full page names the next"
    assert forge.vms.page(labels={"suite": "py", "run": run}, cursor=cursor) == ([], None)
    assert labelled.set_timeout(3600).expires_at
    assert labelled.set_timeout(None).expires_at is None
    forge.vms.delete(vm.id)
    with fails_with(404, "not_found"):
        forge.vms.get(vm.id)


def test_background_processes(vms):
    vm = vms()
    started = vm.start_process(
        "trap 'echo bye; exit 0' TERM; echo \"up $WHO\"; while :; do sleep 0.1; done", env={"WHO": "py"}
    )
    assert started.state == "running"
    seen = []
    for event in vm.follow_process(started.pid):
        seen.append(event)
        if event["event"] == "output" and "up py" in event["data"]["text"]:
            vm.signal_process(started.pid, "TERM")
    assert seen[-1]["event"] == "exit" and seen[-1]["data"]["exit_code"] == 0
    assert "up py\n" in vm.process_logs(started.pid) and "bye\n" in vm.process_logs(started.pid)
    assert [p.state for p in vm.processes() if p.pid == started.pid] == ["exited"]
    with fails_with(400, "bad_request"):
        vm.signal_process(started.pid, "BOOM")


def test_exec_collected_and_streamed(vms):
    vm = vms()
    out = vm.exec("echo out; echo err >&2; exit 3")
    assert (out.stdout, out.stderr, out.exit_code, out.timed_out) == ("out\n", "err\n", 3, False)
    assert vm.exec(["printf", "%s|", "a b", "$HOME"]).stdout == "a b|$HOME|"
    shaped = vm.exec("pwd; echo $GREETING; cat", cwd="/tmp", env={"GREETING": "hello"}, stdin="in")
    assert shaped.stdout == "/tmp\nhello\nin"
    assert vm.exec("sleep 10", timeout_seconds=1).timed_out

    with vm.exec_stream("for i in 1 2 3; do echo $i; sleep 0.2; done; echo bad >&2; exit 4") as stream:
        chunks = list(stream)
    assert "".join(c.text for c in chunks if c.stream == "stdout") == "1\n2\n3\n"
    assert "".join(c.text for c in chunks if c.stream == "stderr") == "bad\n"
    assert len([c for c in chunks if c.stream == "stdout"]) >= 2, "streamed, not at once"
    assert stream.exit.exit_code == 4
    with vm.exec_stream(["sh", "-c", "echo x"]) as stream:
        assert stream.collect().stdout == "x\n"

    with vm.exec_stream("echo started; sleep 3; touch /tmp/survived") as stream:
        for chunk in stream:
            assert chunk.text == "started\n"
            break
    time.sleep(4)
    assert vm.exec("test -e /tmp/survived && echo yes || echo no").stdout == "no\n"


def test_files(vms):
    vm = vms()
    vm.fs.write_file("/tmp/dir with space/hello.txt", "héllo\n")
    assert vm.fs.read_file("/tmp/dir with space/hello.txt", "utf-8") == "héllo\n"
    data = bytes((i * 7) % 256 for i in range(70000))
    vm.fs.write_file("tmp/bytes.bin", data)
    assert vm.fs.read_file("/tmp/bytes.bin") == data
    entries = vm.fs.readdir("/tmp/dir with space")
    assert [(e.name, e.kind, e.size) for e in entries] == [("hello.txt", "file", 7)]
    vm.fs.remove("/tmp/dir with space/hello.txt")
    with fails_with(404, "not_found"):
        vm.fs.read_file("/tmp/dir with space/hello.txt")


def test_a_hostile_path_never_reaches_another_endpoint(forge):
    # An agent's path with dot segments would, once the URL resolves them,
    # name another endpoint (here: deleting a repository). The SDK refuses
    # it before sending anything.
    sent = []
    forge._http.event_hooks["request"].append(lambda request: sent.append(request.url))
    vm = forge.vms.ref("sb0000")
    for path in ["../../../repos/user/repo", "tmp/%2e%2E/x", "/tmp/./x", "a//b"]:
        with fails_with(0, "bad_request"):
            vm.fs.remove(path)
        with fails_with(0, "bad_request"):
            vm.fs.read_file(path)
    with fails_with(0, "bad_request"):
        forge.vms.get("..")
    with fails_with(0, "bad_request"):
        forge.webhooks.delete(REPO, "%2e%2e")
    for path in ["../../../tokens", "a/%2E%2e/b?x=1", "..\\..\\..\\tokens", ".\t./.\t./tokens"]:
        with fails_with(0, "bad_request"):
            vm.ports.url(8080, path)
    assert vm.ports.url(8080, "a/b?next=../x").endswith("/ports/8080/a/b?next=../x")
    for name in [f"{URL}/acme/app/../../tokens", f"{URL}/acme/app/extra", "acme/app?x"]:
        with fails_with(0, "bad_request"):
            forge.git.repos.name_of(name)
    assert sent == []
    assert forge.git.repos.get(REPO)


def test_fork_pause_and_resume(vms):
    vm = vms(persistence={"type": "persistent"})
    vm.exec("nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' >/dev/null 2>&1 &")
    vm.fs.write_file("/tmp/mark", "parent")

    def count(v):
        return int(v.exec("cat /tmp/count 2>/dev/null || echo 0").stdout)

    eventually("the counter starts", lambda: count(vm) > 2)
    forks = vm.fork(count=3)
    try:
        assert len(forks) == 3
        for i, fork in enumerate(forks):
            assert fork.view.parent == vm.id
            assert fork.fs.read_file("/tmp/mark", "utf-8") == "parent"
            fork.fs.write_file("/tmp/mark", f"fork {i}")
        for i, fork in enumerate(forks):
            assert fork.fs.read_file("/tmp/mark", "utf-8") == f"fork {i}"
        assert vm.fs.read_file("/tmp/mark", "utf-8") == "parent"
    finally:
        for fork in forks:
            fork.delete()
    before = count(vm)
    assert vm.pause(to_disk=True).state == "paused_to_disk"
    resumed = vm.resume()
    assert resumed.state == "running"
    at = count(vm)
    assert at >= before, f"the counter went back from {before} to {at}"
    if "processes" in resumed.kept:
        eventually("the counter goes on", lambda: count(vm) > at)


def test_ports_and_share_links(vms):
    vm = vms()
    vm.exec(
        "nohup bun -e 'Bun.serve({ port: 8080, fetch: (r) => new Response(\"hi from \" + new URL(r.url).pathname) })'"
        " >/tmp/server.log 2>&1 &"
    )

    def answer():
        response = vm.ports.request(8080, "/some/path")
        return response.text if response.status_code == 200 else None

    assert eventually("the server answers", answer) == "hi from /some/path"
    link = vm.ports.share(8080, ttl_seconds=600)
    assert link.ttl_secs == 600
    shared = httpx.get(link.url, follow_redirects=True)
    assert (shared.status_code, shared.text) == (200, "hi from /")
    with fails_with(400, "bad_request"):
        vm.ports.share(8080, ttl_secs=0)


def test_terminal(vms):
    vm = vms()
    with vm.terminal(cols=100, rows=30) as terminal:
        terminal.write("echo $((6*7)); stty size; exit 5\n")
        output = b"".join(terminal).decode()
    assert "42\r\n30 100\r\n" in output
    assert terminal.closed == (1000, "exited with code 5")


def test_the_websocket_accept_value_is_rfc_6455s():
    import base64
    import hashlib

    from forge_sdk import _ws

    # The example of RFC 6455, section 1.3.
    accept = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + _ws._GUID).digest())
    assert accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    _ws.check_response(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept, accept)


def test_repositories_contents_and_import(forge, vms):
    name = f"sdk/{unique('py')}"
    created = forge.git.repos.create(name, default_branch="trunk")
    assert (created.name, created.default_branch) == (name, "trunk")
    assert any(r.name == name for r in forge.git.repos.list())
    assert forge.git.repos.get(name).id == created.id
    assert forge.git.repos.branches(name) == []
    with fails_with(409, "conflict"):
        forge.git.repos.create(name)
    forge.git.repos.delete(name)
    with fails_with(404, "not_found"):
        forge.git.repos.get(name)

    root = forge.git.repos.contents(REPO)
    assert isinstance(root, types.ContentsDir)
    assert any(e.name == "package.json" for e in root.entries)
    file = forge.git.repos.contents(REPO, path="package.json", branch="main")
    assert isinstance(file, types.ContentsFile) and '"test"' in file.text

    imported = forge.git.repos.create(f"acme/{unique('app')}", source_url=os.environ["FORGE_TEMPLATE_URL"])
    try:
        vm = vms(repo=imported.clone_url)
        assert vm.view.repo == imported.name
        assert "package.json" in vm.exec("ls /workspace").stdout
    finally:
        vm.delete()
        forge.git.repos.delete(imported.name)
    with fails_with(422, "import_failed"):
        forge.git.repos.create(f"acme/{unique('bad')}", source_url="http://127.0.0.1:9/x.git")


def push_new_branch() -> None:
    parts = urlsplit(f"{URL}/{REPO}.git")
    url = urlunsplit(parts._replace(netloc=f"git:{TOKEN}@{parts.netloc}"))
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["git", "clone", "--quiet", url, work], check=True, capture_output=True)
        git = ["git", "-C", work, "-c", "user.name=sdk", "-c", "user.email=sdk@example.com"]
        subprocess.run([*git, "commit", "--quiet", "--allow-empty", "-m", "wake"], check=True)
        subprocess.run([*git, "push", "--quiet", "origin", f"HEAD:refs/heads/{unique('py-')}"], check=True)


def test_events_history_and_long_poll(forge):
    for event in forge.git.repos.events(REPO, wait_secs=1):
        if event.kind == "push":
            break
    cursor = forge.git.repos.event_page(REPO, limit=1000).next_cursor
    found = {}

    def wait():
        with Forge(URL, TOKEN) as client:
            found["event"] = next(iter(client.git.repos.events(REPO, after=cursor, wait_secs=30)))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    push_new_branch()
    waiter.join(60)
    assert found["event"].id > cursor and found["event"].repo == REPO


def test_runs_and_their_logs(forge):
    run = next(r for r in forge.git.repos.runs(REPO, limit=50) if r.state == "passed")
    detail = forge.runs.get(run.id)
    assert [s.name for s in detail.steps] == [s.name for s in run.steps]
    assert "== test (passed) ==" in forge.runs.logs(run.id)
    events = list(forge.runs.follow(run.id))
    assert events[-1]["event"] == "end" and events[-1]["data"].state == "passed"
    assert any(e["event"] == "step" and e["data"].name == "test" for e in events)
    with fails_with(404, "not_found"):
        forge.runs.get(987654321)


def test_a_rerun_and_a_cancel(forge):
    run = next(r for r in forge.git.repos.runs(REPO, limit=50) if r.state == "passed")
    again = forge.runs.rerun(run.id)
    assert again.id != run.id and (again.branch, again.commit_id) == (run.branch, run.commit_id)
    with fails_with(409, "conflict"):
        forge.runs.cancel(run.id)
    ended = eventually(
        "the re-run ends",
        lambda: (lambda d: d if d.state not in ("queued", "running") else None)(forge.runs.get(again.id)),
        120,
    )
    assert ended.state == "passed", ended.error


def test_webhooks(forge):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        with fails_with(400, "bad_request") as refused:
            forge.webhooks.create(REPO, "ftp://nowhere", ["pushh"], branches=["[x"])
        assert [f.field for f in refused.error.fields] == ["url", "events", "branches"]
        hook = forge.webhooks.create(REPO, url, ["*"])
        assert hook.url == url and hook.secret
        assert any(h.id == hook.id for h in forge.webhooks.list(REPO))
        queued = forge.webhooks.ping(REPO, hook.id)
        eventually("the ping arrives", lambda: received)
        delivered = eventually(
            "the delivery is recorded",
            lambda: next(
                (d for d in forge.webhooks.deliveries(REPO, hook.id).deliveries
                 if d.id == queued.delivery_id and d.status == "delivered"),
                None,
            ),
        )
        assert forge.webhooks.delivery(REPO, hook.id, delivered.id).id == delivered.id
        forge.webhooks.redeliver(REPO, hook.id, delivered.id)
        eventually("the redelivery arrives", lambda: len(received) > 1)
        updated = forge.webhooks.update(REPO, hook.id, active=False, branches=["main"])
        assert (updated.active, updated.branches) == (False, ["main"])
        forge.webhooks.delete(REPO, hook.id)
        with fails_with(404, "not_found"):
            forge.webhooks.get(REPO, hook.id)
    finally:
        server.shutdown()


def test_tokens(forge):
    token = forge.tokens.create(unique("reader-"), ["repo:read"], repo=REPO)
    assert token.token
    assert any(t.id == token.id and t.token is None for t in forge.tokens.list())
    with Forge(URL, token.token) as reader:
        assert reader.git.repos.get(REPO).name == REPO
        with fails_with(403, "forbidden"):
            reader.git.repos.create(f"sdk/{unique('no')}")
        forge.tokens.revoke(token.id)
        with fails_with(401, "unauthorized"):
            reader.git.repos.get(REPO)


def test_the_async_client():
    async def flow():
        async with AsyncForge(URL, TOKEN) as forge:
            assert (await forge.system()).sandboxes.backend
            vm = await forge.vms.create(persistence={"type": "persistent"})
            try:
                assert (await vm.exec("echo hi")).stdout == "hi\n"
                stream = vm.exec_stream("echo a; sleep 0.2; echo b")
                texts = [chunk.text async for chunk in stream]
                assert "".join(texts) == "a\nb\n" and stream.exit.exit_code == 0
                terminal = await vm.terminal(cols=90, rows=20)
                await terminal.resize(91, 21)
                await terminal.write("stty size; exit 3\n")
                output = b"".join([chunk async for chunk in terminal]).decode()
                assert "21 91" in output and terminal.closed == (1000, "exited with code 3")
                await terminal.aclose()
                await vm.fs.write_file("/tmp/f", b"\x00\x01")
                assert await vm.fs.read_file("/tmp/f") == b"\x00\x01"
                forks = await vm.fork(count=2)
                assert len(forks) == 2
                await asyncio.gather(*(f.delete() for f in forks))
                assert (await vm.pause(to_disk=True)).state == "paused_to_disk"
                assert (await vm.resume()).state == "running"
                run = next(r for r in await forge.git.repos.runs(REPO) if r.state == "passed")
                ends = [e async for e in forge.runs.follow(run.id) if e["event"] == "end"]
                assert ends[0]["data"].state == "passed"
                async for event in forge.git.repos.events(REPO, wait_secs=1):
                    assert event.repo == REPO
                    break
                with fails_with(404, "not_found"):
                    await forge.vms.get("nosuchvm")
            finally:
                await vm.delete()

    asyncio.run(flow())


def test_snapshots(vms, forge):
    vm = vms()
    vm.fs.write_file("/root/kept", "from the snapshot")
    name = f"snap{uuid.uuid4().hex[:8]}"
    snapshot = vm.snapshot(name=name)
    assert snapshot.name == name and "disk" in snapshot.kept
    assert snapshot.disk_bytes and snapshot.disk_bytes > 0
    copy = vms(snapshot=name)
    assert copy.view.snapshot == snapshot.id
    assert copy.fs.read_file("/root/kept", "utf-8") == "from the snapshot"
    assert any(s.id == snapshot.id for s in forge.snapshots.list())
    forge.snapshots.delete(name)
    with fails_with(404, "not_found"):
        forge.snapshots.get(name)


def test_templates(vms, forge):
    name = f"tpl{uuid.uuid4().hex[:8]}"
    spec = {"run": [f"echo {name} > /opt/made-by"], "workdir": "/opt", "env": {"TEMPLATE_NAME": name}}
    assert forge.templates.build(name, **spec).name == name
    events = list(forge.templates.follow(name))
    assert events[-1]["event"] == "done"
    assert events[-1]["data"].state == "ready", events[-1]
    assert "==> [" in forge.templates.log(name)
    assert forge.templates.build(name, **spec).reused
    vm = vms(template=name)
    assert vm.exec('cat made-by; echo "$TEMPLATE_NAME"').stdout == f"{name}\n{name}\n"
    forge.templates.delete(name)
    with fails_with(404, "not_found"):
        forge.templates.get(name)
