"""The model registry (``models.yaml``) and the strategy registry (``strategies.yaml``).

Both are merged across the lookup order of :mod:`deliberate.config`: packaged defaults first,
then ``$DELIBERATE_HOME``, then the current directory, a later file replacing an earlier entry of
the same key (so the first hit in lookup order wins).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from .config import Settings, get_settings, register_secret_names, search_dirs
from .errors import Problem, RegistryError
from .trust import TRUST_ENV, host_of, key_leak, trusted

BUILTIN_PROVIDERS = ("local", "litellm")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Model):
    """Sampling settings, from the strategy, overridable per request. Frozen: results share
    their strategy's instance; a request's override makes a copy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None

    @property
    def deterministic(self) -> bool:
        """Greedy decoding or a fixed seed: the same call gives the same answer."""
        return self.temperature == 0 or self.seed is not None


class CostProfile(_Model):
    """USD per million tokens; overrides litellm's price map."""

    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class RateLimit(_Model):
    """Requests per minute and concurrent requests, shared by every call to one endpoint."""

    rpm: float | None = Field(None, gt=0)
    max_concurrent: int | None = Field(None, ge=1)


class ModelSpec(_Model):
    """One entry of models.yaml."""

    key: str = ""
    provider: str = Field(description="local | litellm | a backend registered by a plugin")
    family: str = ""
    description: str = ""
    source: str | None = Field(
        None,
        description="local: 'package:<module>/<file.gguf>', a local directory, or a hub id "
        "already in the HF cache",
    )
    litellm_model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    context_window: int = Field(4096, ge=1)
    default_strategy: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    cost_profile: CostProfile | None = None
    min_vram_gb: float | None = Field(None, ge=0)
    quantization: Literal["none", "4bit", "8bit"] = "none"
    # local: which engine runs a GGUF (auto: llama.cpp when a llama.cpp binding is installed)
    engine: Literal["auto", "transformers", "llamacpp"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    rate_limit: RateLimit | None = None

    @property
    def endpoint(self) -> str:
        """What a circuit breaker and a rate limiter guard: one server or one runtime."""
        if self.provider == "litellm":
            if self.api_base:
                return f"litellm:{self.api_base}"
            prefix = (self.litellm_model or "").split("/", 1)[0] if "/" in (self.litellm_model or "") else "openai"
            return f"litellm:{prefix}"
        # An in-process runtime fails per model (a bad file, no memory), not as a whole.
        return f"{self.provider}:{self.key}"


class Limits(_Model):
    max_tokens: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    max_retries: int = Field(2, ge=0, le=20)


class StrategySpec(_Model):
    """One entry of strategies.yaml."""

    name: str = ""
    description: str = ""
    sampling: Sampling = Field(default_factory=Sampling)
    limits: Limits = Field(default_factory=Limits)
    fallbacks: list[str] = Field(default_factory=list)


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """'did you mean ...' for an unknown name, or None."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry:
    """Models and strategies, merged across the lookup order."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        strategies: dict[str, StrategySpec],
        sources: dict[str, list[Path]] | None = None,
        default_model: str = "smollm2-135m",
        default_strategy: str = "balanced",
    ) -> None:
        self.models = models
        self.strategies = strategies
        self.sources = sources or {}
        self.default_model = default_model
        self.default_strategy = default_strategy
        #: key -> why it is refused: entries of an untrusted project-local models.yaml that would
        #: send a key off the machine (see :mod:`deliberate.trust`)
        self.untrusted: dict[str, str] = {}

    # -- lookups ------------------------------------------------------------------------------
    def model(self, key: str, *, peek: bool = False) -> ModelSpec:
        """The entry of ``key``; one that is not trusted is refused unless only looked at (``peek``)."""
        if not peek and key in self.untrusted:
            raise RegistryError(self.untrusted[key], hint=TRUST_HINT)
        try:
            return self.models[key]
        except KeyError:
            raise RegistryError(
                f"unknown model key {key!r}",
                hint=did_you_mean(key, list(self.models))
                or f"known keys: {', '.join(sorted(self.models))}; add it to models.yaml",
            ) from None

    def strategy(self, name: str) -> StrategySpec:
        try:
            return self.strategies[name]
        except KeyError:
            raise RegistryError(
                f"unknown strategy {name!r}",
                hint=did_you_mean(name, list(self.strategies))
                or f"known strategies: {', '.join(sorted(self.strategies))}",
            ) from None

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings | None = None, dirs: list[Path] | None = None) -> Registry:
        """Merge models.yaml and strategies.yaml from every lookup directory."""
        settings = settings or get_settings()
        dirs = dirs if dirs is not None else search_dirs(settings)
        models: dict[str, ModelSpec] = {}
        strategies: dict[str, StrategySpec] = {}
        sources: dict[str, list[Path]] = {"models": [], "strategies": []}
        local = _project_dir(dirs, settings)
        own_hosts: set[str] = set()
        untrusted: dict[str, str] = {}
        for d in reversed(dirs):  # lowest priority first; later files replace keys
            mfile, sfile = d / "models.yaml", d / "strategies.yaml"
            if mfile.is_file():
                sources["models"].append(mfile)
                entries = _load_entries(mfile, ModelSpec)
                if d == local:
                    untrusted.update(_untrusted(mfile, entries, own_hosts, settings))
                else:
                    own_hosts |= {host_of(e.api_base) for e in entries.values() if e.api_base}
                for key, spec in entries.items():
                    models[key] = spec.model_copy(update={"key": key})
            if sfile.is_file():
                sources["strategies"].append(sfile)
                for key, strat in _load_entries(sfile, StrategySpec).items():
                    strategies[key] = strat.model_copy(update={"name": key})
        reg = cls(models, strategies, sources, settings.default_model, settings.default_strategy)
        reg.untrusted = untrusted
        reg.check()
        register_secret_names({m.api_key_env for m in models.values() if m.api_key_env})
        return reg

    def check(self) -> None:
        """Cross-references: fallbacks and default strategies name existing keys."""
        problems: list[str] = []
        for name, strat in self.strategies.items():
            for fb in strat.fallbacks:
                if fb not in self.models:
                    hint = did_you_mean(fb, list(self.models))
                    problems.append(
                        f"strategy {name!r}: fallback model {fb!r} is not in models.yaml"
                        + (f" ({hint})" if hint else "")
                    )
        for key, spec in self.models.items():
            if spec.default_strategy and spec.default_strategy not in self.strategies:
                problems.append(f"model {key!r}: default_strategy {spec.default_strategy!r} is unknown")
            if spec.provider == "litellm" and not spec.litellm_model:
                problems.append(f"model {key!r}: provider litellm needs 'litellm_model'")
            if spec.provider == "local" and not spec.source:
                problems.append(f"model {key!r}: provider local needs 'source'")
        if problems:
            raise RegistryError("; ".join(problems), hint="fix models.yaml / strategies.yaml")


