// The SDK against a real forge, under `node --test` and `bun test` alike.
//
// The harness (tests/tests/sdk.rs) starts the forge and sets:
//   FORGE_URL, FORGE_TOKEN   the forge and an admin token
//   FORGE_TEST_REPO          `owner/name` of a bun project with a finished run
//   FORGE_TEMPLATE_URL       a clone URL (with credentials) to import from

import { afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import Forge, { ForgeError, createForge } from "../src/index.js";

const env = process.env;
for (const name of ["FORGE_URL", "FORGE_TOKEN", "FORGE_TEST_REPO", "FORGE_TEMPLATE_URL"]) {
  if (!env[name]) {
    throw new Error(`${name} is not set: run this suite through tests/tests/sdk.rs`);
  }
}
const forge = new Forge({ baseUrl: env.FORGE_URL, token: env.FORGE_TOKEN });
const repo = env.FORGE_TEST_REPO;
/** A name no other run of this suite (node's, bun's) uses. */
const unique = (prefix) => `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

// Each test's VMs are deleted after it: the forge caps how many run.
const made = [];
afterEach(async () => {
  for (const vm of made.splice(0)) {
    await vm.delete().catch(() => {});
  }
});

async function newVm(options = {}) {
  const created = await forge.vms.create(options);
  made.push(created.vm);
  return created.vm;
}

async function rejectsWith(promise, status, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof ForgeError, `a ForgeError, not ${error}`);
    assert.equal(error.status, status, error.message);
    assert.equal(error.code, code, error.message);
    assert.ok(error.message.length > 0);
    return true;
  });
}

async function eventually(what, probe, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      const value = await probe();
      if (value) {
        return value;
      }
    } catch (error) {
      if (Date.now() > deadline) {
        throw error;
      }
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} did not happen within ${seconds} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe("the client", () => {
  test("reads the system and the OpenAPI document", async () => {
    const system = await forge.system();
    assert.ok(system.version);
    assert.ok(system.sandboxes.backend, JSON.stringify(system));
    const doc = await forge.openapi();
    assert.equal(doc.openapi, "3.1.0");
    assert.ok(doc.paths["/v1/vms/{id}/exec"]);
  });

  test("takes its URL and token from FORGE_URL and FORGE_TOKEN", async () => {
    const fromEnv = createForge();
    assert.ok(Array.isArray(await fromEnv.vms.list()));
  });

  test("turns every failure into a ForgeError with code, status and message", async () => {
    await rejectsWith(forge.vms.get("nosuchvm"), 404, "not_found");
    await rejectsWith(forge.git.repos.get("nobody/nothing"), 404, "not_found");
    const stranger = new Forge({ baseUrl: env.FORGE_URL, token: "forge_not-a-token" });
    await rejectsWith(stranger.vms.list(), 401, "unauthorized");
    await rejectsWith(forge.vms.create({ vcpus: 200 }), 400, "bad_request");
    await rejectsWith(forge.vms.create({ noSuchOption: true }), 422, "bad_request");
    const nowhere = new Forge({ baseUrl: "http://127.0.0.1:9", token: "t" });
    await rejectsWith(nowhere.system(), 0, "network");
    assert.throws(() => forge.git.repos.nameOf("https://elsewhere.example/a/b.git"), ForgeError);
  });
});

describe("VMs", () => {
  test("create takes camelCase options and the API's names", async () => {
    const created = await forge.vms.create({
      idleTimeoutSeconds: 120,
      persistence: { type: "persistent" },
      memMib: 256,
      env: { MY_VAR: "kept as written" },
    });
    made.push(created.vm);
    assert.equal(created.idle_timeout_secs, 120);
    assert.equal(created.mem_mib, 256);
    assert.equal(created.persistence.type, "persistent");
    assert.equal(created.vm.id, created.id);
    const out = await created.vm.exec("echo $MY_VAR");
    assert.equal(out.stdout, "kept as written\n");

    const snake = await newVm({ idle_timeout_secs: 90 });
    assert.equal((await snake.refresh()).idle_timeout_secs, 90);
    await rejectsWith(
      forge.vms.create({ idleTimeoutSeconds: 1, idle_timeout_secs: 2 }),
      0,
      "bad_request",
    );
  });

  test("get, list and delete", async () => {
    const vm = await newVm();
    const got = await forge.vms.get(vm.id);
    assert.equal(got.state, "running");
    assert.ok(got.view.egress, "the detail carries egress counters");
    assert.ok((await forge.vms.list()).some((v) => v.id === vm.id));
    const labelled = await newVm({ labels: { suite: "ts", run: String(process.pid) } });
    const found = await forge.vms.list({ labels: { suite: "ts", run: String(process.pid) }, state: "running" });
    assert.deepEqual(found.map((v) => v.id), [labelled.id], "labels filter the list");
    const deadline = await labelled.setTimeout(3600);
    assert.ok(deadline.expires_at, "a deadline is set");
    assert.equal((await labelled.setTimeout(null)).expires_at, null);
    await forge.vms.delete(vm.id);
    await rejectsWith(forge.vms.get(vm.id), 404, "not_found");
  });

  test("background processes start, list, follow and take signals", async () => {
    const vm = await newVm();
    const started = await vm.startProcess(
      "trap 'echo bye; exit 0' TERM; echo \"up $WHO\"; while :; do sleep 0.1; done",
      { env: { WHO: "ts" } },
    );
    assert.equal(started.state, "running");
    const seen = [];
    for await (const event of vm.followProcess(started.pid)) {
      seen.push(event);
      if (event.event === "output" && event.data.text.includes("up ts")) {
        await vm.signalProcess(started.pid, "TERM");
      }
    }
    const exit = seen.at(-1);
    assert.equal(exit.event, "exit");
    assert.equal(exit.data.exit_code, 0);
    assert.match(await vm.processLogs(started.pid), /up ts\n[\s\S]*bye\n/);
    const listed = await vm.processes();
    assert.equal(listed.find((p) => p.pid === started.pid).state, "exited");
    await rejectsWith(vm.signalProcess(started.pid, "BOOM"), 400, "bad_request");
  });

  test("exec collects output, exit code, argv, env, cwd and stdin", async () => {
    const vm = await newVm();
    const out = await vm.exec("echo out; echo err >&2; exit 3");
    assert.deepEqual(
      [out.stdout, out.stderr, out.exit_code, out.timed_out],
      ["out\n", "err\n", 3, false],
    );
    const argv = await vm.exec(["printf", "%s|", "a b", "$HOME"]);
    assert.equal(argv.stdout, "a b|$HOME|");
    const shaped = await vm.exec("pwd; echo $GREETING; cat", {
      cwd: "/tmp",
      env: { GREETING: "hello" },
      stdin: "from stdin",
    });
    assert.equal(shaped.stdout, "/tmp\nhello\nfrom stdin");
    const slow = await vm.exec("sleep 10", { timeoutSeconds: 1 });
    assert.equal(slow.timed_out, true);
  });

  test("execStream yields output as it comes and resolves how it ended", async () => {
    const vm = await newVm();
    const stream = vm.execStream("for i in 1 2 3; do echo $i; sleep 0.2; done; echo bad >&2; exit 4");
    const chunks = [];
    for await (const chunk of stream) {
      chunks.push(chunk);
    }
    const stdout = chunks.filter((c) => c.stream === "stdout").map((c) => c.text).join("");
    const stderr = chunks.filter((c) => c.stream === "stderr").map((c) => c.text).join("");
    assert.equal(stdout, "1\n2\n3\n");
    assert.equal(stderr, "bad\n");
    assert.ok(chunks.filter((c) => c.stream === "stdout").length >= 2, "streamed, not at once");
    const exit = await stream.exit;
    assert.equal(exit.exit_code, 4);

    const collected = await vm.execStream(["sh", "-c", "echo x; exit 0"]).collect();
    assert.deepEqual([collected.stdout, collected.exit_code], ["x\n", 0]);
  });

  test("leaving an execStream early kills the command", async () => {
    const vm = await newVm();
    const stream = vm.execStream("echo started; sleep 3; touch /tmp/survived");
    for await (const chunk of stream) {
      assert.equal(chunk.text, "started\n");
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 4000));
    const check = await vm.exec("test -e /tmp/survived && echo yes || echo no");
    assert.equal(check.stdout, "no\n");
  });

  test("files: write, read, list and remove, bytes exact", async () => {
    const vm = await newVm();
    await vm.fs.writeFile("/tmp/dir with space/hello.txt", "héllo\n");
    assert.equal(await vm.fs.readFile("/tmp/dir with space/hello.txt", "utf8"), "héllo\n");
    const bytes = new Uint8Array(70000).map((_, i) => (i * 7) % 256);
    await vm.fs.writeFile("tmp/bytes.bin", bytes);
    assert.deepEqual(await vm.fs.readFile("/tmp/bytes.bin"), bytes);
    const entries = await vm.fs.readdir("/tmp/dir with space");
    assert.deepEqual(
      entries.map((e) => [e.name, e.kind, e.size]),
      [["hello.txt", "file", 7]],
    );
    await vm.fs.remove("/tmp/dir with space/hello.txt");
    await rejectsWith(vm.fs.readFile("/tmp/dir with space/hello.txt"), 404, "not_found");
  });

  test("a hostile path never reaches another endpoint of the API", async () => {
    // An agent's path with dot segments would, once the URL resolves them,
    // name another endpoint (here: deleting a repository). The SDK
    // refuses it before sending anything.
    const sent = [];
    const spy = new Forge({
      baseUrl: env.FORGE_URL,
      token: env.FORGE_TOKEN,
      fetch: (url, init) => {
        sent.push(`${init.method} ${url}`);
        return fetch(url, init);
      },
    });
    const vm = spy.vms.ref("sb0000");
    for (const path of ["../../../repos/user/repo", "tmp/%2e%2E/x", "/tmp/./x", "a//b"]) {
      await rejectsWith(vm.fs.remove(path), 0, "bad_request");
      await rejectsWith(vm.fs.readFile(path), 0, "bad_request");
    }
    await rejectsWith(spy.vms.get(".."), 0, "bad_request");
    await rejectsWith(spy.webhooks.delete(repo, "%2e%2e"), 0, "bad_request");
    assert.throws(() => vm.ports.url(8080, "../../../tokens"), ForgeError);
    for (const path of ["a/%2E%2e/b?x=1", "..\\..\\..\\..\\tokens", ".\t./.\t./.\t./.\t./tokens", "a\n/..\n/x"]) {
      assert.throws(() => vm.ports.url(8080, path), ForgeError, JSON.stringify(path));
      await rejectsWith(vm.ports.fetch(8080, path, { method: "DELETE" }), 0, "bad_request");
    }
    assert.throws(() => spy.git.repos.nameOf(`${env.FORGE_URL}/acme/app/../../tokens`), ForgeError);
    assert.throws(() => spy.git.repos.nameOf(`${env.FORGE_URL}/acme/app/extra`), ForgeError);
    assert.equal(vm.ports.url(8080, "a/b?next=../x").endsWith("/ports/8080/a/b?next=../x"), true);
    assert.deepEqual(sent, []);
    assert.ok(await forge.git.repos.get(repo));
  });

  test("fork, pause to disk and resume keep memory, processes and disk", async () => {
    const vm = await newVm({ persistence: { type: "persistent" } });
    await vm.exec(
      "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' >/dev/null 2>&1 &",
    );
    await vm.fs.writeFile("/tmp/mark", "parent");
    const count = async (v) => Number((await v.exec("cat /tmp/count 2>/dev/null || echo 0")).stdout);
    await eventually("the counter starts", async () => (await count(vm)) > 2);

    const { forks } = await vm.fork({ count: 3 });
    made.push(...forks);
    assert.equal(forks.length, 3);
    for (const [i, fork] of forks.entries()) {
      assert.notEqual(fork.id, vm.id);
      assert.equal(fork.view.parent, vm.id);
      assert.equal(await fork.fs.readFile("/tmp/mark", "utf8"), "parent");
      await fork.fs.writeFile("/tmp/mark", `fork ${i}`);
    }
    for (const [i, fork] of forks.entries()) {
      assert.equal(await fork.fs.readFile("/tmp/mark", "utf8"), `fork ${i}`);
    }
    assert.equal(await vm.fs.readFile("/tmp/mark", "utf8"), "parent");

    const before = await count(vm);
    const paused = await vm.pause({ toDisk: true });
    assert.equal(paused.state, "paused_to_disk");
    const resumed = await vm.resume();
    assert.equal(resumed.state, "running");
    const at = await count(vm);
    assert.ok(at >= before, `the counter went back from ${before} to ${at}`);
    if (resumed.kept.includes("processes")) {
      await eventually("the counter goes on", async () => (await count(vm)) > at);
    }
    await vm.pause();
    assert.equal((await vm.refresh()).state, "paused");
    // An exec resumes a paused VM by itself.
    assert.equal((await vm.exec("cat /tmp/mark")).stdout, "parent");
  });

  test("snapshots: take one, start VMs from it, list and delete it", async () => {
    const vm = await newVm();
    await vm.fs.writeFile("/root/kept", "from the snapshot");
    const name = unique("snap");
    const snapshot = await vm.snapshot({ name });
    assert.equal(snapshot.name, name);
    assert.ok(snapshot.kept.includes("disk"));
    assert.ok(snapshot.disk_bytes > 0, JSON.stringify(snapshot));
    const copies = await Promise.all([1, 2].map(() => newVm({ snapshot: name })));
    for (const copy of copies) {
      assert.equal(copy.view.snapshot, snapshot.id);
      assert.equal(await copy.fs.readFile("/root/kept", "utf8"), "from the snapshot");
    }
    assert.ok((await forge.snapshots.list()).some((s) => s.id === snapshot.id));
    assert.equal((await forge.snapshots.get(snapshot.id)).name, name);
    await forge.snapshots.delete(name);
    await rejectsWith(forge.snapshots.get(name), 404, "not_found");
    await rejectsWith(forge.vms.create({ snapshot: name }), 404, "not_found");
  });

  test("templates: build one, follow the build, start a VM from it", async () => {
    const name = unique("tpl");
    const started = await forge.templates.build({
      name,
      run: [`echo ${name} > /opt/made-by`],
      workdir: "/opt",
      env: { TEMPLATE_NAME: name },
    });
    assert.equal(started.name, name);
    const seen = [];
    let done;
    for await (const event of forge.templates.follow(name)) {
      seen.push(event.event);
      if (event.event === "done") {
        done = event.data;
      }
    }
    assert.ok(seen.includes("log"), seen.join(","));
    assert.equal(done.state, "ready", JSON.stringify(done));
    assert.match(await forge.templates.log(name), /==> \[\d+\/\d+\]/);
    const again = await forge.templates.build({
      name,
      run: [`echo ${name} > /opt/made-by`],
      workdir: "/opt",
      env: { TEMPLATE_NAME: name },
    });
    assert.equal(again.reused, true);
    const vm = await newVm({ template: name });
    assert.equal(vm.view.template, name);
    const out = await vm.exec('cat made-by; echo "$TEMPLATE_NAME"');
    assert.equal(out.stdout, `${name}\n${name}\n`);
    assert.ok((await forge.templates.list()).some((t) => t.name === name));
    await forge.templates.delete(name);
    await rejectsWith(forge.templates.get(name), 404, "not_found");
  });

  test("ports: a server in the VM, through the forge and a share link", async () => {
    const vm = await newVm();
    await vm.exec(
      "nohup bun -e 'Bun.serve({ port: 8080, fetch: (r) => new Response(\"hi from \" + new URL(r.url).pathname) })' >/tmp/server.log 2>&1 &",
    );
    const text = await eventually("the server answers", async () => {
      const response = await vm.ports.fetch(8080, "/some/path");
      return response.ok ? response.text() : null;
    });
    assert.equal(text, "hi from /some/path");
    assert.match(vm.ports.url(8080, "x"), /\/v1\/vms\/.+\/ports\/8080\/x$/);
    const link = await vm.ports.share(8080, { ttlSeconds: 600 });
    assert.equal(link.ttl_secs, 600);
    // Without any token: the link's own credential.
    const shared = await fetch(link.url);
    assert.equal(shared.status, 200);
    assert.equal(await shared.text(), "hi from /");
    await rejectsWith(vm.ports.share(8080, { ttlSeconds: 0 }), 400, "bad_request");
  });

  test("terminal: keystrokes in, output out, the exit code on close", async () => {
    const vm = await newVm();
    const terminal = await vm.terminal({ cols: 100, rows: 30 });
    terminal.write("echo $((6*7)); stty size; exit 5\n");
    let output = "";
    for await (const chunk of terminal) {
      output += new TextDecoder().decode(chunk);
    }
    assert.match(output, /42\r\n30 100\r\n/);
    assert.deepEqual(await terminal.closed, { code: 1000, reason: "exited with code 5" });
  });
});

describe("git", () => {
  test("repositories: create, list, get, branches, contents, delete", async () => {
    const name = `sdk/${unique("empty")}`;
    const created = await forge.git.repos.create({ name, defaultBranch: "trunk" });
    assert.equal(created.name, name);
    assert.equal(created.default_branch, "trunk");
    assert.ok((await forge.git.repos.list()).some((r) => r.name === name));
    assert.equal((await forge.git.repos.get(name)).id, created.id);
    assert.deepEqual(await forge.git.repos.branches(name), []);
    await rejectsWith(forge.git.repos.create({ name }), 409, "conflict");
    await forge.git.repos.delete(name);
    await rejectsWith(forge.git.repos.get(name), 404, "not_found");

    const branches = await forge.git.repos.branches(repo);
    assert.ok(branches.some((b) => b.name === "main"));
    const root = await forge.git.repos.contents(repo);
    assert.equal(root.type, "dir");
    assert.ok(root.entries.some((e) => e.name === "package.json"));
    const file = await forge.git.repos.contents(repo, { path: "package.json", branch: "main" });
    assert.equal(file.type, "file");
    assert.match(file.text, /"test"/);
  });

  test("a repository imported from a URL, and a VM with its checkout", async () => {
    const name = `acme/${unique("app")}`;
    const imported = await forge.git.repos.create({ name, source: { url: env.FORGE_TEMPLATE_URL } });
    assert.equal(imported.name, name);
    assert.ok((await forge.git.repos.branches(name)).length > 0);
    const byUrl = await forge.vms.create({ git: { repos: [{ repo: imported.clone_url }] } });
    made.push(byUrl.vm);
    assert.equal(byUrl.repo, name);
    const listing = await byUrl.vm.exec("ls /workspace");
    assert.match(listing.stdout, /package\.json/);
    await rejectsWith(
      forge.git.repos.create({ name: `acme/${unique("bad")}`, source: { url: "http://127.0.0.1:9/x.git" } }),
      422,
      "import_failed",
    );
  });

  test("events: the history, then a new push wakes the long poll", async () => {
    const seen = [];
    for await (const event of forge.git.repos.events(repo, { waitSeconds: 1 })) {
      seen.push(event);
      if (event.kind === "push") {
        break;
      }
    }
    assert.equal(seen.at(-1).kind, "push");
    const { next_cursor } = await forge.git.repos.eventPage(repo, { after: 0, limit: 1000 });

    const controller = new AbortController();
    const waiting = (async () => {
      for await (const event of forge.git.repos.events(repo, {
        after: next_cursor,
        waitSeconds: 30,
        signal: controller.signal,
      })) {
        return event;
      }
    })();
    const work = mkdtempSync(join(tmpdir(), "sdk-push-"));
    try {
      const url = new URL(`${env.FORGE_URL}/${repo}.git`);
      url.username = "git";
      url.password = env.FORGE_TOKEN;
      const git = (...args) => execFileSync("git", ["-C", work, ...args], { stdio: "pipe" });
      execFileSync("git", ["clone", "--quiet", url.toString(), work], { stdio: "pipe" });
      const branch = unique("feature-");
      git("-c", "user.name=sdk", "-c", "user.email=sdk@example.com", "commit", "--quiet", "--allow-empty", "-m", "wake");
      git("push", "--quiet", "origin", `HEAD:refs/heads/${branch}`);
      const event = await waiting;
      assert.ok(event.id > next_cursor);
      assert.equal(event.repo, repo);
    } finally {
      controller.abort();
      rmSync(work, { recursive: true, force: true });
    }
  });

  test("runs: list, detail, whole logs and followed logs", async () => {
    const runs = await forge.git.repos.runs(repo, { limit: 50 });
    const run = runs.find((r) => r.state === "passed");
    assert.ok(run, `a passed run in ${JSON.stringify(runs.map((r) => r.state))}`);
    const detail = await forge.runs.get(run.id);
    assert.deepEqual(
      detail.steps.map((s) => s.name),
      run.steps.map((s) => s.name),
    );
    const text = await forge.runs.logs(run.id);
    assert.match(text, /== test \(passed\) ==/);
    const events = [];
    for await (const event of forge.runs.follow(run.id)) {
      events.push(event);
    }
    assert.equal(events.at(-1).event, "end");
    assert.equal(events.at(-1).data.state, "passed");
    assert.ok(events.some((e) => e.event === "step" && e.data.name === "test"));
    assert.ok(events.some((e) => e.event === "log"));
    await rejectsWith(forge.runs.get(987654321), 404, "not_found");
  });

  test("runs: re-run one; a finished run is not cancelled", async () => {
    const runs = await forge.git.repos.runs(repo, { limit: 50 });
    const run = runs.find((r) => r.state === "passed");
    const again = await forge.runs.rerun(run.id);
    assert.notEqual(again.id, run.id);
    assert.deepEqual([again.branch, again.commit_id], [run.branch, run.commit_id]);
    await rejectsWith(forge.runs.cancel(run.id), 409, "conflict");
    const ended = await eventually(
      "the re-run ends",
      async () => {
        const detail = await forge.runs.get(again.id);
        return !["queued", "running"].includes(detail.state) && detail;
      },
      120,
    );
    assert.equal(ended.state, "passed", ended.error ?? "");
  });
});

describe("webhooks and tokens", () => {
  test("webhooks: create, ping, deliveries, redeliver, update, delete", async () => {
    const received = [];
    const server = createServer((request, response) => {
      let body = "";
      request.on("data", (chunk) => {
        body += chunk;
      });
      request.on("end", () => {
        received.push({ headers: request.headers, body });
        response.end("ok");
      });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${server.address().port}/hook`;
      // Every invalid field is named at once.
      await assert.rejects(
        forge.webhooks.create(repo, { url: "ftp://nowhere", events: ["pushh"], branches: ["[x"] }),
        (error) => {
          assert.equal(error.code, "bad_request");
          assert.deepEqual(error.fields.map((f) => f.field), ["url", "events", "branches"]);
          return true;
        },
      );
      const hook = await forge.webhooks.create(repo, { url, events: ["*"] });
      assert.equal(hook.url, url);
      assert.ok(hook.secret, "the secret is shown on creation");
      assert.ok((await forge.webhooks.list(repo)).some((h) => h.id === hook.id));
      assert.equal((await forge.webhooks.get(repo, hook.id)).id, hook.id);
      const { delivery_id } = await forge.webhooks.ping(repo, hook.id);
      await eventually("the ping arrives", () => received.length > 0);
      const delivered = await eventually("the delivery is recorded", async () => {
        const page = await forge.webhooks.deliveries(repo, hook.id);
        return page.deliveries.find((d) => d.id === delivery_id && d.status === "delivered");
      });
      assert.equal(delivered.id, delivery_id);
      assert.equal((await forge.webhooks.delivery(repo, hook.id, delivery_id)).id, delivery_id);
      await forge.webhooks.redeliver(repo, hook.id, delivery_id);
      await eventually("the redelivery arrives", () => received.length > 1);
      const updated = await forge.webhooks.update(repo, hook.id, { active: false, branches: ["main"] });
      assert.equal(updated.active, false);
      assert.deepEqual(updated.branches, ["main"]);
      await forge.webhooks.delete(repo, hook.id);
      await rejectsWith(forge.webhooks.get(repo, hook.id), 404, "not_found");
    } finally {
      server.close();
    }
  });

  test("tokens: create a limited one, use it, revoke it", async () => {
    const token = await forge.tokens.create({ name: unique("reader-"), scopes: ["repo:read"], repo });
    assert.ok(token.token, "the secret is shown once");
    assert.ok((await forge.tokens.list()).some((t) => t.id === token.id && !t.token));
    const reader = new Forge({ baseUrl: env.FORGE_URL, token: token.token });
    assert.equal((await reader.git.repos.get(repo)).name, repo);
    await rejectsWith(reader.git.repos.create({ name: `sdk/${unique("no")}` }), 403, "forbidden");
    await forge.tokens.revoke(token.id);
    await rejectsWith(reader.git.repos.get(repo), 401, "unauthorized");
  });
});
