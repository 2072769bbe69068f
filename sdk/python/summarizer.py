"""Summarizer, in Python: a short summary of a text from the model.

Built into a component for the `cairn:agent/agent@0.1.0` world with componentize-py (see
docs/agents.md, "Python agents"). A task's input, or a message another agent sends, is the
text. It logs through `log` and asks the model through `llm.chat`; when the manifest grants
`kv` it counts its runs there, and without it it says so in the log and goes on.
"""

from typing import Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import kv, llm, log, types

SYSTEM = "Summarize the user's text in one or two sentences."


def describe(e: Err) -> str:
    """A host error (`types.Error`) as `kind: message`, e.g. `capability: llm: ...`."""
    v = e.value
    return f"{type(v).__name__.removeprefix('Error_').lower()}: {v.value}"


def summarize(text: str) -> str:
    """The model's summary of `text`; raises `Err(reason)`, which fails the run."""
    text = text.strip()
    if not text:
        raise Err("nothing to summarize")
    request = types.ChatRequest(
        model=None,  # the router's policy chooses
        messages=[
            types.Message(role="system", content=SYSTEM),
            types.Message(role="user", content=text),
        ],
        max_tokens=80,
        temperature=None,
        stop=[],
        sensitive=False,
    )
    try:
        reply = llm.chat(request)
    except Err as e:
        raise Err(f"llm: {describe(e)}")
    log.log(
        log.Level.INFO,
        f"{reply.model} answered ({reply.prompt_tokens}+{reply.completion_tokens} tokens)",
    )
    return reply.text.strip()


class WitWorld(wit_world.WitWorld):
    """The world's exports. componentize-py instantiates this class once per instance."""

    def run(self, task: types.Task) -> str:
        log.log(log.Level.INFO, f"summarizing {len(task.input)} characters")
        try:
            count = int((kv.get("runs") or b"0").decode()) + 1
            kv.set("runs", str(count).encode())
            log.log(log.Level.INFO, f"run number {count}")
        except Err as e:
            log.log(log.Level.WARN, f"no run count: {describe(e)}")
        return summarize(task.input)

    def snapshot(self) -> Optional[bytes]:
        return None  # its only state is in kv

    def restore(self, state: bytes) -> None:
        return None

    def on_message(self, sender: str, body: str) -> Optional[str]:
        log.log(log.Level.INFO, f"summarizing a message from {sender}")
        return summarize(body)
