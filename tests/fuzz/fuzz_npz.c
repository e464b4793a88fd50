/* fuzz_npz: the .npz reader, ps_npz_read (common/ps_npz.c).
 * Input: the file, given to the reader as a memory file.  Checks:
 * failures are PS_EIO / PS_EFORMAT / PS_ENOTSUP / PS_ENOMEM with a
 * message and leave nothing; a read archive's entries have at most
 * PS_NPZ_MAX_DIMS dimensions whose product is nelems, nelems floats of
 * data (read here whole), and are found by name. */
#include "fuzz.h"
#include "ps_npz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_file file;
  fuzz_file_set(&file, data, size);
  ps_npz z;
  ps_errbuf eb;
  int rc = ps_npz_read(&z, file.path, &eb);
  fuzz_note("npz", rc, &eb);
  if (rc < 0) {
    fuzz_check_error(rc, eb);
    fuzz_check(rc == PS_EIO || rc == PS_EFORMAT || rc == PS_ENOTSUP || rc == PS_ENOMEM,
               "rc %s (%s)", ps_errname(rc), eb.msg);
    fuzz_check(z.n == 0 && !z.entries, "a failed read left entries");
    return 0;
  }
  for (size_t i = 0; i < z.n; i++) {
    const ps_npz_entry *e = &z.entries[i];
    fuzz_check(e->ndim <= PS_NPZ_MAX_DIMS, "%u dimensions", e->ndim);
    unsigned __int128 prod = 1;
    for (uint32_t d = 0; d < e->ndim; d++) prod *= e->shape[d];
    fuzz_check(prod == e->nelems, "member '%s': shape product != nelems %llu", e->name,
               (unsigned long long)e->nelems);
    fuzz_check(e->nelems * 4 <= size, "member '%s': %llu elements from %zu bytes", e->name,
               (unsigned long long)e->nelems, size);
    fuzz_touch(e->data, e->nelems);
    const ps_npz_entry *f = ps_npz_find(&z, e->name);
    fuzz_check(f && !strcmp(f->name, e->name), "member '%s' not found", e->name);
  }
  ps_npz_release(&z);
  return 0;
}
