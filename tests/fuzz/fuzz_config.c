/* fuzz_config: the YAML cluster-file loader, ps_config_load_buf.
 * Input: the bytes of a cluster file.  Checks: a failure is PS_ECONFIG
 * or PS_ENOMEM with a message; a loaded config has at least one shard,
 * distinct shard ids that ps_config_shard finds, and a coordinator among
 * its shards. */
#include "fuzz.h"
#include "ps_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ps_config c;
  ps_errbuf eb;
  int rc = ps_config_load_buf(&c, "fuzz.yaml", data, size, &eb);
  fuzz_note("config", rc, &eb);
  if (rc < 0) {
    fuzz_check_error(rc, eb);
    fuzz_check(rc == PS_ECONFIG || rc == PS_ENOMEM, "rc %s", ps_errname(rc));
    return 0;
  }
  fuzz_check(c.nshards > 0, "a config without shards");
  uint32_t *ids = malloc(c.nshards * sizeof *ids);
  fuzz_check(ids != NULL, "out of memory");
  ps_config_shard_ids(&c, ids);
  for (size_t i = 0; i < c.nshards; i++)
    fuzz_check(ps_config_shard(&c, ids[i]) == &c.shards[i], "shard id %u found elsewhere",
               ids[i]);
  const ps_shard_conf *co = ps_config_coordinator(&c);
  fuzz_check(co >= c.shards && co < c.shards + c.nshards, "coordinator outside the shards");
  free(ids);
  ps_config_release(&c);
  ps_config_release(&c); /* idempotent */
  return 0;
}
