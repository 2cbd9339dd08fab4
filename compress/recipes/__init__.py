"""Recipe modules; each registers itself and runs as ``python -m compress.recipes.<name>``."""
