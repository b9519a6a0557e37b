"""segpipe demo: see the modules of this folder."""
