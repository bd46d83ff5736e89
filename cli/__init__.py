"""The `mrcnn` command line (installed as `mrcnn.cli`). Thin: parses, calls library functions, prints."""
