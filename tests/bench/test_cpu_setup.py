"""bench.cpu_setup: the variants it measures, the mapped-library check, and its report."""

import os
import subprocess
from pathlib import Path

from bench import cpu_setup


def test_variants_cover_none_each_library_all_and_compiled():
    both = cpu_setup.variants({"libtcmalloc": "/x/libtcmalloc.so.4", "libiomp5": "/y/libiomp5.so"})
    assert both == {
        "none": {"preload": [], "eager": True},
        "libtcmalloc": {"preload": ["/x/libtcmalloc.so.4"], "eager": True},
        "libiomp5": {"preload": ["/y/libiomp5.so"], "eager": True},
        "libtcmalloc+libiomp5": {"preload": ["/x/libtcmalloc.so.4", "/y/libiomp5.so"], "eager": True},
        "compiled": {"preload": [], "eager": False},
        "libtcmalloc+libiomp5+compiled": {"preload": ["/x/libtcmalloc.so.4", "/y/libiomp5.so"], "eager": False}}
    assert cpu_setup.variants({"libtcmalloc": None, "libiomp5": "/y/libiomp5.so"}) == {
        "none": {"preload": [], "eager": True}, "libiomp5": {"preload": ["/y/libiomp5.so"], "eager": True},
        "compiled": {"preload": [], "eager": False},
        "libiomp5+compiled": {"preload": ["/y/libiomp5.so"], "eager": False}}
    assert cpu_setup.variants({"libtcmalloc": None, "libiomp5": None}) == {
        "none": {"preload": [], "eager": True}, "compiled": {"preload": [], "eager": False}}


def test_ld_preload_reads_the_environment_a_process_was_started_with():
    # A process started with a known LD_PRELOAD (a library this process has mapped: preloading it is harmless), and
    # one started without any: /proc/<pid>/environ tells them apart; a process that does not exist gives None.
    maps = Path(f"/proc/{os.getpid()}/maps").read_text().split()
    lib = next(p for p in maps if p.startswith("/") and "libc.so" in p)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    with_lib = subprocess.Popen(["sleep", "30"], env={**env, "LD_PRELOAD": lib})
    without = subprocess.Popen(["sleep", "30"], env=env)
    try:  # Popen returns once the child has exec'd
        assert cpu_setup._ld_preload(with_lib.pid) == lib
        assert cpu_setup._ld_preload(without.pid) == ""
    finally:
        for proc in (with_lib, without):
            proc.kill()
            proc.wait()
    assert cpu_setup._ld_preload(2**22 + 12345) is None


def test_mapped_sees_libraries_this_process_loaded_and_not_others():
    maps = Path(f"/proc/{os.getpid()}/maps").read_text().split()
    loaded = next(p for p in maps if p.startswith("/") and ".so" in p)
    got = cpu_setup._mapped(cpu_setup._worker_pids(), [loaded, "/nowhere/libnot-a-real-library.so"])
    assert got == {loaded: True, "/nowhere/libnot-a-real-library.so": False}


def test_report_names_each_variant_and_its_ratio():
    r = {"device": {"name": "cpu", "threads": 2}, "model": "m", "dtype": "bfloat16", "prompts": 4, "max_tokens": 8, "concurrency": 2,
         "rounds": 1, "variants": {
             "none": {"preload": [], "eager": True, "best_tokens_per_second": 10.0, "vs_none": 1.0,
                      "start_seconds": 30.0, "took_effect": True},
             "libiomp5": {"preload": ["/y/libiomp5.so"], "eager": True, "best_tokens_per_second": 12.5,
                          "vs_none": 1.25, "start_seconds": 31.0, "took_effect": True,
                          "runs": [{"tokens_per_second": 12.5}, {"tokens_per_second": 10.0}, {"error": "x"}]},
             "libtcmalloc": {"preload": ["/x/libtcmalloc.so.4"], "eager": True, "best_tokens_per_second": None,
                             "vs_none": None, "start_seconds": None, "took_effect": False},
             "compiled": {"preload": [], "eager": False, "best_tokens_per_second": 14.0, "vs_none": 1.4,
                          "start_seconds": 95.0, "took_effect": True}}}
    md = cpu_setup.markdown(r)
    assert "| libiomp5 | libiomp5.so | eager | 12.5 | 1.25x | 12.5 / 10.0 | 31 | yes |" in md
    assert "| libtcmalloc | libtcmalloc.so.4 | eager | failed |  |  |  | no |" in md
    assert "| compiled | - | compiled | 14.0 | 1.40x |  | 95 | yes |" in md
    assert "differ by up to 20%" in md and "m (bfloat16)" in md
