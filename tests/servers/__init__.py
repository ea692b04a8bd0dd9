"""Real HTTP servers for tests, bound to 127.0.0.1 on a free port."""

from .fake_llm import FakeLLM, Recorded, Script

__all__ = ["FakeLLM", "Recorded", "Script"]
