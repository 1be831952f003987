"""Build the compiled kernels: every ``csrc/<name>.pyx`` becomes the extension ``fastlm._<name>``.

Environment switches (read at build time):
  FASTLM_DEBUG=1     turn Cython bounds/wraparound checks back on and compile with -O0 -g.
  FASTLM_SANITIZE=1  build with AddressSanitizer and UndefinedBehaviorSanitizer (-O1 -g, any UB fatal); run
                     Python with the ASan runtime preloaded, see README "Building".
"""
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTLM_DEBUG", "0") not in ("", "0")
SANITIZE = os.environ.get("FASTLM_SANITIZE", "0") not in ("", "0")

compile_args = ["-O0", "-g"] if DEBUG else ["-O1", "-g"] if SANITIZE else ["-O3"]
compile_args += ["-fopenmp", "-fno-math-errno"]
link_args = ["-fopenmp"]
if SANITIZE:
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    compile_args += sanitizers
    link_args += sanitizers

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

# A sanitized build keeps its C files apart, so that switching back rebuilds (with build_ext --force).
setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            build_dir="build/cython-sanitize" if SANITIZE else "build/cython"))
