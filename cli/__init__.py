"""The ckptflow command line: the top layer."""
