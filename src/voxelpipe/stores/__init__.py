"""Volume stores: Zarr (dir, zip, sqlite; OME-Zarr NGFF 0.5 metadata), HDF5 and NPZ writers and readers behind one
interface."""