TRUST_HINT = ("if you trust this file, run 'deliberate config trust models.yaml', "
              f"or set {TRUST_ENV}=1 in CI")


def _project_dir(dirs: list[Path], settings: Settings) -> Path | None:
    """The current directory, when it is one of the lookup dirs and neither the user's home
    config nor the packaged defaults: config found there came with the project, not the user."""
    from .config import packaged_dir

    cwd = Path.cwd().resolve()
    own = {settings.home_dir().resolve(), packaged_dir().resolve()}
    return cwd if cwd in dirs and cwd not in own else None


def _untrusted(path: Path, entries: dict[str, ModelSpec], own_hosts: set[str],
               settings: Settings) -> dict[str, str]:
    leaks = {key: why for key, spec in entries.items() if (why := key_leak(spec, own_hosts))}
    if not leaks or trusted(path, settings.home_dir()):
        return {}
    return {key: f"model {key!r} comes from {path}, which is not trusted: {why}"
            for key, why in leaks.items()}


def _load_entries(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    from .yamlio import load_yaml_file, locate

    data, marks = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RegistryError("expected a mapping of key -> entry", where=f"{path}:1")
    wrapper = "models" if model is ModelSpec else "strategies"
    inner = data.get(wrapper)
    if list(data) == [wrapper] and isinstance(inner, dict) and not set(inner) & set(model.model_fields):
        # a natural guess ("models:" above the entries): the entries are what is under it
        data = inner
        marks = {loc[1:]: mark for loc, mark in marks.items() if loc[:1] == (wrapper,)}
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            line, col = locate(marks, (key,))
            problems.append(Problem(str(path), line, col, f"{key}: expected a mapping"))
            continue
        try:
            out[str(key)] = model.model_validate(value)
        except PydanticValidationError as exc:
            for err in exc.errors():
                loc = (key, *err["loc"])
                line, col = locate(marks, loc)
                field = ".".join(str(p) for p in loc)
                problems.append(Problem(str(path), line, col, f"{field}: {err['msg']}"))
    if problems:
        raise RegistryError("; ".join(str(p) for p in problems))
    return out
