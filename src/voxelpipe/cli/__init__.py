"""Command line: ``python -m voxelpipe <command>``; ``main`` parses, runs the command and returns its exit code."""
from voxelpipe.cli.app import main

__all__ = ["main"]
