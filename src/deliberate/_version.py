"""The package version, in a leaf module that imports nothing: the recorder (which stamps it on
every record) and the CLI (``--version``) read it from here instead of importing the package
root, and ``deliberate.__version__`` re-exports it. Keep it equal to ``version`` in
pyproject.toml (tests/test_architecture.py checks)."""

__version__ = "0.1.0"
