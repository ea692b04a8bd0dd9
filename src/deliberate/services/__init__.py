"""Services: what deliberate does, as library functions over typed requests and outcomes.

Every face (the CLI today; the HTTP server, the MCP server, eval and flow tests next) parses its
input into a request, calls a service with :class:`Services` (settings, registry, gateway, the
event subscribers it wants) and renders the outcome. Services never touch the terminal and never
configure logging.
"""

from .generate import GenerateRequest, generate
from .replay import ReplayOutcome, ReplayRequest, ResumeRequest, Verification, replay, resume
from .run import (
    Lineage,
    OutputOptions,
    RunOutcome,
    RunRequest,
    Services,
    check_input_size,
    input_limit,
    prompt_input,
    resolve_inputs,
    run,
)

__all__ = [
    "GenerateRequest",
    "Lineage",
    "OutputOptions",
    "ReplayOutcome",
    "ReplayRequest",
    "ResumeRequest",
    "RunOutcome",
    "RunRequest",
    "Services",
    "Verification",
    "check_input_size",
    "generate",
    "input_limit",
    "prompt_input",
    "replay",
    "resolve_inputs",
    "resume",
    "run",
]
