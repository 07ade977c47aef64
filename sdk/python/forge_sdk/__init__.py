"""The forge's Python SDK: sandboxes you can fork, pause and resume, and the
git repositories, runs, webhooks and tokens of a forge.

    from forge_sdk import Forge

    with Forge("http://127.0.0.1:3000", token) as forge:
        vm = forge.vms.create(repo="acme/app")
        print(vm.exec("bun test", cwd="/workspace").stdout)

`AsyncForge` is the same surface for asyncio. Every failure is a
`ForgeError` with `status`, `code` and `message`.
"""

from . import types
from ._load import LoadError
from .client import (
    AsyncExecStream,
    AsyncForge,
    AsyncTerminal,
    ExecStream,
    Forge,
    ForgeError,
    OutputChunk,
    Terminal,
    Vm,
    VmFiles,
    VmPorts,
)

__all__ = [
    "AsyncExecStream",
    "AsyncForge",
    "AsyncTerminal",
    "ExecStream",
    "Forge",
    "ForgeError",
    "LoadError",
    "OutputChunk",
    "Terminal",
    "Vm",
    "VmFiles",
    "VmPorts",
    "types",
]
