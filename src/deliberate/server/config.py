"""How the server runs: where it listens, who may call it, and its limits."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field

from ..errors import InputError

#: Where ``--workers`` hands the configuration to each worker process (the keys never travel:
#: each worker reads them from the variable ``api_key_env`` names).
CONFIG_ENV = "DELIBERATE_SERVE_CONFIG"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class ServerConfig:
    """The server's settings; every limit has a default fit for one machine."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    max_body_bytes: int = 1_048_576
    max_messages: int = 256
    max_concurrent: int = 64  # runs in flight per key (or per client without keys)
    run_timeout_s: float = 900.0
    drain_s: float = 30.0
    cors_origins: list[str] = field(default_factory=list)
    access_log: bool = True
    warm: str | None = None  # a model key to load at start; /readyz waits for it

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServerConfig:
        raw = os.environ.get(CONFIG_ENV)
        return cls(**json.loads(raw)) if raw else cls()


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys(config: ServerConfig) -> list[str]:
    """The accepted keys: the value of each variable ``api_key_env`` names (several names:
    comma-separated; one key per variable, so each is scrubbed whole from logs and records).

    Refused (:class:`InputError`) when a name is not a variable name, a variable is unset, empty or
    shorter than 16 characters, and when the server would listen beyond loopback without keys.
    The error names the variable, never its value."""
    if config.api_key_env is None:
        if not is_loopback(config.host):
            raise InputError(f"--host {config.host} listens beyond this machine: it needs an API key",
                             hint="put the key in an environment variable and pass --api-key-env NAME")
        return []
    names = [n.strip() for n in config.api_key_env.split(",")]
    keys = []
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise InputError(f"--api-key-env {name!r} is not an environment variable name")
        key = os.environ.get(name, "").strip()
        if not key:
            raise InputError(f"--api-key-env {name}: the variable is unset or empty",
                             hint=f"export {name}=<key>")
        if len(key) < 16:
            raise InputError(f"--api-key-env {name}: the key must be at least 16 characters")
        keys.append(key)
    from ..config import register_secret_names

    register_secret_names(names)  # their values are scrubbed from every log line, record and response
    return keys
