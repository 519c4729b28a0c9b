"""bench.cpu_preload: the variants it measures, the mapped-library check, and its report."""

import os
from pathlib import Path

from bench import cpu_preload


def test_variants_cover_none_each_library_and_all():
    both = cpu_preload.variants({"libtcmalloc": "/x/libtcmalloc.so.4", "libiomp5": "/y/libiomp5.so"})
    assert both == {"none": [], "libtcmalloc": ["/x/libtcmalloc.so.4"], "libiomp5": ["/y/libiomp5.so"],
                    "libtcmalloc+libiomp5": ["/x/libtcmalloc.so.4", "/y/libiomp5.so"]}
    assert cpu_preload.variants({"libtcmalloc": None, "libiomp5": "/y/libiomp5.so"}) == {
        "none": [], "libiomp5": ["/y/libiomp5.so"]}
    assert cpu_preload.variants({"libtcmalloc": None, "libiomp5": None}) == {"none": []}


def test_mapped_sees_libraries_this_process_loaded_and_not_others():
    maps = Path(f"/proc/{os.getpid()}/maps").read_text().split()
    loaded = next(p for p in maps if p.startswith("/") and ".so" in p)
    got = cpu_preload._mapped(cpu_preload._worker_pids(), [loaded, "/nowhere/libnot-a-real-library.so"])
    assert got == {loaded: True, "/nowhere/libnot-a-real-library.so": False}


def test_report_names_each_variant_and_its_ratio():
    r = {"device": {"name": "cpu", "threads": 2}, "model": "m", "prompts": 4, "max_tokens": 8, "concurrency": 2,
         "rounds": 1, "variants": {
             "none": {"best_tokens_per_second": 10.0, "vs_none": 1.0, "took_effect": True},
             "libiomp5": {"best_tokens_per_second": 12.5, "vs_none": 1.25, "took_effect": True},
             "libtcmalloc": {"best_tokens_per_second": None, "vs_none": None, "took_effect": False}}}
    md = cpu_preload.markdown(r)
    assert "| libiomp5 | 12.5 | 1.25x | yes |" in md and "| libtcmalloc | failed |  | no |" in md
