"""SciCode's comparison helpers (scicode.compare.cmp @588b406), same tolerances and the same order of checks:
dicts and tuple/list elements are compared with np.allclose (dicts: atol=1e-8, rtol=1e-5, sympy symbols and strings by
equality, sparse matrices densified; tuples/lists: np.allclose's defaults, bools and csr/csc matrices apart), falling
back to ``==`` only where np.allclose raises ValueError."""

import numpy as np
import scipy.sparse
import sympy

_SPARSE = (scipy.sparse.csr_matrix, scipy.sparse.csc_matrix, scipy.sparse.bsr_matrix, scipy.sparse.coo_matrix)


def process_symbol_in_dict(d):
    """sympy Symbols, as keys or values, become their names."""
    out = {}
    for key, value in d.items():
        out[key] = value
        if isinstance(value, sympy.Symbol):
            out[key] = str(value)
        if isinstance(key, sympy.Symbol):
            out[str(key)] = d[key]
            out.pop(key)
    return out


def are_dicts_close(dict1, dict2, atol=1e-8, rtol=1e-5):
    dict1 = process_symbol_in_dict(dict1)
    dict2 = process_symbol_in_dict(dict2)
    if dict1.keys() != dict2.keys():
        return False
    for key in dict1:
        v1, v2 = dict1[key], dict2[key]
        if isinstance(v1, (sympy.Symbol, str)):
            if not v1 == v2:
                return False
        elif isinstance(v1, _SPARSE):
            if not np.allclose(v1.toarray(), v2.toarray(), atol=atol, rtol=rtol):
                return False
        else:
            try:
                if not np.allclose(v1, v2, atol=atol, rtol=rtol):
                    return False
            except ValueError:
                if not v1 == v2:
                    return False
    return True


def are_csc_matrix_close(matrix1, matrix2):
    return np.allclose(matrix1.toarray(), matrix2.toarray())


def cmp_tuple_or_list(var1, var2):
    if len(var1) != len(var2):
        return False
    for v1, v2 in zip(var1, var2):
        if isinstance(v1, dict):
            if not are_dicts_close(v1, v2):
                return False
        elif isinstance(v1, (scipy.sparse.csr_matrix, scipy.sparse.csc_matrix)):
            if not are_csc_matrix_close(v1, v2):
                return False
        elif isinstance(v1, bool):
            if not v1 == v2:
                return False
        else:
            try:
                if not np.allclose(v1, v2):
                    return False
            except ValueError as e:
                print(e)
                if not v1 == v2:
                    return False
    return True
