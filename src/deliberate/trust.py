"""Trust for project-local config.

A ``models.yaml`` in the current directory often comes with a cloned repository. It may define a
model whose ``api_base`` points anywhere, with ``api_key_env`` naming the user's real provider
key: one ``deliberate run`` would send that key to a stranger. As direnv and mise do, such a file
is untrusted until the user says otherwise: ``deliberate config trust`` remembers the file by its
path and the hash of its content (an edit needs trusting again), and
``DELIBERATE_TRUST_LOCAL_CONFIG=1`` trusts every file (for CI, where the checkout is your own).

Only what could leak a key needs trust: an entry that sends a key from the environment to a host
that is neither loopback (a local Ollama, vLLM or test server: the key does not leave the machine)
nor a host the user's own config already uses.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TRUST_ENV = "DELIBERATE_TRUST_LOCAL_CONFIG"
TRUST_FILE = "trusted.json"

#: Providers whose requests get a placeholder key when a model sets ``api_base`` but no
#: ``api_key_env`` (the remote backend does this), so litellm never sends the provider's key from
#: the environment to that server. For any other provider litellm may read its own variable.
PLACEHOLDER_KEY_PROVIDERS = frozenset({
    "openai", "text-completion-openai", "custom_openai", "openai_like", "hosted_vllm", "lm_studio",
    "llamafile", "xinference", "anthropic", "ollama", "ollama_chat", "huggingface",
})


def host_of(url: str) -> str:
    """The host of ``url`` in lower case ('' when it has none)."""
    try:
        return (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    except ValueError:
        return ""


def is_loopback(url: str) -> bool:
    host = host_of(url)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prefix_provider(litellm_model: str | None) -> str:
    model = litellm_model or ""
    return model.split("/", 1)[0] if "/" in model else "openai"


def key_leak(spec: Any, own_hosts: set[str]) -> str | None:
    """Why this entry would send a key from the environment off the machine to a host the user's
    own config does not use, or None."""
    if spec.provider != "litellm" or not spec.api_base or is_loopback(spec.api_base):
        return None
    host = host_of(spec.api_base)
    if host in own_hosts:
        return None
    if spec.api_key_env:
        return f"it sends ${spec.api_key_env} to {host or spec.api_base}"
    if _prefix_provider(spec.litellm_model) not in PLACEHOLDER_KEY_PROVIDERS:
        return f"it may send the {_prefix_provider(spec.litellm_model)} key from your environment to {host}"
    return None


def _store(home: Path) -> Path:
    return home / TRUST_FILE


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trusted(path: Path, home: Path) -> bool:
    """Whether the user trusts this file as it is now (or trusts every local file)."""
    if os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    try:
        known = json.loads(_store(home).read_text(encoding="utf-8"))
        return bool(known.get(str(path.resolve())) == file_hash(path))
    except (OSError, ValueError, AttributeError):
        return False


def trust(path: Path, home: Path) -> str:
    """Remember ``path`` with the hash of its content; return the hash."""
    store = _store(home)
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    digest = file_hash(path)
    known[str(path.resolve())] = digest
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, store)
    return digest


def trusted_files(home: Path) -> dict[str, str]:
    try:
        known = json.loads(_store(home).read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in known.items()} if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}
