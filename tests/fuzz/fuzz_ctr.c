/* fuzz_ctr: the Criteo TSV reader, psw_ctr_load (worker/psw_ctr.c).
 * Input: a limit byte (0: all lines, else that many samples), then the
 * file, given to the reader as a memory file (gzipped or plain, as it
 * detects).  Checks: failures are PS_EIO / PS_EFORMAT / PS_ENOMEM with a
 * message and nothing to release; a loaded log has at most the limit of
 * samples, labels 0 or 1, finite dense features. */
#include "fuzz.h"
#include "psw_ctr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_file file;
  if (size < 1) return 0;
  fuzz_file_set(&file, data + 1, size - 1);
  psw_ctr c;
  ps_errbuf eb;
  int rc = psw_ctr_load(&c, file.path, data[0], &eb);
  fuzz_note("ctr", rc, &eb);
  if (rc < 0) {
    fuzz_check_error(rc, eb);
    fuzz_check(rc == PS_EIO || rc == PS_EFORMAT || rc == PS_ENOMEM, "ctr: unexpected %s",
               ps_errname(rc));
    fuzz_check(!c.n && !c.label && !c.dense && !c.keys, "ctr: a failed load left data");
    return 0;
  }
  fuzz_check(!data[0] || c.n <= data[0], "ctr: %llu samples over the limit %u",
             (unsigned long long)c.n, data[0]);
  for (uint64_t i = 0; i < c.n; i++) fuzz_check(c.label[i] == 0 || c.label[i] == 1, "ctr: label");
  fuzz_touch(c.dense, c.n * PSW_CTR_DENSE);
  for (uint64_t i = 0; i < c.n * PSW_CTR_DENSE; i++)
    fuzz_check(c.dense[i] == c.dense[i] && c.dense[i] - c.dense[i] == 0, "ctr: non-finite feature");
  psw_ctr_release(&c);
  return 0;
}
