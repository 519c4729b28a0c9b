"""SciCode's numeric targets: our scicode package reads test_data.h5's layout as SciCode's parse.py does and compares
as its cmp.py does; a step graded through ``--scicode-h5`` passes with right code and fails with wrong code; and on
the dev split the ground-truth code, graded against an h5 file of its own targets, passes every step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse
import sympy

from evals.data import default_data_dir
from evals.tasks import get_task
from evals.tasks._scicode_sandbox.scicode.compare.cmp import are_dicts_close, cmp_tuple_or_list
from evals.tasks._scicode_sandbox.scicode.parse.parse import process_hdf5_to_tuple, save_step_targets
from evals.tasks.base import Sample
from evals.tasks.scicode import _target_expr, build_targets_h5

ROOT = Path(__file__).resolve().parents[2]


def _write_layout(path):
    """test_data.h5's layout written with h5py directly (not through our writer): one step, six tests."""
    with h5py.File(path, "w") as f:
        f.create_dataset("9.1/test1/var1", data=np.array([[1.0, 2.0], [3.0, 4.0]]))
        f.create_dataset("9.1/test2/var1", data=2.5)
        f.create_dataset("9.1/test3/var1", data=np.arange(3))
        f.create_dataset("9.1/test3/var2", data="label")  # str is stored as bytes and read back decoded
        lst = f.create_group("9.1/test4/var1/list")
        lst.create_dataset("var1", data=1.5)
        lst.create_dataset("var2", data=np.array([1, 2]))
        d = f.create_group("9.1/test5/var1")
        d.create_dataset("0.5", data=7.0)
        d.create_dataset("name", data="x")
        d.create_dataset("width", data=3)
        csr = scipy.sparse.csr_matrix(np.array([[0, 1.0], [2.0, 0]]))
        sp = f.create_group("9.1/test6/var1/sparse_matrix")
        for k, v in (("data", csr.data), ("indices", csr.indices), ("indptr", csr.indptr), ("shape", csr.shape)):
            sp.create_dataset(k, data=v)


def test_reader_follows_scicodes_layout(tmp_path):
    path = tmp_path / "t.h5"
    _write_layout(path)
    t = process_hdf5_to_tuple("9.1", 6, h5py_file=str(path))
    assert np.array_equal(t[0], [[1.0, 2.0], [3.0, 4.0]]) and t[1] == 2.5
    assert isinstance(t[2], tuple) and np.array_equal(t[2][0], [0, 1, 2]) and t[2][1] == "label"
    assert isinstance(t[3], list) and t[3][0] == 1.5 and np.array_equal(t[3][1], [1, 2])
    # dict keys: numeric names become floats, except where the value is a string; "width" stays a string key
    assert t[4] == {0.5: 7.0, "name": "x", "width": 3}
    assert isinstance(t[5], scipy.sparse.csr_matrix) and np.array_equal(t[5].toarray(), [[0, 1.0], [2.0, 0]])
    with pytest.raises(FileNotFoundError, match="9.1/test7"):
        process_hdf5_to_tuple("9.1", 7, h5py_file=str(path))


def test_writer_round_trips_through_the_reader(tmp_path):
    coo = scipy.sparse.coo_matrix(np.eye(3))
    targets = [np.linspace(0, 1, 5), (np.ones(2), 3.0), {"a": 1.0, "b": np.zeros(2)}, [1.0, "mixed"], coo, True]
    with h5py.File(tmp_path / "w.h5", "w") as f:
        save_step_targets(f, "3.2", targets)
    back = process_hdf5_to_tuple("3.2", len(targets), h5py_file=str(tmp_path / "w.h5"))
    assert np.allclose(back[0], targets[0])
    assert isinstance(back[1], tuple) and cmp_tuple_or_list(back[1], targets[1])
    assert are_dicts_close(back[2], targets[2])
    assert back[3] == [1.0, b"mixed"]  # mixed list: a "list" group; SciCode's list reader leaves bytes undecoded
    assert isinstance(back[4], scipy.sparse.coo_matrix) and np.array_equal(back[4].toarray(), np.eye(3))
    assert bool(back[5]) is True


