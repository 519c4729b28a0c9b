"""One description per Triton kernel of everything its launcher may pass: the launchers launch through it, and the
ahead-of-time compile check (kernels._triton.aot: tests/kernels/test_compile.py in CI, `python -m bench --sections
compile`) enumerates the descriptions it finds in the kernel modules. A branch a launcher can take is therefore a configuration the check compiles, and a
launch outside the description fails at once (in the interpreter tests too) instead of compiling something the
check never saw.

    ROW_STATS = KernelLaunch(row_stats_kernel, num_warps=8, pointers={"x_ptr": LOGITS, "part_ptr": "fp32", ...},
                             constexprs={"BLOCK": (4096,), "DIRECT": (False, True)})
    ROW_STATS[grid](x, part, h, ..., BLOCK=4096, DIRECT=True)

Argument types: pointers by element type (LOGITS: the op's input dtype, one of LOGITS_DTYPES), scalars "i32"
unless named in `scalars` ("i64", "fp32"), constexprs by their declared values. Size constexprs (power-of-two
ranges such as NSPLIT_P2) are compiled at their smallest and largest declared value: the code is the same for
every value in between and its registers and shared memory grow with the size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernels._triton._common import MAX_SPLITS

LOGITS = "logits"  # placeholder element type: the dtype of the op's input (logits, or hidden states)
LOGITS_DTYPES = ("fp32", "bf16", "fp16")
POW2_SPLITS = tuple(1 << i for i in range(MAX_SPLITS.bit_length()))  # next_pow2(programs per row): 1 .. MAX_SPLITS


@dataclass(frozen=True)
class KernelLaunch:
    kernel: Any  # a triton JITFunction (an InterpretedFunction under TRITON_INTERPRET=1)
    num_warps: int
    pointers: dict[str, str]
    constexprs: dict[str, tuple]
    scalars: dict[str, str] = field(default_factory=dict)
    sizes: tuple[str, ...] = ()  # constexprs that are sizes: compiled at their extremes

    def __post_init__(self) -> None:
        names = self.arg_names()
        declared = set(self.pointers) | set(self.constexprs) | set(self.scalars)
        unknown = declared - set(names)
        if unknown:
            raise TypeError(f"{self.name}: described arguments {sorted(unknown)} are not the kernel's")
        missing = [n for n in names if n in self._constexpr_params() and n not in self.constexprs]
        if missing:
            raise TypeError(f"{self.name}: constexpr arguments {missing} have no declared values")

    @property
    def name(self) -> str:
        return self._fn().__name__

    def _fn(self) -> Callable:
        return self.kernel.fn  # the Python function under both JITFunction and InterpretedFunction

    def arg_names(self) -> list[str]:
        return list(inspect.signature(self._fn()).parameters)

    def _constexpr_params(self) -> set[str]:
        params = inspect.signature(self._fn()).parameters
        return {n for n, p in params.items() if "constexpr" in str(p.annotation)}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            for name, allowed in self.constexprs.items():
                if kwargs.get(name) not in allowed:
                    raise ValueError(f"{self.name}: {name}={kwargs.get(name)!r} is outside its launch description "
                                     f"{allowed!r}: extend the description, so the compile check covers it")
            self.kernel[grid](*args, **kwargs, num_warps=self.num_warps)

        return launch

    def configurations(self, dtypes: tuple[str, ...] = LOGITS_DTYPES) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """(signature, constexprs) for every configuration the launcher can reach, sizes at their extremes."""
        choices = [[(n, v) for v in (_extremes(vals) if n in self.sizes else vals)]
                   for n, vals in self.constexprs.items()]
        combos: list[dict[str, Any]] = [{}]
        for options in choices:
            combos = [{**c, n: v} for c in combos for n, v in options]
        uses_logits = LOGITS in self.pointers.values()
        out = []
        for dtype in dtypes if uses_logits else dtypes[:1]:
            signature = {}
            for n in self.arg_names():
                if n in self.constexprs:
                    signature[n] = "constexpr"
                elif n in self.pointers:
                    signature[n] = "*" + (dtype if self.pointers[n] == LOGITS else self.pointers[n])
                else:
                    signature[n] = self.scalars.get(n, "i32")
            out += [(signature, c) for c in combos]
        return out


def _extremes(values: tuple) -> tuple:
    return tuple(sorted({min(values), max(values)}))
