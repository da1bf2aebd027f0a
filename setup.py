"""tica's build, beside pyproject.toml (which lists the C kernels): each kernel is built with
OpenMP where the compiler has it, and without where it has not (a compiler with no OpenMP
runtime, as Apple's clang is out of the box). The kernels check `_OPENMP` themselves: without
it the coder's threads are the coder's own pool's and the integer layers end on one thread,
with the same bytes and the same numbers."""

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, LinkError

OPENMP_FLAGS = ("-fopenmp",)


class BuildExt(build_ext):
    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, LinkError) as exc:
            if not set(OPENMP_FLAGS) & set(ext.extra_compile_args + ext.extra_link_args):
                raise
            self.warn(f"{ext.name}: the compiler refused OpenMP ({exc}); building it without "
                      "(the same results, one thread a kernel call)")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP_FLAGS]
            ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP_FLAGS]
            super().build_extension(ext)


setup(cmdclass={"build_ext": BuildExt})
