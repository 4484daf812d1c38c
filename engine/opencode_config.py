"""The OpenCode configuration an agent's server starts with, and the environment that keeps it quiet.

The config travels inline in ``OPENCODE_CONFIG_CONTENT``; see ``build_agent_config``. Permission
rules come in OpenCode's mapping form (``{"edit": "allow", "bash": {"*": "ask", "git status":
"allow"}}``); ``session_permission_rules`` turns them into the per-session list form of
``POST /session``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPENCODE_VERSION = "1.18.33"
"""The `opencode-ai` release pinned in ``engine/npm/package.json`` and verified against."""

PROVIDER_ID = "scripted"
MODEL_ID = "scripted-1"
ACTIONS = frozenset({"allow", "ask", "deny"})

OFFLINE_ENV: Mapping[str, str] = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
}
"""Flags that stop OpenCode from updating itself, fetching model lists, sharing or downloading LSPs."""


@dataclass(frozen=True)
class ModelCost:
    """Prices in dollars per million tokens, as OpenCode's ``cost`` model config wants them."""

    input: float = 3.0
    output: float = 15.0
    cache_read: float = 0.3
    cache_write: float = 3.75

    def as_config(self) -> dict[str, float]:
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
        }

    def dollars(self, input_tokens: int, output_tokens: int) -> float:
        """What OpenCode charges for a reply with these token counts (no cache use)."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


def scripted_provider(
    base_url: str,
    *,
    provider_id: str = PROVIDER_ID,
    model_id: str = MODEL_ID,
    cost: ModelCost | None = None,
    context: int = 100_000,
    output: int = 8_000,
) -> dict[str, Any]:
    """The ``provider`` block for an OpenAI-compatible model at ``base_url`` (ends in ``/v1``)."""
    model = {
        "name": f"{model_id} (scripted)",
        "cost": (cost or ModelCost()).as_config(),
        "limit": {"context": context, "output": output},
        "tool_call": True,
    }
    return {
        provider_id: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Scripted",
            "options": {"baseURL": base_url, "apiKey": "scripted"},
            "models": {model_id: model},
        }
    }


def remote_mcp(
    url: str, token: str | None = None, *, headers: Mapping[str, str] | None = None, enabled: bool = True
) -> dict[str, Any]:
    """An ``mcp`` entry for a streamable-HTTP server; ``token`` becomes a Bearer header."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    entry: dict[str, Any] = {"type": "remote", "url": url, "enabled": enabled}
    if all_headers:
        entry["headers"] = all_headers
    return entry


def _check_permission(permission: Mapping[str, Any]) -> None:
    for tool, rule in permission.items():
        values = rule.values() if isinstance(rule, Mapping) else [rule]
        for action in values:
            if action not in ACTIONS:
                raise ValueError(
                    f"permission rule for {tool!r} is not one of {sorted(ACTIONS)} (got {action!r})"
                )


def _check_mcp(mcp: Mapping[str, Mapping[str, Any]]) -> None:
    for name, server in mcp.items():
        kind = server.get("type")
        if kind not in ("remote", "local"):
            raise ValueError(f"mcp server {name!r} type is not 'remote' or 'local' (got {kind!r})")
        if kind == "remote" and not server.get("url"):
            raise ValueError(f"mcp server {name!r} has no url")
        if kind == "local" and not server.get("command"):
            raise ValueError(f"mcp server {name!r} has no command")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def build_agent_config(
    *,
    model_base_url: str | None = None,
    cost: ModelCost | None = None,
    provider: Mapping[str, Any] | None = None,
    model: str | None = None,
    permission: Mapping[str, Any] | None = None,
    mcp: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config dict for one agent's server.

    ``model_base_url`` selects the scripted model (provider ``scripted``, model ``scripted-1``,
    priced by ``cost``); otherwise ``provider`` (a ``provider`` block) and ``model``
    (``"provider/model"``) name a real one, or both stay unset and the project's and user's own
    configuration decide. ``permission`` and ``mcp`` are OpenCode's mapping forms; ``extra`` is
    merged last, key by key.
    """
    config: dict[str, Any] = {"autoupdate": False, "share": "disabled"}
    if model_base_url is not None:
        if provider is not None:
            raise ValueError("give model_base_url or provider, not both")
        provider = scripted_provider(model_base_url, cost=cost)
        model = model or f"{PROVIDER_ID}/{MODEL_ID}"
        config["enabled_providers"] = [PROVIDER_ID]
    if provider is not None:
        config["provider"] = copy.deepcopy(dict(provider))
    if model is not None:
        config["model"] = model
        config["small_model"] = model
    if permission is not None:
        _check_permission(permission)
        config["permission"] = copy.deepcopy(dict(permission))
    if mcp is not None:
        _check_mcp(mcp)
        config["mcp"] = {name: copy.deepcopy(dict(server)) for name, server in mcp.items()}
    if extra is not None:
        _merge(config, extra)
    return config


def session_permission_rules(permission: Mapping[str, Any]) -> list[dict[str, str]]:
    """Mapping-form rules as the ``permission`` list of ``POST /session``.

    ``{"bash": {"*": "ask", "git status": "allow"}, "edit": "deny"}`` becomes
    ``[{"permission": "bash", "pattern": "*", "action": "ask"}, ..., {"permission": "edit",
    "pattern": "*", "action": "deny"}]``, in the given order.
    """
    _check_permission(permission)
    rules: list[dict[str, str]] = []
    for tool, rule in permission.items():
        patterns = rule.items() if isinstance(rule, Mapping) else [("*", rule)]
        rules.extend({"permission": tool, "pattern": p, "action": a} for p, a in patterns)
    return rules
