"""Side-by-side performance benchmarks of the zoo (``python -m benchmarks.run``).

Every figure is a ratio of contenders measured interleaved in the same run (A B A B …),
so that the noise of a shared machine hits all of them alike. See ``benchmarks/README.md``.
"""
