"""Build the one compiled module (dmbackup.archive._hscan); everything else is in pyproject.toml.

The module is optional: where no C compiler or Python headers are found, the build goes on
without it and dmbackup uses the same extraction written in Python (slower, the same answers).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dmbackup.archive._hscan", ["dmbackup/archive/_hscan.c"], optional=True)])
