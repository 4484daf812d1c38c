"""The audit benchmark's ledger: ~1,000 delegations recorded the way the engine records them.

Without OpenCode: each request is judged by the real gate on the context the engine's own
`build_context` reads from the ledger, then recorded (delegation.requested, gate.decided with its
`evaluated_at` and `facts`); approved hops get agent.spawned, messages, tool calls, permission
decisions, outputs and a terminal event; some are refused (CYC-01 hand-backs, ATT-01: a researcher
holding read scopes only delegating write), some subtrees revoked, some budgets overrun.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gate
from engine.chain_context import build_context
from engine.permissions import PermissionPolicy
from ledger import Ledger, canonical_bytes
from schemas.events import (
    AgentCompleted,
    AgentFailed,
    AgentSpawned,
    BudgetExceeded,
    ConstitutionLoaded,
    DelegationRequested,
    DelegationRevoked,
    GateDecided,
    MessageSent,
    OutputReceived,
    PermissionDecided,
    Tokens,
    ToolCalled,
)
from schemas.requests import SpawnRequest

TASK = "550e8400-e29b-41d4-a716-446655440000"
ROLES = ("backend_specialist", "frontend_specialist", "researcher", "reviewer", "tester")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def root_request(project: str, n: int) -> dict[str, Any]:
    return {
        "role": "backend_specialist",
        "task_id": TASK,
        "project_directory": project,
        "instructions": f"[bench-{n}] Implement part {n} of the OAuth2 endpoints",
        "expected_output": "a patch",
        "original_task": {
            "task_id": TASK,
            "title": "Implement OAuth2 authentication",
            "description": "OAuth2 endpoints with JWT and tests",
            "requester": "Auctor",
            "requested_at": "2025-10-01T08:00:00Z",
        },
        "cap_origin": {
            "ultimate_authority": "Auctor",
            "original_scope": "Full system development authority",
            "granted_at": "2025-10-01T07:30:00Z",
            "grant_context": "bench charter",
            "scopes": ["repo:src/**#fs", "shell#exec"],
        },
        "delegation_context": {
            "delegator": "Project Manager",
            "delegator_cap": "Delegation authority (Auctor)",
            "delegated_to": "backend_specialist",
            "delegated_cap": "Implement OAuth2 flow",
            "constraints": ["Use Serena tools only", "Return reproducible test plan"],
            "phantom_level": "Delegation/Cap",
            "delegated_at": _stamp(),
            "scopes": ["repo:src/**#fs", "shell#exec"],
            "budget": {"max_tokens": 200_000},
        },
    }


def child_request(parent: dict[str, Any], role: str, n: int, tokens: int) -> dict[str, Any]:
    req = copy.deepcopy(parent)
    pdc = parent["delegation_context"]
    req["role"] = role
    req["instructions"] = f"[bench-{n}] {role}: part {n}"
    scopes = (
        ["repo:src/**#fs/write", "repo:src/**#fs/read"] if role != "researcher" else ["repo:src/**#fs/read"]
    )
    req["delegation_context"] = {
        **pdc,
        "delegator": pdc["delegated_to"],
        "delegator_cap": pdc["delegated_cap"],
        "delegated_to": role,
        "delegated_cap": f"{role} work on part {n}",
        "constraints": [*pdc["constraints"], f"Touch part {n} only"],
        "delegated_at": _stamp(),
        "scopes": scopes,
        "budget": {"max_tokens": tokens},
    }
    return req


class Builder:
    """Records delegations as DelegationService.spawn does, then what a supervised agent does."""

    def __init__(self, led: Ledger, constitution: gate.Constitution, project: str) -> None:
        self.led, self.constitution, self.project = led, constitution, project
        self.known = frozenset(ROLES)
        self.n = 0
        #: the policies of the agents, by session (a write limited to scope paths is asked about first)
        self.policies: dict[str, PermissionPolicy] = {}
        led.append(
            "ledger",
            ConstitutionLoaded(
                ruleset_hash=constitution.ruleset_hash,
                profile=constitution.profile,
                document={"rules_version": gate.RULES_VERSION, **constitution.model_dump(mode="json")},
            ),
        )

    def spawn(self, raw: dict[str, Any], parent: str | None, depth: int) -> str | None:
        self.n += 1
        sid = f"{self.n:08d}-bench-{hashlib.sha256(str(self.n).encode()).hexdigest()[:12]}"
        led = self.led
        led.append(sid, DelegationRequested(request=raw, via="mcp", caller=parent, parent_session_id=parent))
        ctx = build_context(led, raw, parent, self.known)
        now = datetime.now(UTC)
        verdict = gate.evaluate(raw, ctx, now, self.constitution)
        d = ctx.directory
        facts = {
            "known_roles": sorted(self.known),
            "parents": [h.session_id for h in ctx.parents],
            "directory": None
            if d is None
            else {"path": d.path, "exists": d.exists, "is_dir": d.is_dir, "real_path": d.real_path},
        }
        led.append(
            sid,
            GateDecided(
                verdict=verdict,
                task_id=raw["task_id"],
                role=raw["role"],
                parent_session_id=parent,
                depth=depth,
                request_hash=hashlib.sha256(canonical_bytes(raw)).hexdigest(),
                evaluated_at=now,
                facts=facts,
            ),
        )
        if verdict.decision != "approved":
            return None
        req = SpawnRequest.model_validate(raw)
        root = sid if parent is None else led.session(parent).root_session_id  # type: ignore[union-attr]
        budget = req.delegation_context.budget
        led.append(
            sid,
            AgentSpawned(
                session_id=sid,
                task_id=req.task_id,
                role=req.role,
                parent_session_id=parent,
                root_session_id=root,
                depth=depth,
                principal=req.delegation_context.delegated_to,
                delegator=req.delegation_context.delegator,
                project_directory=self.project,
                max_tokens=budget.max_tokens if budget else None,
                timeout_seconds=900.0,
                permissions=self._policy(sid, req).rules,
                pid=1000 + self.n,
            ),
        )
        led.append(sid, MessageSent(session_id=sid, text=req.instructions))
        led.append(
            sid,
            ToolCalled(
                session_id=sid,
                tool="read",
                call_id=f"c{self.n}a",
                input={"filePath": "src/a.py"},
                output="x = 1\n",
            ),
        )
        led.append(
            sid,
            PermissionDecided(
                session_id=sid,
                permission="bash",
                patterns=["pytest -q"],
                reply="once",
                reason="scope grants shell/exec",
            ),
        )
        return sid

    def _policy(self, sid: str, req: SpawnRequest) -> PermissionPolicy:
        policy = self.policies[sid] = PermissionPolicy.from_request(req)
        return policy

    def work(self, sid: str, tokens: int, *, overrun: bool = False, shell: bool = False) -> None:
        led = self.led
        target = f"{self.project}/src/part.py"
        policy = self.policies[sid]
        if policy.write_scopes:  # OpenCode asks (as "edit", the file from its worktree), the policy answers
            asked = [target.lstrip("/")]
            reply, reason = policy.decide("edit", asked)
            led.append(
                sid,
                PermissionDecided(
                    session_id=sid, permission="edit", patterns=asked, reply=reply, reason=reason
                ),
            )
        led.append(
            sid,
            ToolCalled(
                session_id=sid,
                tool="write",
                call_id=f"w{sid[:8]}",
                input={"filePath": target, "content": "def f():\n    return 1\n"},
                output="Wrote file successfully.",
            ),
        )
        led.append(
            sid,
            OutputReceived(
                session_id=sid,
                text="Running the tests now.",
                tokens=Tokens(input=tokens // 10, output=tokens // 20),
                cost_usd=0.0012,
            ),
        )
        if shell:  # only the root's scopes grant shell#exec; the others search instead
            led.append(
                sid,
                ToolCalled(
                    session_id=sid,
                    tool="bash",
                    call_id=f"b{sid[:8]}",
                    input={"command": "pytest -q"},
                    output="3 passed in 0.05s",
                ),
            )
        else:
            led.append(
                sid,
                ToolCalled(
                    session_id=sid,
                    tool="grep",
                    call_id=f"g{sid[:8]}",
                    input={"pattern": "def f"},
                    output="src/part.py:1",
                ),
            )
        used = Tokens(input=tokens * 3 if overrun else tokens // 2, output=tokens // 4)
        led.append(
            sid,
            OutputReceived(
                session_id=sid,
                text="Done: part implemented with tests.",
                tokens=used,
                cost_usd=round(used.total * 3e-6, 6),
            ),
        )
        state = led.session(sid)
        if overrun and state is not None and state.max_tokens is not None:
            led.append(
                sid,
                BudgetExceeded(
                    session_id=sid,
                    limit="tokens",
                    allowed=state.max_tokens,
                    used=state.subtree_tokens,
                    charged_to=sid,
                ),
            )
            led.append(sid, AgentFailed(session_id=sid, error="budget exceeded", kind="budget"))
            return
        led.append(sid, AgentCompleted(session_id=sid, summary="part implemented"))


def build(path: Path, delegations: int) -> tuple[Ledger, gate.Constitution, dict[str, int]]:
    folder = path.parent / "project"  # beside the ledger: it goes with the caller's temporary folder
    folder.mkdir(exist_ok=True)
    project = str(folder)
    constitution = gate.load_constitution(f'allowed_roots = ["{project}"]\nmax_depth = 3\n', source="bench")
    led = Ledger.init(path, durable=False)
    b = Builder(led, constitution, project)
    stats = {"roots": 0, "refused": 0, "revoked_roots": 0, "overruns": 0}
    while b.n < delegations:
        stats["roots"] += 1
        raw = root_request(project, b.n)
        root = b.spawn(raw, None, 0)
        assert root is not None, "the bench's root delegation must be approved"
        for i, role in enumerate(("tester", "reviewer", "researcher")):
            if b.n >= delegations:
                break
            child_raw = child_request(raw, role, b.n, 40_000)
            child = b.spawn(child_raw, root, 1)
            for j in range(2):
                if b.n >= delegations or child is None:
                    break
                # every 20th grandchild hands work back to the root's role: refused (CYC-01)
                back = (b.n % 20) == 0
                grand_role = (
                    "backend_specialist" if back else ("frontend_specialist" if j == 0 else "researcher")
                )
                if grand_role == role:
                    grand_role = "frontend_specialist"
                grand = b.spawn(child_request(child_raw, grand_role, b.n, 8_000), child, 2)
                if grand is None:
                    stats["refused"] += 1
                    continue
                overrun = (b.n % 37) == 0
                stats["overruns"] += overrun
                b.work(grand, 4_000, overrun=overrun)
            if child is not None:
                b.work(child, 10_000 + i)
        if stats["roots"] % 25 == 0:  # revoke the whole subtree of every 25th root
            subtree = [s.session_id for s in led.sessions(root_session_id=root) if s.session_id != root]
            led.append(
                root,
                DelegationRevoked(session_id=root, by="operator", reason="bench revocation", subtree=subtree),
            )
            stats["revoked_roots"] += 1
        else:
            b.work(root, 20_000, shell=True)
    led.checkpoint()
    return led, constitution, stats
