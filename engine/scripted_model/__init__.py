"""A scripted, OpenAI-compatible model server: the one stand-in in the whole system.

Runs in-process (``ScriptedModel`` in a background thread: ``start()``/``stop()`` or ``with``) or as
its own process (``python -m engine.scripted_model --port 0 --script FILE.json`` prints its
``/v1`` base URL on stdout). Replies are queued in advance as steps, one queue per conversation
marker (a substring of the request's user/system messages) plus a default queue; an empty queue
answers "done.".

Steps (``kind`` in JSON), each with optional ``delay`` (seconds before the first byte: a slow
reply) and ``usage`` ({prompt_tokens, completion_tokens}; default: about chars/4):

* ``text`` {text}; ``stream`` {chunks, chunk_delay}; ``echo_tool_result`` {prefix}
* ``tool_call`` {calls: [{name, arguments, id?}], text?}: OpenCode tools (``write``, ``bash``) or
  MCP tools as ``<server>_<tool>`` (``ledger_spawn_agent``)
* ``error`` {status, body}; ``hang`` {keepalive}: never ends until the client leaves or stop()

A script file: ``{"default": [steps], "conversations": [{"match": "MARKER", "steps": [...]}],
"fallback_text": "done."}``. Control routes: ``GET /_scripted/requests``, ``POST /_scripted/script``.
"""

from engine.scripted_model.replies import estimate_tokens
from engine.scripted_model.server import RequestRecord, ScriptedModel
from engine.scripted_model.steps import (
    Conversation,
    EchoToolResultStep,
    ErrorStep,
    HangStep,
    Script,
    ScriptBook,
    Step,
    StreamStep,
    TextStep,
    ToolCall,
    ToolCallStep,
    Usage,
    parse_steps,
)

__all__ = [
    "Conversation",
    "EchoToolResultStep",
    "ErrorStep",
    "HangStep",
    "RequestRecord",
    "Script",
    "ScriptBook",
    "ScriptedModel",
    "Step",
    "StreamStep",
    "TextStep",
    "ToolCall",
    "ToolCallStep",
    "Usage",
    "estimate_tokens",
    "parse_steps",
]
