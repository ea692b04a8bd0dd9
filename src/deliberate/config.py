"""Settings (environment and ``.env``) and the lookup of user files.

Lookup order (DESIGN.md section 2), first hit wins: the current directory, then
``$DELIBERATE_HOME`` (default: the platform's user config dir), then the defaults shipped inside
the package.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Environment variables that hold secrets. Their values never reach records, logs or errors.
SECRET_ENV_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "TOGETHER_API_KEY",
    "HF_TOKEN",
)


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Every setting deliberate reads from the environment or a ``.env`` file."""

    # populate_by_name lets code pass field names (Settings(model_cache_dir=...)); the prefix keeps
    # pydantic-settings from also reading a field's bare name from the environment ($HOME as `home`)
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True,
                                      env_prefix="_DELIBERATE_FIELD_")

    log_level: str = Field("WARNING", validation_alias=_env("LOG_LEVEL", "DELIBERATE_LOG_LEVEL"))
    log_file: Path | None = Field(None, validation_alias=_env("DELIBERATE_LOG_FILE"))
    default_provider: str = Field("local", validation_alias=_env("DEFAULT_PROVIDER"))
    default_model: str = Field("smollm2-135m", validation_alias=_env("DELIBERATE_DEFAULT_MODEL"))
    default_strategy: str = Field("balanced", validation_alias=_env("DEFAULT_STRATEGY"))
    max_tokens_default: int = Field(256, validation_alias=_env("MAX_TOKENS_DEFAULT"), ge=1)
    max_vram_usage_gb: float | None = Field(None, validation_alias=_env("MAX_VRAM_USAGE_GB"))
    max_ram_usage_gb: float | None = Field(None, validation_alias=_env("DELIBERATE_MAX_RAM_GB"))
    model_cache_dir: Path | None = Field(None, validation_alias=_env("MODEL_CACHE_DIR"))
    circuit_breaker_max_failures: int = Field(
        5, validation_alias=_env("CIRCUIT_BREAKER_MAX_FAILURES"), ge=1
    )
    circuit_breaker_timeout: float = Field(
        60.0, validation_alias=_env("CIRCUIT_BREAKER_TIMEOUT"), gt=0
    )
    home: Path | None = Field(None, validation_alias=_env("DELIBERATE_HOME"))
    runs_dir: Path = Field(Path("runs"), validation_alias=_env("DELIBERATE_RUNS_DIR"))
    record_fsync: bool = Field(False, validation_alias=_env("DELIBERATE_RECORD_FSYNC"))
    onednn: bool = Field(True, validation_alias=_env("DELIBERATE_ONEDNN"))
    remote_rpm: float | None = Field(None, validation_alias=_env("DELIBERATE_REMOTE_RPM"), gt=0)
    remote_max_concurrent: int | None = Field(None, validation_alias=_env("DELIBERATE_REMOTE_MAX_CONCURRENT"),
                                              ge=1)
    cache: bool = Field(False, validation_alias=_env("DELIBERATE_CACHE"))
    cache_dir: Path | None = Field(None, validation_alias=_env("DELIBERATE_CACHE_DIR"))
    # seconds before a judge's first re-draft, doubling after each (at most 30)
    judge_backoff_s: float = Field(0.5, validation_alias=_env("DELIBERATE_JUDGE_BACKOFF_S"), ge=0)

    def home_dir(self) -> Path:
        """``$DELIBERATE_HOME`` or the platform's user config dir."""
        if self.home is not None:
            return self.home
        from platformdirs import user_config_dir

        return Path(user_config_dir("deliberate"))

    def model_cache(self) -> Path:
        """Where converted local models are kept."""
        if self.model_cache_dir is not None:
            return self.model_cache_dir
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("deliberate")) / "models"

    def response_cache(self) -> Path:
        """Where the response cache for deterministic calls lives."""
        if self.cache_dir is not None:
            return self.cache_dir
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("deliberate")) / "responses"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()


def packaged_dir() -> Path:
    """The folder holding the defaults that ship inside the package.

    In a wheel they sit in ``deliberate/_defaults``; in a source checkout (editable install) they
    are the repo's top-level ``flows/``, ``models.yaml`` and ``strategies.yaml``.
    """
    inside = Path(__file__).parent / "_defaults"
    if (inside / "models.yaml").is_file():
        return inside
    return Path(__file__).resolve().parents[2]


def search_dirs(settings: Settings | None = None) -> list[Path]:
    """The lookup order for user files: cwd, home, packaged defaults (first hit wins)."""
    settings = settings or get_settings()
    dirs = [Path.cwd(), settings.home_dir(), packaged_dir()]
    seen: list[Path] = []
    for d in dirs:
        r = d.resolve() if d.exists() else d
        if r not in seen:
            seen.append(r)
    return seen


#: Variable names that hold secrets by convention (AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN, ...).
SECRET_NAME_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_CREDENTIALS")
#: Shorter values are not scrubbed: they would blank out ordinary words, and no API key is so short.
MIN_SECRET_LEN = 6

_secret_names: set[str] = set()
_dotenv_cache: dict[str, tuple[tuple[float, int], dict[str, str]]] = {}


def register_secret_names(names: list[str] | set[str]) -> None:
    """Names of variables that hold keys (models.yaml's ``api_key_env``), whatever they are called."""
    _secret_names.update(n for n in names if n)


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return name in SECRET_ENV_VARS or name in _secret_names or upper.endswith(SECRET_NAME_SUFFIXES)


def dotenv_values(path: str | Path = ".env") -> dict[str, str]:
    """The variables of a ``.env`` file (the one the settings read), re-read when it changes."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return {}
    key = str(p.resolve())
    stamp = (st.st_mtime, st.st_size)
    cached = _dotenv_cache.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    from dotenv import dotenv_values as read  # pydantic-settings' own dependency

    try:
        values = {k: v for k, v in read(p).items() if v}
    except (OSError, UnicodeDecodeError):
        values = {}
    _dotenv_cache[key] = (stamp, values)
    return values


def secret_values() -> list[str]:
    """Values of every variable that holds a secret, in the environment or in ``./.env``: the
    well-known provider keys, names ending in _KEY, _TOKEN, _SECRET, _PASSWORD, and every
    ``api_key_env`` of the registry. Longest first, so a key that contains another goes whole."""
    found: set[str] = set()
    for source in (os.environ, dotenv_values()):
        for name, value in source.items():
            value = value.strip()
            if len(value) >= MIN_SECRET_LEN and is_secret_name(name):
                found.add(value)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None, extra: list[str] | None = None) -> str:
    """Replace every known secret value in ``text`` with ``***`` (``secrets``: precomputed
    :func:`secret_values`, else read now)."""
    for value in (secret_values() if secrets is None else secrets) + (extra or []):
        if value and value in text:
            text = text.replace(value, "***")
    return text
