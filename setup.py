"""Build the compiled kernels: every ``csrc/<name>.pyx`` becomes the extension ``fastlm._<name>``.

Environment switches (read at build time):
  FASTLM_DEBUG=1   turn Cython bounds/wraparound checks back on and compile with -O0 -g.
"""
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTLM_DEBUG", "0") not in ("", "0")

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
compile_args += ["-fopenmp", "-fno-math-errno"]
link_args = ["-fopenmp"]

extensions = [
    Extension(
        f"fastlm._{pyx.stem}",
        [str(pyx)],
        depends=[str(h) for h in Path("csrc").glob("*.h")],   # header edits must rebuild too
        include_dirs=[np.get_include(), "csrc"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for pyx in sorted(Path("csrc").glob("*.pyx"))
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}

setup(ext_modules=cythonize(extensions, compiler_directives=directives, build_dir="build/cython"))