def test_comparisons_use_scicodes_tolerances():
    # dicts: atol 1e-8, rtol 1e-5; strings and sympy symbols by equality; keys must match
    assert are_dicts_close({1.0: 100.0}, {1.0: 100.0 + 1e-4})
    assert not are_dicts_close({1.0: 100.0}, {1.0: 100.0 + 1e-2})
    assert not are_dicts_close({"a": 1.0}, {"b": 1.0})
    x = sympy.Symbol("x")
    assert are_dicts_close({x: "y", "k": np.array([1.0])}, {"x": "y", "k": np.array([1.0])})
    assert not are_dicts_close({"k": "y"}, {"k": "z"})
    # tuples/lists: np.allclose's defaults (rtol 1e-5, atol 1e-8), dicts and bools apart
    assert cmp_tuple_or_list((np.array([1.0, 2.0]), 3.0), [np.array([1.0, 2.0 + 1e-6]), 3.0])
    assert not cmp_tuple_or_list((1.0,), (1.001,))
    assert not cmp_tuple_or_list((1.0, 2.0), (1.0,))
    assert not cmp_tuple_or_list((True,), (False,))
    assert cmp_tuple_or_list(({"a": 1.0},), ({"a": 1.0 + 1e-9},))
    # np.allclose raising ValueError (shapes that do not broadcast) falls back to ==
    assert not cmp_tuple_or_list(([1.0, 2.0],), ([1.0, 2.0, 3.0],))


PROBLEM = {
    "problem_id": "900", "problem_name": "fixture", "required_dependencies": "import numpy as np",
    "sub_steps": [
        {"step_number": "900.1", "function_header": "def scale(v, a):", "return_line": "    return out",
         "test_cases": ["v = np.array([1.0, 2.0])\nassert np.allclose(scale(v, 2.0), target)",
                        "from scicode.compare.cmp import cmp_tuple_or_list\n"
                        "assert cmp_tuple_or_list(split(np.array([3.0, 4.0])), target)"]},
        {"step_number": "900.2", "function_header": "def norms(v):", "return_line": "    return d",
         "test_cases": ["from scicode.compare.cmp import are_dicts_close\n"
                        "assert are_dicts_close(norms(np.array([3.0, 4.0])), target)"]},
    ],
}
STEP1 = ("def scale(v, a):\n    return v * a\n\ndef split(v):\n    return v.sum(), len(v)")
STEP2 = "def norms(v):\n    return {'l2': np.sqrt((v ** 2).sum()), 1.0: np.abs(v).sum(), 'kind': 'norms'}"


