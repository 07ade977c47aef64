"""The forge's MCP server driven by the MCP project's own Python client:
`forge mcp` over stdio, and `/v1/mcp` over streamable HTTP, each through
initialize, tools/list and tools/call.

The harness (tests/tests/sdk.rs) sets FORGE_URL, FORGE_TOKEN (admin) and
FORGE_BIN (the forge binary).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from contextlib import asynccontextmanager

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

for _name in ("FORGE_URL", "FORGE_TOKEN", "FORGE_BIN"):
    if not os.environ.get(_name):
        raise RuntimeError(f"{_name} is not set: run this suite through tests/tests/sdk.rs")

URL = os.environ["FORGE_URL"]
TOKEN = os.environ["FORGE_TOKEN"]
TOOLS = {
    "create_vm", "list_vms", "exec", "fork_vm", "pause_vm", "resume_vm", "delete_vm",
    "read_file", "write_file", "list_files", "create_repo", "list_repos", "list_runs", "run_logs",
    "cancel_run", "rerun",
}


@asynccontextmanager
async def over_stdio(token: str = TOKEN):
    server = StdioServerParameters(
        command=os.environ["FORGE_BIN"],
        args=["mcp"],
        env={"FORGE_URL": URL, "FORGE_TOKEN": token, "RUST_LOG": "warn"},
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        yield session


@asynccontextmanager
async def over_http(token: str = TOKEN):
    headers = {"authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
        async with streamable_http_client(f"{URL}/v1/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                yield session


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "text", None))


async def round_trip(connect) -> None:
    async with connect() as session:
        init = await session.initialize()
        assert init.server_info.name == "forge"
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert TOOLS <= set(tools), sorted(tools)
        assert "command" in tools["exec"].input_schema["properties"]
        # The run tools reach the runs API: an unknown run is named.
        for tool in ("cancel_run", "rerun"):
            missing = await session.call_tool(tool, {"run": 987654321})
            assert missing.is_error and "run 987654321 does not exist" in text_of(missing), text_of(missing)

        created = await session.call_tool("create_vm", {"persistent": True})
        assert not created.is_error, text_of(created)
        vm = created.structured_content["id"]
        try:
            ran = await session.call_tool("exec", {"vm": vm, "command": "echo hi from $(pwd); echo oops >&2"})
            assert not ran.is_error, text_of(ran)
            assert "exit code 0" in text_of(ran) and "hi from /" in text_of(ran)
            assert ran.structured_content["stderr"] == "oops\n"
            failed = await session.call_tool("exec", {"vm": vm, "command": "exit 7"})
            assert failed.is_error and "exit code 7" in text_of(failed)

            wrote = await session.call_tool("write_file", {"vm": vm, "path": "/tmp/mcp/note.txt", "content": "héllo"})
            assert not wrote.is_error, text_of(wrote)
            read = await session.call_tool("read_file", {"vm": vm, "path": "/tmp/mcp/note.txt"})
            assert text_of(read) == "héllo"
            listed = await session.call_tool("list_files", {"vm": vm, "path": "/tmp/mcp"})
            assert "note.txt" in text_of(listed)
            # A path that would reach another endpoint is invalid params.
            try:
                await session.call_tool("read_file", {"vm": vm, "path": "/tmp/../../../v1/tokens"})
                raise AssertionError("a path with `..` was accepted")
            except MCPError as error:
                assert error.code == -32602, error

            forked = await session.call_tool("fork_vm", {"vm": vm, "count": 1})
            assert not forked.is_error, text_of(forked)
            child = forked.structured_content["forks"][0]["id"]
            assert text_of(await session.call_tool("read_file", {"vm": child, "path": "/tmp/mcp/note.txt"})) == "héllo"
            await session.call_tool("delete_vm", {"vm": child})

            paused = await session.call_tool("pause_vm", {"vm": vm, "to_disk": True})
            assert paused.structured_content["state"] == "paused_to_disk", text_of(paused)
            resumed = await session.call_tool("resume_vm", {"vm": vm})
            assert resumed.structured_content["state"] == "running", text_of(resumed)

            missing = await session.call_tool("exec", {"vm": "nosuchvm", "command": "true"})
            assert missing.is_error and "not_found" in text_of(missing)

            # A big file is read only as far as the tool answers.
            await session.call_tool("exec", {"vm": vm, "command": "head -c 3000000 /dev/zero | tr '\\0' '\\377' > /tmp/big"})
            big = await session.call_tool("read_file", {"vm": vm, "path": "/tmp/big"})
            assert not big.is_error and len(text_of(big).encode()) < 1_000_000
            assert "the file goes on" in text_of(big)
        finally:
            await session.call_tool("delete_vm", {"vm": vm})

        repos = await session.call_tool("list_repos", {})
        assert not repos.is_error, text_of(repos)


def test_stdio_round_trip():
    asyncio.run(round_trip(over_stdio))


def test_streamable_http_round_trip():
    asyncio.run(round_trip(over_http))


def test_stdio_needs_a_token_given_explicitly():
    # Never the data directory's admin token behind the user's back.
    env = {k: v for k, v in os.environ.items() if k != "FORGE_TOKEN"}
    done = subprocess.run([os.environ["FORGE_BIN"], "mcp"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "FORGE_TOKEN" in done.stderr, done.stderr


def test_http_needs_a_token_and_refuses_browsers():
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"accept": "application/json, text/event-stream"}
    none = httpx2.post(f"{URL}/v1/mcp", json=body, headers=accept)
    assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
    bad = httpx2.post(f"{URL}/v1/mcp", json=body, headers={**accept, "authorization": "Bearer forge_nope"})
    assert bad.status_code == 401
    page = httpx2.post(
        f"{URL}/v1/mcp",
        json=body,
        headers={**accept, "authorization": f"Bearer {TOKEN}", "origin": "https://evil.example"},
    )
    assert page.status_code == 403, page.text


def test_the_callers_token_decides_what_a_tool_may_do():
    async def flow():
        created = httpx2.post(
            f"{URL}/v1/tokens",
            json={"name": "mcp-reader", "scopes": ["repo:read"]},
            headers={"authorization": f"Bearer {TOKEN}"},
        ).json()
        try:
            for connect in (over_stdio, over_http):
                async with connect(created["token"]) as session:
                    await session.initialize()
                    refused = await session.call_tool("create_vm", {})
                    assert refused.is_error and "forbidden" in text_of(refused), text_of(refused)
        finally:
            httpx2.delete(f"{URL}/v1/tokens/{created['id']}", headers={"authorization": f"Bearer {TOKEN}"})

    asyncio.run(flow())
