"""The compiled kernels build for a machine without x86 SIMD. Each csrc/*.pyx, translated by Cython, is compiled
for aarch64 (``gcc -fsyntax-only``, OpenMP on): there cpu_isa.h knows no SIMD level, the x86 kernels are left out
and only the portable C paths exist, so a name that only the x86 part of a header defines (as LIN_GEMM_MR once
was) fails here. The x86 build is the package the other tests import. .ci/run installs Debian's
g++-aarch64-linux-gnu (and its gcc) for this test."""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

CSRC = Path(__file__).parents[1] / "csrc"
CROSS = "aarch64-linux-gnu-"


@pytest.mark.parametrize("pyx", sorted(CSRC.glob("*.pyx")), ids=lambda p: p.stem)
def test_compiles_for_aarch64(pyx, tmp_path):
    cplus = "# distutils: language = c++" in pyx.read_text()      # as setup.py's cythonize reads it
    cc = shutil.which(CROSS + ("g++" if cplus else "gcc"))
    if cc is None:
        pytest.skip(f"{CROSS}g++ / gcc are not installed (Debian: apt-get install g++-aarch64-linux-gnu)")
    c_file = tmp_path / (pyx.stem + (".cpp" if cplus else ".c"))
    cython = subprocess.run([sys.executable, "-m", "cython", "-3", *(["--cplus"] if cplus else []), "--directive",
                             "cdivision=True", "-I", str(CSRC), str(pyx), "-o", str(c_file)],
                            capture_output=True, text=True)
    assert cython.returncode == 0, cython.stderr[-2000:]
    result = subprocess.run([cc, "-fsyntax-only", "-fopenmp", "-O2", "-DNPY_NO_DEPRECATED_API=NPY_2_0_API_VERSION",
                             "-I", sysconfig.get_paths()["include"], "-I", np.get_include(), "-I", str(CSRC),
                             str(c_file)], capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 0, "\n".join(errors[:20]) or result.stderr[-2000:]
