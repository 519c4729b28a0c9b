"""The ``scicode`` package that SciCode's test cases import (``from scicode.compare.cmp import cmp_tuple_or_list``,
``from scicode.parse.parse import process_hdf5_to_tuple``), re-written from SciCode @588b406 (src/scicode/compare/cmp.py
and src/scicode/parse/parse.py) with the same behaviour. evals.tasks.scicode copies it into every sandbox that runs a
SciCode step, so the programs are the ones SciCode's evaluator writes. Nothing here is imported by the grader itself.
"""
