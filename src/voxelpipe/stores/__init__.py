"""Volume stores: Zarr (dir, zip, sqlite), HDF5 and NPZ writers and readers behind one interface."""
