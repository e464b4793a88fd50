/* fuzz_csv: the CSV reader, psw_data_load_csv (worker/psw_data.c).
 * Input: a selection byte (fuzz_data.h), then the file, given to the
 * reader as a memory file (gzipped or plain, as it detects).  Checks:
 * failures are PS_EIO / PS_EFORMAT / PS_EINVAL / PS_ENOMEM with a
 * message; a loaded set as fuzz_data_check. */
#include "fuzz.h"
#include "fuzz_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_file file;
  if (size < 1) return 0;
  fuzz_file_set(&file, data + 1, size - 1);
  psw_data_sel sel;
  uint32_t part;
  const psw_data_sel *s = fuzz_data_sel(data[0], &sel, &part);
  psw_dataset d;
  ps_errbuf eb;
  int rc = psw_data_load_csv(&d, file.path, 0.5f, s, &eb);
  fuzz_note("csv", rc, &eb);
  if (rc < 0) {
    fuzz_data_failed(rc, &eb, &d);
    return 0;
  }
  fuzz_data_check(&d, s);
  fuzz_check(!d.rows && !d.cols, "CSV with rows or columns");
  psw_data_release(&d);
  return 0;
}
