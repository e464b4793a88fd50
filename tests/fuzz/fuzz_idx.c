/* fuzz_idx: the IDX reader, psw_data_load_idx (worker/psw_data.c).
 * Input: a selection byte (fuzz_data.h), a 2-byte little-endian length N,
 * then N bytes of the images file and the rest as the labels file, each
 * given to the reader as a memory file (gzipped or plain, as it
 * detects).  Checks: failures are PS_EIO / PS_EFORMAT / PS_EINVAL /
 * PS_ENOMEM with a message; a loaded set as fuzz_data_check. */
#include "fuzz.h"
#include "fuzz_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_file images, labels;
  if (size < 3) return 0;
  size_t n = (size_t)data[1] | (size_t)data[2] << 8;
  if (n > size - 3) n = size - 3;
  fuzz_file_set(&images, data + 3, n);
  fuzz_file_set(&labels, data + 3 + n, size - 3 - n);
  psw_data_sel sel;
  uint32_t part;
  const psw_data_sel *s = fuzz_data_sel(data[0], &sel, &part);
  psw_dataset d;
  ps_errbuf eb;
  int rc = psw_data_load_idx(&d, images.path, labels.path, 1.0f / 255, s, &eb);
  fuzz_note("idx", rc, &eb);
  if (rc < 0) {
    fuzz_data_failed(rc, &eb, &d);
    return 0;
  }
  fuzz_data_check(&d, s);
  fuzz_check(d.rows && d.cols, "IDX images without rows or columns");
  for (uint64_t i = 0; i < d.n * d.dim; i++)
    fuzz_check(d.x[i] >= 0 && d.x[i] <= 1.0f, "pixel %g", d.x[i]);
  psw_data_release(&d);
  psw_data_release(&d); /* idempotent */
  return 0;
}
