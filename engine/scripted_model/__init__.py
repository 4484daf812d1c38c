"""A scripted, OpenAI-compatible model server: the one stand-in in the whole system.

Runs in-process (``ScriptedModel`` in a background thread: ``start()``/``stop()`` or ``with``) or as
its own process (``python -m engine.scripted_model --port 0 --script FILE.json`` prints its
``/v1`` base URL on stdout). Replies are queued in advance as steps, per conversation marker.
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
