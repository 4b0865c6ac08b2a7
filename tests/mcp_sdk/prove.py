"""The official MCP Python SDK (PyPI `mcp`, v2) against a running portcullis.

Run by tests/it/mcp_sdk.rs against the real binary, once per mode:

    prove.py URL TOKEN ADMIN_URL APPROVER1 APPROVER2 legacy|auto

`legacy` connects with the initialize handshake (sessions) and waits for a parked call
through the `portcullis.approval_status` tool; `auto` probes `server/discover`, adopts
2026-07-28 and waits through the tasks extension (`resultType: "task"`, `tasks/get`).
Each step asserts; the last line printed is a JSON summary the Rust test checks too.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from pydantic import ConfigDict, Field, TypeAdapter

URL, TOKEN, ADMIN, APPROVER1, APPROVER2, MODE = sys.argv[1:7]


async def approve(approval_id: str) -> None:
    """The operators approve through the admin API (two of them: the refund is critical)."""
    async with httpx2.AsyncClient(base_url=ADMIN, timeout=30) as admin:
        for who in (APPROVER1, APPROVER2):
            r = await admin.post(
                f"/approvals/{approval_id}/approve",
                headers={"Authorization": f"Bearer {who}"},
                json={"comment": "ok from the SDK test"},
            )
            assert r.status_code < 300, (r.status_code, r.text)


class TaskHandle(types.Result):
    """`CreateTaskResult` of the tasks extension (2026-07-28)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    result_type: Literal["task"] = Field(alias="resultType")
    task_id: str = Field(alias="taskId")
    status: str


class TasksGet(types.Request[types.GetTaskRequestParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: types.GetTaskRequestParams
    name_param = "taskId"


SEEN: dict[str, Any] = {}


async def resolve_task(handle: TaskHandle, ctx: ClaimContext) -> types.CallToolResult:
    """Polls the task while the operators approve; returns the replayed result."""
    SEEN["task_id"] = handle.task_id
    SEEN["task_status_at_creation"] = handle.status
    await approve(handle.task_id)
    statuses = []
    with anyio.fail_after(60):
        while True:
            raw = await ctx.session.send_request(
                TasksGet(params=types.GetTaskRequestParams(task_id=handle.task_id)),
                TypeAdapter(dict[str, Any]),
            )
            statuses.append(raw["status"])
            if raw["status"] not in ("working", "input_required"):
                break
            await anyio.sleep(raw.get("pollIntervalMs", 500) / 1000 / 10)
    SEEN["task_statuses"] = sorted(set(statuses))
    assert raw["status"] == "completed", raw
    return types.CallToolResult.model_validate(raw["result"])


class Tasks(ClientExtension):
    identifier = "io.modelcontextprotocol/tasks"

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=resolve_task)]


async def main() -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    transport = streamable_http_client(URL, http_client=http)
    extensions = [Tasks()] if MODE == "auto" else []
    async with Client(transport, mode=MODE, extensions=extensions) as client:
        summary: dict[str, Any] = {"mode": MODE, "protocol_version": client.protocol_version}
        tools = await client.list_tools()
        summary["tools"] = sorted(t.name for t in tools.tools)
        risk = {t.name: (t.meta or {}).get("portcullis/risk") for t in tools.tools}
        summary["refund_risk"] = risk.get("tickets.refund")

        ok = await client.call_tool("tickets.get", {"id": "42"})
        assert not ok.is_error, ok
        summary["allowed"] = ok.structured_content

        denied = await client.call_tool("tickets.delete", {"id": "42"})
        assert denied.is_error, denied
        summary["denied_text"] = denied.content[0].text
        summary["denied_reason"] = (denied.structured_content or {}).get("reason")

        if MODE == "auto":
            refund = await client.call_tool("tickets.refund", {"id": "9", "body": {"amount": 5}})
            summary.update(SEEN)
        else:
            parked = await client.call_tool("tickets.refund", {"id": "9", "body": {"amount": 5}})
            assert not parked.is_error, parked
            approval = (parked.meta or {})["portcullis/approval"]
            summary["parked_text"] = parked.content[0].text
            await approve(approval["approval_id"])
            with anyio.fail_after(60):
                while True:
                    refund = await client.call_tool(
                        "portcullis.approval_status",
                        {"approval_id": approval["approval_id"], "wait_seconds": 20},
                    )
                    status = (refund.meta or {})["portcullis/approval"]["status"]
                    if status not in ("pending", "approved", "executing"):
                        break
            summary["approval_status"] = status
        assert not refund.is_error, refund
        summary["refund"] = refund.structured_content
    await http.aclose()
    print(json.dumps(summary))


anyio.run(main)
