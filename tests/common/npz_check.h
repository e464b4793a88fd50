/* npz_check: an .npz checked by Python's zipfile (python3, no numpy
 * needed), shared by the ps_npz_stream tests and psctl export's. */
#ifndef NPZ_CHECK_H
#define NPZ_CHECK_H

/* ps_test_npz_py checks the archive at PATH (structure, zip64 records,
 * CRC-32, NPY headers; scripts in DIR) and returns one line per member,
 * "NAME.npy DESCR SHAPE v0 v1 ..." (integers with %d, floats with %g), in
 * archive order; caller frees.  Fails the running test when Python refuses
 * the file. */
char *ps_test_npz_py(const char *dir, const char *path);

#endif
