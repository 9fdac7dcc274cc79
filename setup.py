"""Builds the compiled hot functions (``shmstore._hot._chot``). Where no compiler is
available the build of the extension fails softly and shmstore runs on its pure-Python
twin (``shmstore._hot.fallback``), as msgpack-python does; see README.md."""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc):
        if os.environ.get("SHMSTORE_REQUIRE_NATIVE", "").lower() in {"1", "true", "yes", "on"}:
            raise exc
        print(f"WARNING: shmstore's compiled core was not built ({exc}); using pure Python")


setup(
    ext_modules=[
        Extension(
            "shmstore._hot._chot",
            ["shmstore/_hot/_chot.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
