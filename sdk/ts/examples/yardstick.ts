// The program users of hosted sandbox platforms write, on the forge: only
// the import, the client's construction and the repositories' URLs differ.
//
//   FORGE_URL=http://127.0.0.1:3000 FORGE_TOKEN=forge_... \
//   EXAMPLE_REPO=http://127.0.0.1:3000/user/repo.git \
//   EXAMPLE_TEMPLATE=https://github.com/user/template.git \
//   bun examples/yardstick.ts

import { Forge, type Vm } from "../src/index.js"; // in an app: from "@forge-sandbox/sdk"

const forge = new Forge({ baseUrl: process.env.FORGE_URL, token: process.env.FORGE_TOKEN });
const repoUrl = process.env.EXAMPLE_REPO ?? `${process.env.FORGE_URL}/user/repo.git`;
const templateUrl = process.env.EXAMPLE_TEMPLATE ?? "https://github.com/user/template.git";

/** Stands in for an agent: writes its task down and commits it in the fork. */
async function ai(vm: Vm, task: string): Promise<void> {
  await vm.fs.writeFile("/workspace/TASK.md", `${task}\n`);
  const { exit_code, stderr } = await vm.exec(
    "git add TASK.md && git -c user.name=agent -c user.email=agent@example.com commit -qm task",
    { cwd: "/workspace" },
  );
  if (exit_code !== 0) {
    throw new Error(`the agent's commit failed: ${stderr}`);
  }
}

const { vm } = await forge.vms.create({ git: { repos: [{ repo: repoUrl }] } });
const { forks } = await vm.fork({ count: 3 });
await Promise.all([
  ai(forks[0], "Build the API endpoints"),
  ai(forks[1], "Build the frontend UI"),
  ai(forks[2], "Write the test suite"),
]);
const { stdout: lint } = await vm.exec("bun run lint", { cwd: "/workspace" });
const { stdout: test, stderr: testReport } = await vm.exec("bun test", { cwd: "/workspace" });
const { vm: persistentVm } = await forge.vms.create({
  persistence: { type: "persistent" },
  idleTimeoutSeconds: 60,
});
const app = await forge.git.repos.create({
  name: `acme/app-${Date.now().toString(36)}`,
  source: { url: templateUrl },
});

console.log(`vm ${vm.id} forked into ${forks.map((f) => f.id).join(", ")}`);
for (const fork of forks) {
  console.log(`${fork.id}: ${(await fork.fs.readFile("/workspace/TASK.md", "utf8")).trim()}`);
}
console.log(`lint: ${JSON.stringify(lint.trim())}`);
console.log(`test: ${(test + testReport).includes("1 pass") ? "1 pass" : (test + testReport).trim()}`);
console.log(`persistent vm ${persistentVm.id}: idle timeout ${persistentVm.view.idle_timeout_secs} s`);
console.log(`repository ${app.name} imported, default branch ${app.default_branch}`);

for (const v of [...forks, vm, persistentVm]) {
  await v.delete();
}
await forge.git.repos.delete(app.name);
