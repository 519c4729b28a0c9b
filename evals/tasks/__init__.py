"""Task registry: ``get_task(name, data_dir=..., **options)``."""

from __future__ import annotations

from evals.tasks.base import REFERENCE_SYSTEM_PROMPT, SYSTEM_PROMPT, Grade, Sample, Task
from evals.tasks.code import MBPP, HumanEval, LeetCode
from evals.tasks.livecodebench import LiveCodeBench
from evals.tasks.math import AIME24, AMC, AMC23, GSM8K, Math500, Minerva, OlympiadBench, aime24_from_aimo
from evals.tasks.physics import UGPhysics
from evals.tasks.scicode import SciCode

TASKS: dict[str, type[Task]] = {t.name: t for t in (Math500, AMC, AMC23, AIME24, Minerva, OlympiadBench, GSM8K,
                                                     LeetCode, HumanEval, MBPP, UGPhysics, SciCode, LiveCodeBench)}


def get_task(name: str, **kwargs) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = ["TASKS", "get_task", "Task", "Sample", "Grade", "SYSTEM_PROMPT", "REFERENCE_SYSTEM_PROMPT",
           "aime24_from_aimo"]