def _problem_h5(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("900.1/test1/var1", data=np.array([2.0, 4.0]))
        f.create_dataset("900.1/test2/var1", data=7.0)
        f.create_dataset("900.1/test2/var2", data=2)
        g = f.create_group("900.2/test1/var1")
        g.create_dataset("l2", data=5.0)
        g.create_dataset("1.0", data=7.0)
        g.create_dataset("kind", data="norms")


def _answers(*codes):
    return json.dumps([f"Background: ...\n```python\n{c}\n```" for c in codes])


def test_test_split_graded_through_h5(tmp_path):
    path = tmp_path / "test_data.h5"
    _problem_h5(path)
    task = get_task("scicode", scicode_h5=str(path))
    s = Sample(id="900", prompt=[], reference=PROBLEM, meta={"split": "test"})
    g = task.grade(s, _answers(STEP1, STEP2))
    assert g.correct is True and g.details["steps"] == {"900.1": True, "900.2": True}
    # a value off by more than the tolerance, a wrong string, a crash, a missing step: each fails its step
    assert task.grade(s, _answers(STEP1.replace("v * a", "v * a * 1.001"), STEP2)).details["steps"]["900.1"] is False
    assert task.grade(s, _answers(STEP1, STEP2.replace("'norms'}", "'l1'}"))).details["steps"] == \
        {"900.1": True, "900.2": False}
    assert task.grade(s, _answers(STEP1, "def norms(v):\n    raise ValueError")).correct is False
    assert task.grade(s, _answers(STEP1)).details["steps"] == {"900.1": True, "900.2": False}
    # without the file the test split is left ungraded
    assert get_task("scicode").grade(s, _answers(STEP1, STEP2)).correct is None


def test_missing_h5_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--scicode-h5"):
        get_task("scicode", scicode_h5=str(tmp_path / "nope.h5")).load()
    r = subprocess.run([sys.executable, "-m", "evals", "--model", "tiny-random", "--tasks", "scicode", "--scicode-h5",
                        str(tmp_path / "nope.h5"), "--output", str(tmp_path)], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--scicode-h5" in r.stderr and "Traceback" not in r.stderr


def test_dev_targets_for_indexed_targets():
    """An assert comparing target[0], target[1] (dev step 10.3) gets the tuple of what they are compared with."""
    setup, expr = _target_expr("d = f(x)\nassert np.allclose(g(d)[0], target[0]) and np.allclose(g(d)[1], target[1])")
    assert setup == "d = f(x)" and expr == "(g(d)[0], g(d)[1])"
    assert _target_expr("assert np.allclose(h(2), target)")[1] == "h(2)"
    assert _target_expr("assert np.allclose(h(2), target[1])") is None  # no target[0]: nothing to build
    assert _target_expr("assert h(2) > 0") is None


needs_data = pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/benchmarks (SciCode dev split)")


def _dev_cross_check(ids, tmp_path):
    """Ground-truth code graded through an h5 file of the ground truth's own targets: every step passes; the same
    code with a step broken fails that step."""
    dev = [s for s in get_task("scicode", scicode_split="dev").load() if ids is None or s.id in ids]
    path = tmp_path / "dev_targets.h5"
    written = build_targets_h5([s.reference for s in dev], path)
    task = get_task("scicode", scicode_split="dev", scicode_h5=str(path))
    steps = {}
    for s in dev:
        gt = [st["ground_truth_code"] for st in s.reference["sub_steps"]]
        steps.update(task.grade(s, _answers(*gt)).details["steps"])
    return dev, written, steps, task


@needs_data
def test_dev_ground_truth_passes_through_h5_small(tmp_path):
    dev, written, steps, task = _dev_cross_check({"1", "19"}, tmp_path)
    assert len(written) == sum(len(s.reference["sub_steps"]) for s in dev)
    assert steps and all(steps.values()), steps
    s = next(x for x in dev if x.id == "19")
    gt = [st["ground_truth_code"] for st in s.reference["sub_steps"]]
    last = s.reference["sub_steps"][-1]
    broken = gt[:-1] + [f"{last['function_header']}\n    return None"]
    assert task.grade(s, _answers(*broken)).details["steps"][last["step_number"]] is False


@needs_data
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EVALS_SCICODE_DEV_FULL") != "1",
                    reason="the whole dev split takes minutes (51.4 alone about 2): set EVALS_SCICODE_DEV_FULL=1")
def test_dev_ground_truth_passes_through_h5_every_problem(tmp_path):
    dev, written, steps, _ = _dev_cross_check(None, tmp_path)
    n_steps = sum(len(s.reference["sub_steps"]) for s in dev)
    print(f"SciCode dev through h5: {sum(steps.values())}/{len(steps)} steps pass; "
          f"targets for {len(written)}/{n_steps}")
    assert len(dev) == 15 and len(steps) == n_steps == 50
    assert all(steps.values()), [k for k, v in steps.items() if not v]
