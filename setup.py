"""Build the C core: the slab engine with its CPython binding, and the XSAVE probe.

Environment:
  KMEMCACHE_SANITIZE=1   build with -fsanitize=address,undefined (see .ci/run)
  KMEMCACHE_WERROR=1     turn compiler warnings into errors
"""

import glob
import os
import shutil

from setuptools import Extension, setup

warn = ["-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
if os.environ.get("KMEMCACHE_WERROR") == "1":
    warn.append("-Werror")
cflags = ["-std=c11", "-O2", "-D_GNU_SOURCE", *warn]
ldflags: list[str] = []
# Sanitized objects get a build folder of their own: setuptools reuses object
# files that look up to date, and an ASan object in a plain build fails at
# import ("ASan runtime does not come first").
options: dict[str, dict[str, str]] = {}
if os.environ.get("KMEMCACHE_SANITIZE") == "1":
    options["build"] = {"build_base": "build/sanitize"}
    san = [
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=undefined",
    ]
    cflags = [f for f in cflags if f != "-O2"] + ["-O1", "-g", *san]
    ldflags += san

engine_sources = sorted(glob.glob("csrc/engine/*.c"))

# The C API's header (src/kmemcache/include/kmemcache.h, kmemcache.get_include())
# includes the engine's header, which the package carries beside it: copied here,
# so that there is one kmc.h, the engine's.
if os.path.exists("csrc/engine/kmc.h"):
    shutil.copyfile("csrc/engine/kmc.h", "src/kmemcache/include/kmc.h")

setup(
    options=options,
    ext_modules=[
        Extension(
            "kmemcache._kmemcache",
            sources=[*engine_sources, *sorted(glob.glob("csrc/binding/*.c"))],
            include_dirs=["csrc/engine", "src/kmemcache/include"],
            # Only PyInit__kmemcache is exported: other extensions reach the
            # engine through the C API capsule, never through its symbols.
            extra_compile_args=[*cflags, "-fvisibility=hidden"],
            extra_link_args=[*ldflags, "-pthread"],
        ),
        Extension(
            "kmemcache.demo._xsave",
            sources=["csrc/xsave/xsave.c"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        ),
    ],
)
