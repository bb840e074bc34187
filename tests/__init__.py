"""The test suite, a package: its helpers import as `tests.<module>`, pytest putting the repository root on
sys.path."""
