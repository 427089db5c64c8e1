"""Fault-tolerance tests that run and kill real ``zoo fit`` subprocesses."""
