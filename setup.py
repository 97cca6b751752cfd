"""The optional C helper of cowmp.share() (cowmp/_immortal.c), built when a compiler is
present; without it, cowmp/immortal.py walks the data in Python to the same result."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cowmp._immortal", ["cowmp/_immortal.c"], optional=True)])
