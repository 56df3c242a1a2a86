"""Builds the optional C hot path (dreamlake/_hotpath.c) beside the pure-Python package.

Everything else is declared in pyproject.toml. ``optional=True``: a machine
without a C compiler still installs DreamLake, which then runs the pure-Python
hot path (the same behaviour, slower; see dreamlake/_hotpath.c for why C).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dreamlake._hotpath",
            sources=["dreamlake/_hotpath.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
