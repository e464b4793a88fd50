/* fuzz_clockstate: the coordinator's saved table (DATA_DIR/coordinator.state),
 * psd_clock_load (psd_clock.h invariant 10).
 * Input: the bytes of a saved table.  Checks: a failure is PS_EFORMAT,
 * PS_ECONFIG (another partition count) or PS_ENOMEM with a message; a loaded table saves, and that save loads
 * again into the same save (a round trip is stable). */
#include <string.h>

#include "fuzz.h"
#include "psd_clock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* fuzz_table makes the table the seeds were saved from: 3 workers
 * expected, 8 partitions. */
static psd_clock *fuzz_table(void) {
  psd_clock_opts o = {.heartbeat_ms = 100, .lease_ms = 1000, .pull_timeout_ms = 5000,
                      .world_size = 3, .nparts = 8};
  psd_clock *c;
  ps_errbuf eb;
  fuzz_check(psd_clock_new(&c, &o, &eb) == 0, "psd_clock_new: %s", eb.msg);
  return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  fuzz_check(text != NULL, "out of memory");
  memcpy(text, data, size);
  text[size] = 0;
  psd_clock *c = fuzz_table();
  ps_errbuf eb;
  int rc = psd_clock_load(c, text, 1000, &eb);
  fuzz_note("clockstate", rc, &eb);
  if (rc < 0) {
    fuzz_check_error(rc, eb);
    fuzz_check(rc == PS_EFORMAT || rc == PS_ECONFIG || rc == PS_ENOMEM, "rc %s", ps_errname(rc));
  } else {
    char *a, *b;
    size_t na, nb;
    fuzz_check(psd_clock_save(c, &a, &na, &eb) == 0, "save: %s", eb.msg);
    psd_clock *d = fuzz_table();
    fuzz_check(psd_clock_load(d, a, 1000, &eb) == 0, "its own save does not load: %s", eb.msg);
    fuzz_check(psd_clock_save(d, &b, &nb, &eb) == 0, "save: %s", eb.msg);
    fuzz_check(na == nb && !memcmp(a, b, na), "a round trip changed the table:\n%s---\n%s", a, b);
    free(a);
    free(b);
    psd_clock_free(d);
  }
  psd_clock_free(c);
  free(text);
  return 0;
}
