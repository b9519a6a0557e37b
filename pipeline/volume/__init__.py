"""segpipe volume: see the modules of this folder."""
