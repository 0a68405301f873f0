# setup.py: the compiler finds kmemcache.h in the installed package.
from setuptools import Extension, setup

import kmemcache

setup(ext_modules=[Extension("ring", ["ring.c"], include_dirs=[kmemcache.get_include()])])
