"""The program users of hosted sandbox platforms write, on the forge, in
Python: an agent's VM forked into three, each fork given a task, lint and
tests run, a persistent VM made and a repository imported.

    FORGE_URL=http://127.0.0.1:3000 FORGE_TOKEN=forge_... \\
    EXAMPLE_REPO=http://127.0.0.1:3000/user/repo.git \\
    EXAMPLE_TEMPLATE=https://github.com/user/template.git \\
    python examples/yardstick.py
"""

import asyncio
import os
import time

from forge_sdk import AsyncForge, Vm


async def ai(vm: Vm, task: str) -> None:
    """Stands in for an agent: writes its task down and commits it."""
    await vm.fs.write_file("/workspace/TASK.md", f"{task}\n")
    out = await vm.exec(
        "git add TASK.md && git -c user.name=agent -c user.email=agent@example.com commit -qm task",
        cwd="/workspace",
    )
    if out.exit_code != 0:
        raise RuntimeError(f"the agent's commit failed: {out.stderr}")


async def main() -> None:
    base = os.environ["FORGE_URL"]
    repo = os.environ.get("EXAMPLE_REPO", f"{base}/user/repo.git")
    template = os.environ.get("EXAMPLE_TEMPLATE", "https://github.com/user/template.git")
    async with AsyncForge(base, os.environ["FORGE_TOKEN"]) as forge:
        vm = await forge.vms.create(repo=repo)
        forks = await vm.fork(count=3)
        await asyncio.gather(
            ai(forks[0], "Build the API endpoints"),
            ai(forks[1], "Build the frontend UI"),
            ai(forks[2], "Write the test suite"),
        )
        lint = (await vm.exec("bun run lint", cwd="/workspace")).stdout
        test = await vm.exec("bun test", cwd="/workspace")
        persistent = await forge.vms.create(persistence={"type": "persistent"}, idle_timeout_seconds=60)
        app = await forge.git.repos.create(f"acme/app-py-{int(time.time() * 1000):x}", source_url=template)

        print(f"vm {vm.id} forked into {', '.join(f.id for f in forks)}")
        for fork in forks:
            print(f"{fork.id}: {(await fork.fs.read_file('/workspace/TASK.md', 'utf-8')).strip()}")
        print(f"lint: {lint.strip()!r}")
        print(f"test: {'1 pass' if '1 pass' in test.stdout + test.stderr else test.stderr}")
        print(f"persistent vm {persistent.id}: idle timeout {persistent.view.idle_timeout_secs} s")
        print(f"repository {app.name} imported, default branch {app.default_branch}")

        for v in [*forks, vm, persistent]:
            await v.delete()
        await forge.git.repos.delete(app.name)


if __name__ == "__main__":
    asyncio.run(main())
