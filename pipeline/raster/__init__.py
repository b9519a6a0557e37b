"""segpipe raster: see the modules of this folder."""
