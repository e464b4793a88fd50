/* Tests for ps_config: a full file read back, defaults, and every kind of
 * bad file with its exact "file:line:col: message". */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps_config.h"
#include "ps_test.h"

static const char good_yaml[] =
    "# every key set to a non-default value\n"
    "cluster: prod-1\n"
    "chunk_elems: 4096\n"
    "durability:\n"
    "  mode: sync\n"
    "  flush_interval_ms: 250\n"
    "  group_commit_max_bytes: 65536\n"
    "  group_commit_max_wait_us: 200\n"
    "limits:\n"
    "  max_request_bytes: 1048576\n"
    "  drain_timeout_ms: 0\n"
    "  max_connections: 64\n"
    "  idle_timeout_ms: 40000\n"
    "  max_queued_bytes: 33554432\n"
    "  max_shard_bytes: 1073741824\n"
    "shards:\n"
    "  - id: 3\n"
    "    grpc: 10.0.0.1:7000\n"
    "    channel: \"10.0.0.1:7100\"\n"
    "    data_dir: /srv/psd/3\n"
    "  - {id: 8, grpc: '[::1]:7001', channel: host-b:7101, data_dir: d8}\n"
    "workers:\n"
    "  count: 4\n"
    "  min: 3\n"
    "  device: cuda:1\n"
    "  retry_ms: 500\n"
    "  slowdown: [1, 2.5]\n"
    "  jitter_prob: 0.25\n"
    "  jitter_factor: 4\n"
    "training:\n"
    "  model: mlp\n"
    "  epochs: 3\n"
    "  batch_size: 256\n"
    "  seed: 18446744073709551615\n"
    "  consistency: ssp\n"
    "  staleness: 2\n"
    "data:\n"
    "  format: idx\n"
    "  train_images: a.gz\n"
    "  train_labels: b.gz\n"
    "  test_images: c.gz\n"
    "  test_labels: d.gz\n"
    "  scale: 0.5\n"
    "  partitions: 8\n"
    "  limit: 1000\n"
    "sparse:\n"
    "  memory_rows: 1000000\n"
    "  admit_after: 2\n"
    "  max_new_rows: 0\n"
    "  plane: grpc\n"
    "security:\n"
    "  mode: tls\n"
    "  tls:\n"
    "    ca: certs/ca.pem\n"
    "    cert: certs/shard.pem\n"
    "    key: certs/shard.key\n"
    "    worker_cert: certs/worker.pem\n"
    "    worker_key: certs/worker.key\n"
    "    operator_cert: certs/operator.pem\n"
    "    operator_key: certs/operator.key\n"
    "  require_client_cert: false\n"
    "  secret_file: certs/cluster.secret\n"
    "  payload_mac: true\n";

/* write_yaml writes TEXT to a fresh file and returns its path (static). */
static const char *write_yaml(const char *text) {
  static char path[600];
  snprintf(path, sizeof path, "%s/c.yaml", ps_test_tmpdir());
  ps_test_write_file(path, text);
  return path;
}

START_TEST(test_config_good_file) {
  ps_config c;
  ps_errbuf eb = {""};
  const char *path = write_yaml(good_yaml);
  ck_assert_msg(ps_config_load(&c, path, &eb) == 0, "%s", eb.msg);
  ck_assert_str_eq(c.path, path);
  ck_assert_str_eq(c.cluster, "prod-1");
  ck_assert_uint_eq(c.chunk_elems, 4096);
  ck_assert_int_eq(c.durability, PS_DUR_SYNC);
  ck_assert_uint_eq(c.flush_interval_ms, 250);
  ck_assert_uint_eq(c.group_commit_max_bytes, 65536);
  ck_assert_uint_eq(c.group_commit_max_wait_us, 200);
  ck_assert_uint_eq(c.max_request_bytes, 1048576);
  ck_assert_uint_eq(c.drain_timeout_ms, 0);
  ck_assert_uint_eq(c.max_connections, 64);
  ck_assert_uint_eq(c.idle_timeout_ms, 40000);
  ck_assert_uint_eq(c.max_queued_bytes, 32u << 20);
  ck_assert_uint_eq(c.max_shard_bytes, 1u << 30);
  ck_assert_uint_eq(ps_config_shard_budget(&c), 1u << 30);
  ck_assert_uint_eq(c.nshards, 2);
  ck_assert_uint_eq(c.shards[0].id, 3);
  ck_assert_str_eq(c.shards[0].grpc_addr, "10.0.0.1:7000");
  ck_assert_str_eq(c.shards[0].channel_addr, "10.0.0.1:7100");
  ck_assert_str_eq(c.shards[0].data_dir, "/srv/psd/3");
  ck_assert_uint_eq(c.shards[1].id, 8);
  ck_assert_str_eq(c.shards[1].grpc_addr, "[::1]:7001");
  ck_assert_str_eq(c.shards[1].channel_addr, "host-b:7101");
  ck_assert_str_eq(c.shards[1].data_dir, "d8");
  ck_assert_uint_eq(c.workers.count, 4);
  ck_assert_uint_eq(c.workers.min, 3);
  ck_assert_str_eq(c.workers.device, "cuda:1");
  ck_assert_uint_eq(c.workers.retry_ms, 500);
  ck_assert_uint_eq(c.workers.nslowdown, 2);
  ck_assert(c.workers.slowdown[0] == 1 && c.workers.slowdown[1] == 2.5);
  ck_assert(c.workers.jitter_prob == 0.25 && c.workers.jitter_factor == 4);
  ck_assert_str_eq(c.training.model, "mlp");
  ck_assert_uint_eq(c.training.epochs, 3);
  ck_assert_uint_eq(c.training.batch_size, 256);
  ck_assert(c.training.seed == UINT64_MAX);
  ck_assert_str_eq(c.training.consistency, "ssp");
  ck_assert_uint_eq(c.training.staleness, 2);
  ck_assert_str_eq(c.data.format, "idx");
  ck_assert_str_eq(c.data.train_images, "a.gz");
  ck_assert_str_eq(c.data.train_labels, "b.gz");
  ck_assert_str_eq(c.data.test_images, "c.gz");
  ck_assert_str_eq(c.data.test_labels, "d.gz");
  ck_assert(c.data.scale == 0.5);
  ck_assert_uint_eq(c.data.partitions, 8);
  ck_assert_uint_eq(c.data.limit, 1000);
  ck_assert_int_eq(c.security.mode, PS_SEC_TLS);
  ck_assert_str_eq(c.security.tls.ca, "certs/ca.pem");
  ck_assert_str_eq(c.security.tls.cert, "certs/shard.pem");
  ck_assert_str_eq(c.security.tls.key, "certs/shard.key");
  ck_assert_str_eq(c.security.tls.worker_cert, "certs/worker.pem");
  ck_assert_str_eq(c.security.tls.worker_key, "certs/worker.key");
  ck_assert_str_eq(c.security.tls.operator_cert, "certs/operator.pem");
  ck_assert_str_eq(c.security.tls.operator_key, "certs/operator.key");
  ck_assert_int_eq(c.security.require_client_cert, 0);
  ck_assert_str_eq(c.security.secret_file, "certs/cluster.secret");
  ck_assert_int_eq(c.security.payload_mac, 1);
  ck_assert_uint_eq(c.sparse.memory_rows, 1000000);
  ck_assert_uint_eq(c.sparse.admit_after, 2);
  ck_assert_uint_eq(c.sparse.max_new_rows, 0);
  ck_assert_int_eq(c.sparse.plane, PS_SPARSE_PLANE_GRPC);
  ck_assert_ptr_eq(ps_config_shard(&c, 8), &c.shards[1]);
  ck_assert_ptr_null(ps_config_shard(&c, 4));
  uint32_t ids[2];
  ps_config_shard_ids(&c, ids);
  ck_assert_uint_eq(ids[0], 3);
  ck_assert_uint_eq(ids[1], 8);
  ps_config_release(&c);
  ck_assert_ptr_null(c.shards);
  ps_config_release(&c); /* idempotent */
}
END_TEST

START_TEST(test_config_defaults) {
  ps_config c;
  ps_errbuf eb = {""};
  const char *path = write_yaml("cluster: t\nsecurity: {mode: none}\nshards:\n  - id: 0\n"
                                "    grpc: h:1\n    channel: h:2\n    data_dir: /d\n");
  ck_assert_msg(ps_config_load(&c, path, &eb) == 0, "%s", eb.msg);
  ck_assert_uint_eq(c.chunk_elems, 65536);
  ck_assert_int_eq(c.durability, PS_DUR_PERIODIC);
  ck_assert_uint_eq(c.flush_interval_ms, 1000);
  ck_assert_uint_eq(c.group_commit_max_bytes, 4194304);
  ck_assert_uint_eq(c.group_commit_max_wait_us, 0);
  ck_assert_uint_eq(c.max_request_bytes, 256u << 20);
  ck_assert_uint_eq(c.drain_timeout_ms, 5000);
  ck_assert_uint_eq(c.max_connections, 1024);
  ck_assert_uint_eq(c.idle_timeout_ms, 120000);
  ck_assert_uint_eq(c.max_queued_bytes, 256u << 20);
  ck_assert_uint_eq(c.max_shard_bytes, 0);
  /* The default budget is a third of what this process may use. */
  uint64_t budget = ps_config_shard_budget(&c);
  uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
  ck_assert(budget > 0 && budget <= phys / 3);
  ck_assert_uint_eq(c.workers.count, 1);
  ck_assert_uint_eq(c.workers.min, 1); /* = count */
  ck_assert_str_eq(c.workers.device, "auto");
  ck_assert_uint_eq(c.workers.retry_ms, 30000);
  /* half the 5 s lease; at least 1 s */
  ck_assert_int_eq(ps_config_dead_ms(&c), 2500);
  c.workers.lease_ms = 1500;
  ck_assert_int_eq(ps_config_dead_ms(&c), 1000);
  c.workers.lease_ms = 5000;
  ck_assert_uint_eq(c.workers.nslowdown, 0);
  ck_assert(c.workers.jitter_prob == 0 && c.workers.jitter_factor == 1);
  ck_assert_int_eq(c.workers.shared_memory, 1);
  ck_assert_ptr_null(c.training.model);
  ck_assert_uint_eq(c.training.epochs, 10);
  ck_assert_uint_eq(c.training.batch_size, 64);
  ck_assert(c.training.seed == 1);
  ck_assert_str_eq(c.training.consistency, "asp");
  ck_assert_uint_eq(c.training.staleness, 0);
  ck_assert_str_eq(c.training.codec, "fp32");
  ck_assert_str_eq(c.training.pull_codec, "fp32");
  ck_assert(c.training.topk == 0.01);
  ck_assert_uint_eq(c.training.codec_warmup_steps, 0);
  ck_assert_uint_eq(c.training.codec_min_elems, 1024);
  ck_assert_str_eq(c.data.format, "idx");
  ck_assert_ptr_null(c.data.train_images);
  ck_assert(c.data.scale == 1.0 / 255);
  ck_assert_uint_eq(c.data.partitions, 16);
  ck_assert_uint_eq(c.data.limit, 0);
  ck_assert_int_eq(c.security.mode, PS_SEC_NONE);
  ck_assert_int_eq(c.security.require_client_cert, 1);
  ck_assert_ptr_null(c.security.tls.ca);
  ck_assert_ptr_null(c.security.secret_file);
  ck_assert_int_eq(c.security.payload_mac, 0);
  ck_assert_uint_eq(c.sparse.memory_rows, 0);
  ck_assert_uint_eq(c.sparse.admit_after, 0);
  ck_assert_uint_eq(c.sparse.max_new_rows, 1048576);
  ck_assert_int_eq(c.sparse.plane, PS_SPARSE_PLANE_CHANNEL);
  ps_config_release(&c);
}
END_TEST

/* expect_warning loads TEXT, which must load, and checks its warning
 * text: it holds WANT and WANT2 (either may be NULL), or is empty when
 * WANT is NULL; I names the case in a failure. */
static void expect_warning(const char *text, const char *want, const char *want2, size_t i) {
  ps_config c;
  ps_errbuf eb = {""};
  ck_assert_msg(ps_config_load(&c, write_yaml(text), &eb) == 0, "case %zu: %s", i, eb.msg);
  if (want)
    ck_assert_msg(strstr(c.warning, want) && (!want2 || strstr(c.warning, want2)),
                  "case %zu: '%s'", i, c.warning);
  else
    ck_assert_msg(!c.warning[0], "case %zu: '%s'", i, c.warning);
  ps_config_release(&c);
}

/* group_commit_* under mode periodic loads (it applies once the mode is
 * sync) with a warning line per key naming its line and column; under
 * sync, or absent, no warning. */
START_TEST(test_config_group_commit_warning) {
  static const struct {
    const char *durability, *want, *want2;
  } cases[] = {
      {"durability:\n  mode: periodic\n  group_commit_max_wait_us: 0\n",
       "c.yaml:4:29: warning: 'group_commit_max_wait_us' applies under durability mode sync only",
       NULL},
      {"durability:\n  group_commit_max_bytes: 65536\n  mode: periodic\n",
       "c.yaml:3:27: warning: 'group_commit_max_bytes'", NULL},
      {"durability:\n  group_commit_max_wait_us: 9\n  group_commit_max_bytes: 65536\n",
       "c.yaml:4:27: warning: 'group_commit_max_bytes' applies under durability mode sync only; "
       "mode periodic ignores it\n",
       "c.yaml:3:29: warning: 'group_commit_max_wait_us' applies under durability mode sync only"},
      {"durability:\n  group_commit_max_bytes: 65536\n  mode: sync\n", NULL, NULL},
      {"durability:\n  mode: periodic\n", NULL, NULL},
      {"", NULL, NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[600];
    snprintf(text, sizeof text,
             "cluster: t\n%ssecurity: {mode: none}\nshards:\n  - id: 0\n    grpc: h:1\n"
             "    channel: h:2\n    data_dir: /d\n",
             cases[i].durability);
    expect_warning(text, cases[i].want, cases[i].want2, i);
  }
}
END_TEST

/* require_client_cert under mode none loads with a warning (it has no
 * effect there); under tls, or absent, none; security: none (a scalar)
 * none either.  Likewise training.topk under another push codec. */
START_TEST(test_config_require_cert_warning) {
  static const struct {
    const char *security, *want;
  } cases[] = {
      {"security:\n  mode: none\n  require_client_cert: false\n",
       "c.yaml:4:24: warning: 'require_client_cert' applies under mode tls only"},
      {"security:\n  mode: none\n", NULL},
      {"security: none\n", NULL},
      {"security: none\ntraining:\n  topk: 0.1\n",
       "c.yaml:4:9: warning: 'topk' applies to topk pushes only: codec fp32 sends none"},
      {"security: none\ntraining:\n  topk: 0.1\n  codec: topk\n", NULL},
      {"security: none\ntraining:\n  consistency: bsp\n  staleness: 3\n",
       "c.yaml:5:14: warning: 'staleness' applies under consistency ssp only: bsp ignores it"},
      {"security: none\ntraining:\n  staleness: 3\n",
       "c.yaml:4:14: warning: 'staleness' applies under consistency ssp only: asp ignores it"},
      {"security: none\ntraining:\n  staleness: 3\n  consistency: ssp\n", NULL},
      {"security: none\ndata:\n  limit: 10\n",
       "c.yaml:4:10: warning: 'limit' (10) is below 'partitions' (16): 6 partitions hold no "
       "sample"},
      {"security: none\ndata:\n  limit: 16\n", NULL},
      {"security: none\ndata:\n  format: criteo\n  scale: 1/255\n",
       "c.yaml:5:10: warning: 'scale' does not apply to format 'criteo'"},
      {"security: none\ndata:\n  scale: 1/255\n", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[600];
    snprintf(text, sizeof text,
             "cluster: t\n%sshards:\n  - id: 0\n    grpc: h:1\n    channel: h:2\n"
             "    data_dir: /d\n",
             cases[i].security);
    expect_warning(text, cases[i].want, NULL, i);
  }
}
END_TEST

/* A section with a 'mode' key may be its mode alone: "durability: sync"
 * is "durability: {mode: sync}", the other keys at their defaults. */
START_TEST(test_config_mode_shorthand) {
  static const struct {
    const char *durability, *security;
    int mode;
  } cases[] = {
      {"durability: sync\n", "security: none\n", PS_DUR_SYNC},
      {"durability: periodic\n", "security: {mode: none}\n", PS_DUR_PERIODIC},
      {"durability: 'sync'\n", "security: none\n", PS_DUR_SYNC},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[600];
    snprintf(text, sizeof text,
             "cluster: t\n%s%sshards:\n  - id: 0\n    grpc: h:1\n    channel: h:2\n"
             "    data_dir: /d\n",
             cases[i].durability, cases[i].security);
    ps_config c;
    ps_errbuf eb = {""};
    ck_assert_msg(ps_config_load(&c, write_yaml(text), &eb) == 0, "case %zu: %s", i, eb.msg);
    ck_assert_int_eq(c.durability, cases[i].mode);
    ck_assert_uint_eq(c.flush_interval_ms, 1000);
    ck_assert_uint_eq(c.group_commit_max_bytes, 4194304);
    ck_assert_uint_eq(c.group_commit_max_wait_us, 0);
    ck_assert_int_eq(c.security.mode, PS_SEC_NONE);
    ck_assert_msg(!c.warning[0], "case %zu: '%s'", i, c.warning);
    ps_config_release(&c);
  }
}
END_TEST

/* Shards on different hosts may name the same data_dir (each host has
 * its own); on one host name it loads with a warning (the second psd to
 * start there is refused, unless they run in containers apart), trailing
 * slashes aside. */
START_TEST(test_config_data_dir_per_host) {
  static const struct {
    const char *b, *warn;
  } cases[] = {
      {"{id: 1, grpc: 'b:1', channel: 'b:2', data_dir: /d}", NULL},
      {"{id: 1, grpc: 'a:3', channel: 'a:4', data_dir: /d/}",
       "c.yaml:5:52: warning: 'data_dir' '/d/' is shard 0's too (line 4), on the same host 'a': "
       "unless they run apart (containers), the second one to start is refused"},
      {"{id: 1, grpc: 'a:3', channel: 'a:4', data_dir: /e}", NULL},
      /* beside, not inside; inside, but on another host */
      {"{id: 1, grpc: 'a:3', channel: 'a:4', data_dir: /dd}", NULL},
      {"{id: 1, grpc: 'a:3', channel: 'a:4', data_dir: /d2/d}", NULL},
      {"{id: 1, grpc: 'b:3', channel: 'b:4', data_dir: /d/1}", NULL},
      {"{id: 1, grpc: 'b:3', channel: 'b:4', data_dir: /}", NULL},
      /* "." holds no absolute path and none that climbs out of it */
      {"{id: 1, grpc: 'a:3', channel: 'a:4', data_dir: .}", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[400];
    snprintf(text, sizeof text,
             "cluster: t\nsecurity: none\nshards:\n"
             "  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: /d}\n  - %s\n",
             cases[i].b);
    expect_warning(text, cases[i].warn, NULL, i);
  }
  /* one host however it is written: the hosts compared as addresses
   * (ps_addr_same_host), not as text; 'localhost' and 127.0.0.1 counted
   * as two hosts */
  static const struct {
    const char *a, *b, *warn;
  } hosts[] = {
      {"localhost", "127.0.0.1", "on the same host '127.0.0.1' ('localhost' there)"},
      {"127.0.0.1", "[::1]", "on the same host '::1' ('127.0.0.1' there)"},
      {"LOCALHOST", "localhost", "on the same host 'localhost' ('LOCALHOST' there)"},
      {"[::1]", "[0:0::1]", "on the same host '0:0::1' ('::1' there)"},
      {"Host-A", "host-a", "on the same host 'host-a' ('Host-A' there)"},
      {"127.0.0.1", "127.0.0.2", "on the same host '127.0.0.2' ('127.0.0.1' there)"},
      {"[::ffff:10.0.0.1]", "10.0.0.1", "on the same host '10.0.0.1'"},
      {"10.0.0.1", "10.0.0.2", NULL},
      {"localhost", "10.0.0.1", NULL},
      {"host-a", "10.0.0.1", NULL}, /* no DNS */
  };
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
    char text[400];
    snprintf(text, sizeof text,
             "cluster: t\nsecurity: none\nshards:\n"
             "  - {id: 0, grpc: '%s:1', channel: '%s:2', data_dir: /d}\n"
             "  - {id: 1, grpc: '%s:3', channel: '%s:4', data_dir: /d}\n",
             hosts[i].a, hosts[i].a, hosts[i].b, hosts[i].b);
    expect_warning(text, hosts[i].warn, NULL, i);
  }
}
END_TEST

/* Files that load, with the warning they give (NULL: none): a wildcard
 * address and another on its port may be on different hosts (a warning),
 * addresses that differ only look alike, a trailing empty document. */
START_TEST(test_config_loads) {
  static const struct {
    const char *text, *warn;
  } cases[] = {
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: '0.0.0.0:7000', channel: 'a:2', data_dir: /d}\n"
       "  - {id: 1, grpc: '10.0.0.2:7000', channel: 'b:2', data_dir: /d}\n",
       "c.yaml:5:19: warning: '10.0.0.2:7000' and '0.0.0.0:7000' (line 4) share port 7000 and "
       "'0.0.0.0' is every address of its host: on one host the second to start cannot bind "
       "(fine on different hosts)"},
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: 'a:1', channel: '[::]:7000', data_dir: /d}\n"
       "aggregators:\n  - {name: g, grpc: 'b:7000', channel: 'b:2', workers: 1}\n",
       "c.yaml:6:21: warning: 'b:7000' and '[::]:7000' (line 4) share port 7000 and '::' is "
       "every address of its host"},
      /* an aggregator that expects more local workers than the job has:
       * each sum would wait max_delay_ms for the missing ones */
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: /d}\n"
       "aggregators:\n  - {name: g, grpc: 'b:1', channel: 'b:2', workers: 4}\n"
       "workers: {count: 3}\n",
       "c.yaml:6:53: warning: aggregator 'g' expects 4 local workers per clock ('workers'), more "
       "than workers' 'count' (3): unless more workers than that join, each of its sums waits "
       "'max_delay_ms' (20 ms) for pushes that never come"},
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: /d}\n"
       "aggregators:\n  - {name: g, grpc: 'b:1', channel: 'b:2', workers: 3}\n"
       "workers: {count: 3}\n", NULL},
      /* aggregators that together expect more local workers than the job
       * has, none alone: the job's workers cannot fill them all, so one at
       * least waits max_delay_ms on each sum (said nothing before) */
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: /d}\n"
       "aggregators:\n  - {name: g, grpc: 'b:1', channel: 'b:2', workers: 2}\n"
       "  - {name: h, grpc: 'c:1', channel: 'c:2', workers: 2}\n"
       "workers: {count: 3}\n",
       "c.yaml:8:18: warning: aggregators 'g', 'h' expect 4 local workers per clock together "
       "('workers': 2 + 2), more than workers' 'count' (3): unless more workers than that join, "
       "one of them at least waits its 'max_delay_ms' on each sum for pushes that never come"},
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: /d}\n"
       "aggregators:\n  - {name: g, grpc: 'b:1', channel: 'b:2', workers: 2}\n"
       "  - {name: h, grpc: 'c:1', channel: 'c:2', workers: 1}\n"
       "workers: {count: 3}\n", NULL},
      {"cluster: t\nsecurity: none\nshards:\n"
       "  - {id: 0, grpc: '127.0.0.1:7000', channel: '127.0.0.2:7000', data_dir: /d}\n"
       "  - {id: 1, grpc: '[::1]:7001', channel: '[::2]:7001', data_dir: /e}\n"
       "  - {id: 2, grpc: 'host-a:7002', channel: '10.0.0.1:7002', data_dir: /f}\n",
       NULL},
      {"cluster: t\nsecurity: none\nshards:\n  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: "
       "/d}\n---\n", NULL},
      {"cluster: t\nsecurity: none\nshards:\n  - {id: 0, grpc: 'a:1', channel: 'a:2', data_dir: "
       "/d}\n--- ~\n---\n# the end\n...\n", NULL},
      {"cluster: t\nsecurity: none\nshards:\n  - {id: 0, grpc: 'a:10', channel: 'a:2', data_dir: "
       "/d}\nlimits: {drain_timeout_ms: 0}\ndata: {scale: 0.5e-3}\n", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_warning(cases[i].text, cases[i].warn, NULL, i);
}
END_TEST

START_TEST(test_config_repo_examples) {
  /* The shipped examples must load (tests run from the repository root). */
  static const char *files[] = {"config/local-2shards.yaml", "config/fmnist-demo.yaml"};
  for (size_t i = 0; i < 2; i++) {
    ps_config c;
    ps_errbuf eb = {""};
    ck_assert_msg(ps_config_load(&c, files[i], &eb) == 0, "%s", eb.msg);
    ck_assert_uint_eq(c.nshards, 2);
    if (i == 1) {
      ck_assert_uint_eq(c.workers.count, 2);
      ck_assert_uint_eq(c.training.batch_size, 64);
      ck_assert_uint_eq(c.training.epochs, 10);
      ck_assert(c.data.scale == 1.0 / 255);
      ck_assert_str_eq(c.data.test_labels,
                       "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");
    }
    ps_config_release(&c);
  }
}
END_TEST

/* A shards list with one good entry, for the cases below. */
#define SHARD0 "shards:\n  - id: 0\n    grpc: h:1\n    channel: h:2\n    data_dir: /d\n"
/* A security section that loads (plaintext), for cases past the required keys. */
#define SEC0 "security: {mode: none}\n"
/* The start of a tls security section (lines 7..10 after "cluster" and
 * SHARD0; the tls mapping starts at 10:5). */
#define TLS0 "security:\n  mode: tls\n  tls:\n    ca: a.pem\n"

static const struct bad_case {
  const char *yaml;
  int err;
  const char *msg; /* after "PATH:" */
} bad_cases[] = {
    /* one shard's data_dir inside another's on one host (either order,
     * however the paths are spelt): the stores would share files */
    {"cluster: a\nsecurity: none\nshards:\n"
     "  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: /d}\n"
     "  - {id: 1, grpc: 'h:3', channel: 'h:4', data_dir: /d/1}\n",
     PS_ECONFIG,
     "5:52: 'data_dir' '/d/1' of shard 1 is inside shard 0's '/d' (line 4), on the same host "
     "'h': the two stores would share files; give each shard a directory of its own"},
    {"cluster: a\nsecurity: none\nshards:\n"
     "  - {id: 3, grpc: 'localhost:1', channel: 'h:2', data_dir: '/srv//psd/./0/'}\n"
     "  - {id: 7, grpc: '127.0.0.1:3', channel: 'h:4', data_dir: /srv/psd}\n",
     PS_ECONFIG,
     "5:60: 'data_dir' '/srv/psd' of shard 7 is the parent of shard 3's '/srv//psd/./0/' "
     "(line 4), on the same host '127.0.0.1' ('localhost' there): the two stores would share "
     "files; give each shard a directory of its own"},
    {"cluster: a\nsecurity: none\nshards:\n"
     "  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: /}\n"
     "  - {id: 1, grpc: 'h:3', channel: 'h:4', data_dir: /var/psd}\n",
     PS_ECONFIG,
     "5:52: 'data_dir' '/var/psd' of shard 1 is inside shard 0's '/' (line 4), on the same "
     "host 'h': the two stores would share files; give each shard a directory of its own"},
    {"cluster: a\nsecurity: none\nshards:\n"
     "  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: data}\n"
     "  - {id: 1, grpc: 'h:3', channel: 'h:4', data_dir: data/x}\n",
     PS_ECONFIG,
     "5:52: 'data_dir' 'data/x' of shard 1 is inside shard 0's 'data' (line 4), on the same "
     "host 'h': the two stores would share files; give each shard a directory of its own"},
    /* "." (psd's working directory) holds every relative path below it */
    {"cluster: a\nsecurity: none\nshards:\n"
     "  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: ./}\n"
     "  - {id: 1, grpc: 'h:3', channel: 'h:4', data_dir: psd1}\n",
     PS_ECONFIG,
     "5:52: 'data_dir' 'psd1' of shard 1 is inside shard 0's './' (line 4), on the same "
     "host 'h': the two stores would share files; give each shard a directory of its own"},
    {"cluster: a\nsecurity: none\nshards:\n"
     "  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: a/b}\n"
     "  - {id: 1, grpc: 'h:3', channel: 'h:4', data_dir: .}\n",
     PS_ECONFIG,
     "5:52: 'data_dir' '.' of shard 1 is the parent of shard 0's 'a/b' (line 4), on the same "
     "host 'h': the two stores would share files; give each shard a directory of its own"},
    {"cluster: a\nsparse:\n  memory_rows: -5\n" SHARD0, PS_ECONFIG,
     "3:16: 'memory_rows' is -5, outside 0..1099511627776"},
    {"cluster: a\ndurability:\n  group_commit_max_wait_us: -0\n" SHARD0, PS_ECONFIG,
     "3:29: 'group_commit_max_wait_us' is -0, outside 0..1000000"},
    {"cluster: a\nsparse:\n  memory_rows: 1099511627777\n" SHARD0, PS_ECONFIG,
     "3:16: 'memory_rows' is 1099511627777, outside 0..1099511627776"},
    {"cluster: a\nsparse:\n  admit_after: 1000001\n" SHARD0, PS_ECONFIG,
     "3:16: 'admit_after' is 1000001, outside 0..1000000"},
    {"cluster: a\nsparse:\n  max_new_rows: 1099511627777\n" SHARD0, PS_ECONFIG,
     "3:17: 'max_new_rows' is 1099511627777, outside 0..1099511627776"},
    {"cluster: a\nsparse:\n  max_new_rows: many\n" SHARD0, PS_ECONFIG,
     "3:17: expected an integer for 'max_new_rows'"},
    {"cluster: a\nsparse:\n  rows: 5\n" SHARD0, PS_ECONFIG, "3:3: unknown key 'rows' in 'sparse'"},
    {"cluster: a\nsparse: 100\n" SHARD0, PS_ECONFIG,
     "2:9: expected a mapping for 'sparse', got the value '100' (a section's keys go on the "
     "lines below it, indented)"},
    {"cluster: a\nsparse:\n  plane: rdma\n" SHARD0, PS_ECONFIG,
     "3:10: unknown value 'rdma' for 'plane' (expected channel or grpc)"},
    {"cluster: a\nbogus: 1\n" SHARD0, PS_ECONFIG, "2:1: unknown key 'bogus' at the top level"},
    {"cluster: a\ndurability:\n  mode: sync\n  flush: 5\n" SHARD0, PS_ECONFIG,
     "4:3: unknown key 'flush' in 'durability'"},
    {"cluster: a\n" SHARD0 "    port: 5\n", PS_ECONFIG,
     "7:5: unknown key 'port' in a 'shards' entry"},
    {"cluster: a\nchunk_elems: 5\nchunk_elems: 6\n" SHARD0, PS_ECONFIG,
     "3:1: duplicate key 'chunk_elems' (first at line 2)"},
    {"cluster: a\ndurability:\n  flush_interval_ms: soon\n" SHARD0, PS_ECONFIG,
     "3:22: expected an integer for 'flush_interval_ms'"},
    {"cluster: a\ndurability:\n  flush_interval_ms: [1]\n" SHARD0, PS_ECONFIG,
     "3:22: expected an integer for 'flush_interval_ms'"},
    {"cluster: a\ndurability:\n  group_commit_max_bytes: 100\n" SHARD0, PS_ECONFIG,
     "3:27: 'group_commit_max_bytes' is 100, outside 4096..1073741824"},
    {"cluster: a\ndurability:\n  group_commit_max_wait_us: 2000000\n" SHARD0, PS_ECONFIG,
     "3:29: 'group_commit_max_wait_us' is 2000000, outside 0..1000000"},
    {"cluster: a\ndurability:\n  group_commit_max_wait_us: soon\n" SHARD0, PS_ECONFIG,
     "3:29: expected an integer for 'group_commit_max_wait_us'"},
    {"cluster: a\ndurability: fast\n" SHARD0, PS_ECONFIG,
     "2:13: unknown value 'fast' for 'durability' (expected periodic or sync, or a mapping of "
     "its keys on the lines below it, indented)"},
    {"cluster: a\ndurability: 5\n" SHARD0, PS_ECONFIG,
     "2:13: unknown value '5' for 'durability' (expected periodic or sync, or a mapping of its "
     "keys on the lines below it, indented)"},
    {"cluster: a\ndurability:\n" SHARD0, PS_ECONFIG,
     "2:12: expected a mapping for 'durability', got nothing (its keys go on the lines below it, "
     "indented; or one of periodic or sync)"},
    {"cluster: a\nsparse: ~\n" SHARD0, PS_ECONFIG,
     "2:9: expected a mapping for 'sparse', got nothing (its keys go on the lines below it, "
     "indented)"},
    {"cluster: a\n" SHARD0 "security: tls\n", PS_ECONFIG,
     "7:11: 'security: tls' needs the mapping form: 'mode: tls' and a 'tls' section (ca, cert, "
     "key) below it"},
    {"cluster: a\n" SHARD0 "security: plain\n", PS_ECONFIG,
     "7:11: unknown value 'plain' for 'security' (expected none or tls, or a mapping of its keys "
     "on the lines below it, indented)"},
    {"cluster: a\ndurability: [sync]\n" SHARD0, PS_ECONFIG,
     "2:13: expected a mapping for 'durability'"},
    {"cluster: a\ndurability:\n  mode:\n" SHARD0, PS_ECONFIG,
     "3:8: 'mode' has an empty value (leave the key out to get its default)"},
    {"cluster: a\ndurability:\n  mode: [sync]\n" SHARD0, PS_ECONFIG,
     "3:9: expected one of periodic or sync for 'mode'"},
    {"cluster: a\ntraining:\n  consistency: {a: 1}\n" SHARD0, PS_ECONFIG,
     "3:16: expected one of bsp, ssp or asp for 'consistency'"},
    {"cluster:\n" SHARD0, PS_ECONFIG, "1:9: 'cluster' has an empty value (it needs one)"},
    {"cluster: a\ndata:\n  scale: big\n" SHARD0, PS_ECONFIG, "3:10: expected a number for 'scale'"},
    {"cluster: a\nshards: 3\n", PS_ECONFIG, "2:9: expected a list for 'shards'"},
    {"cluster: a\nchunk_elems: 0\n" SHARD0, PS_ECONFIG,
     "2:14: 'chunk_elems' is 0, outside 1..67108864"},
    {"cluster: a\nchunk_elems: -4\n" SHARD0, PS_ECONFIG,
     "2:14: 'chunk_elems' is -4, outside 1..67108864"},
    {"cluster: a\ntraining:\n  seed: 18446744073709551616\n" SHARD0, PS_ECONFIG,
     "3:9: 'seed' is 18446744073709551616, outside 0..18446744073709551615"},
    {"cluster: a\ndata:\n  scale: -1\n" SHARD0, PS_ECONFIG, "3:10: 'scale' is -1, outside 1e-09..1e+09"},
    {"cluster: a\ndurability:\n  mode: fast\n" SHARD0, PS_ECONFIG,
     "3:9: unknown value 'fast' for 'mode' (expected periodic or sync)"},
    {"cluster: a\ntraining:\n  consistency: bs\n" SHARD0, PS_ECONFIG,
     "3:16: unknown value 'bs' for 'consistency' (expected bsp, ssp or asp)"},
    {"cluster: a\ntraining:\n  codec: fp8\n" SHARD0, PS_ECONFIG,
     "3:10: unknown value 'fp8' for 'codec' (expected fp32, fp16, int8, onebit or topk)"},
    {"cluster: a\ntraining:\n  pull_codec: onebit\n" SHARD0, PS_ECONFIG,
     "3:15: unknown value 'onebit' for 'pull_codec' (expected fp32, fp16 or int8)"},
    {"cluster: a\ntraining:\n  topk: 0\n" SHARD0, PS_ECONFIG, "3:9: 'topk' is 0, outside 1e-06..1"},
    {"cluster: a\ntraining:\n  codec_min_elems: 0\n" SHARD0, PS_ECONFIG,
     "3:20: 'codec_min_elems' is 0, outside 1..4294967295"},
    /* the device rule is psw's (ps_device_parse), message and all: psd
     * -t took cuda:01 and cuda:007, which psw then refused */
    {"cluster: a\nworkers:\n  device: gpu\n" SHARD0, PS_ECONFIG,
     "3:11: unknown device 'gpu' (expected auto, cpu, cuda or cuda:N (N from 0 to 999, no "
     "leading zeros))"},
    {"cluster: a\nworkers:\n  device: cuda:01\n" SHARD0, PS_ECONFIG,
     "3:11: device 'cuda:01': expected cuda:N with N a device number from 0 to 999, no "
     "leading zeros"},
    {"cluster: a\nworkers:\n  device: \"cuda:007\"\n" SHARD0, PS_ECONFIG,
     "3:11: device 'cuda:007': expected cuda:N with N a device number from 0 to 999, no "
     "leading zeros"},
    {"cluster: a\nworkers:\n  slowdown: [1, 0.5]\n" SHARD0, PS_ECONFIG,
     "3:17: 'slowdown' is 0.5, outside 1..1000"},
    {"cluster: a\nworkers:\n  slowdown: 2\n" SHARD0, PS_ECONFIG,
     "3:13: expected a list of numbers for 'slowdown'"},
    {"cluster: a\nworkers:\n  shared_memory: sometimes\n" SHARD0, PS_ECONFIG,
     "3:18: unknown value 'sometimes' for 'shared_memory' (expected false or true)"},
    {"cluster: a\nworkers:\n  jitter_prob: 1.5\n" SHARD0, PS_ECONFIG,
     "3:16: 'jitter_prob' is 1.5, outside 0..1"},
    {"cluster: a\nworkers:\n  count: 2\n  min: 3\n" SHARD0, PS_ECONFIG,
     "4:8: 'min' (3) must not exceed 'count' (2)"},
    {"cluster: a\nworkers:\n  heartbeat_ms: 1000\n  lease_ms: 1000\n" SHARD0, PS_ECONFIG,
     "4:13: 'lease_ms' (1000) must exceed 'heartbeat_ms' (1000): a worker would be declared "
     "dead between two heartbeats"},
    {"cluster: a\nworkers:\n  heartbeat_ms: 10000\n" SHARD0, PS_ECONFIG,
     "3:3: 'lease_ms' (5000) must exceed 'heartbeat_ms' (10000): a worker would be declared "
     "dead between two heartbeats"},
    {"cluster: a\nworkers:\n  min: -1\n" SHARD0, PS_ECONFIG,
     "3:8: 'min' is -1, outside 0..4096"},
    {"chunk_elems: 8\n" SHARD0, PS_ECONFIG, "1:1: missing required key 'cluster' at the top level"},
    {"cluster: a\nshards:\n  - id: 0\n    grpc: h:1\n    data_dir: /d\n", PS_ECONFIG,
     "3:5: missing required key 'channel' in a 'shards' entry"},
    {"cluster: a\n", PS_ECONFIG, "1:1: missing required key 'shards' at the top level"},
    {"cluster: a\nshards: []\n", PS_ECONFIG, "2:9: 'shards' has 0 entries, expected 1..1024"},
    {"cluster: a\n" SHARD0 "  - id: 0\n    grpc: h:3\n    channel: h:4\n    data_dir: /e\n",
     PS_ECONFIG, "7:9: duplicate shard id 0 (first at line 3)"},
    {"cluster: a\n" SHARD0 "  - id: 1\n    grpc: h:3\n    channel: h:1\n    data_dir: /e\n",
     PS_ECONFIG, "9:14: duplicate address 'h:1' for 'channel' of shard 1 (first at line 4, 'grpc' of shard 0)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'h:1', channel: 'h:1', data_dir: d}\n", PS_ECONFIG,
     "3:35: duplicate address 'h:1' for 'channel' of shard 0 (first at line 3, 'grpc' of shard 0)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: localhost, channel: 'h:1', data_dir: d}\n",
     PS_ECONFIG,
     "3:19: bad address 'localhost' for 'grpc' (expected host:port, port 1..65535)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'h:70000', channel: 'h:1', data_dir: d}\n",
     PS_ECONFIG,
     "3:19: bad address 'h:70000' for 'grpc' (expected host:port, port 1..65535)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: '999.1.1.1:5', channel: 'h:1', data_dir: d}\n",
     PS_ECONFIG, "3:19: bad address '999.1.1.1:5' for 'grpc' ('999.1.1.1' is no IPv4 address)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: '[::g]:5', channel: 'h:1', data_dir: d}\n",
     PS_ECONFIG, "3:19: bad address '[::g]:5' for 'grpc' ('::g' is no IPv6 address)"},
    {"cluster: a\nshards:\n  - 7\n", PS_ECONFIG, "3:5: expected a mapping for a 'shards' entry"},
    {"cluster: a\nshards:\n  - id: 0\n   grpc: h:1\n", PS_ECONFIG,
     "4:4: did not find expected '-' indicator (while parsing a block collection from line 3)"},
    {"cluster: [a\n", PS_ECONFIG,
     "2:1: did not find expected ',' or ']' (while parsing a flow sequence from line 1)"},
    {"cluster: a\nshards:\n", PS_ECONFIG, "2:8: 'shards' has an empty value (it needs one)"},
    {"cluster: a\nworkers:\n  slowdown:\n" SHARD0, PS_ECONFIG,
     "3:12: 'slowdown' has an empty value (leave the key out to get its default)"},
    {"cluster: a\nshards:\n  - id: 0\n    grpc: [::1]:7000\n", PS_ECONFIG,
     "4:12: did not find expected node content (while parsing a flow node from line 4) (an IPv6 "
     "address must be quoted: \"[::1]:7000\")"},
    {"- a\n- b\n", PS_ECONFIG, "1:1: expected a mapping at the top level"},
    {"# nothing\n", PS_ECONFIG,
     "1:1: empty configuration (expected a mapping with 'cluster' and 'shards')"},
    {"cluster: a\n" SHARD0 SEC0 "---\ncluster: b\n", PS_ECONFIG, "9:1: more than one yaml document"},
    {"cluster: a b\n" SHARD0, PS_ECONFIG,
     "1:10: bad name 'a b' for 'cluster' (1-63 letters, digits, '.', '_', '-')"},
    {"cluster: a\ndata:\n  format: csv\n  train_labels: x\n" SHARD0, PS_ECONFIG,
     "4:17: 'train_labels' is for format 'idx' (csv files hold the label in column 1)"},
    {"cluster: a\ndata:\n  format: criteo\n  test_labels: x\n" SHARD0, PS_ECONFIG,
     "4:16: 'test_labels' is for format 'idx' (criteo files hold the label in column 1)"},
    {"cluster: a\ndata:\n  format: tsv\n" SHARD0, PS_ECONFIG,
     "3:11: unknown value 'tsv' for 'format' (expected idx, csv or criteo)"},
    {"cluster: a\ndata:\n  train_images: x\n" SHARD0, PS_ECONFIG,
     "3:3: 'train_images' and 'train_labels' go together in 'data'"},
    {"cluster: a\nlimits:\n  max_connections: 0\n" SHARD0, PS_ECONFIG,
     "3:20: 'max_connections' is 0, outside 1..1000000"},
    {"cluster: a\nlimits:\n  idle_timeout_ms: 30000\n" SHARD0 SEC0, PS_ECONFIG,
     "3:20: 'idle_timeout_ms' (30000) must exceed training's 'pull_timeout_ms' (30000)"},
    {"cluster: a\ntraining:\n  pull_timeout_ms: 200000\n" SHARD0 SEC0, PS_ECONFIG,
     "3:20: 'idle_timeout_ms' (120000) must exceed training's 'pull_timeout_ms' (200000)"},
    {"cluster: a\nlimits:\n  max_shard_bytes: 1125899906842625\n" SHARD0, PS_ECONFIG,
     "3:20: 'max_shard_bytes' is 1125899906842625, outside 0..1125899906842624"},
    {"cluster: a\nlimits:\n  max_queued_bytes: 1048575\n" SHARD0, PS_ECONFIG,
     "3:21: 'max_queued_bytes' is 1048575, outside 1048576..1099511627776"},
    {"cluster: a\nlimits:\n  max_queued_bytes: 1099511627777\n" SHARD0, PS_ECONFIG,
     "3:21: 'max_queued_bytes' is 1099511627777, outside 1048576..1099511627776"},
    {"cluster: a\n" SHARD0, PS_ECONFIG, "1:1: missing required key 'security' at the top level"},
    {"cluster: a\n" SHARD0 "security: {}\n", PS_ECONFIG,
     "7:11: missing required key 'mode' in 'security'"},
    {"cluster: a\n" SHARD0 "security: {mode: plain}\n", PS_ECONFIG,
     "7:18: unknown value 'plain' for 'mode' (expected none or tls)"},
    {"cluster: a\n" SHARD0 "security: {mode: tls}\n", PS_ECONFIG,
     "7:18: 'mode' is tls but 'security.tls' (ca, cert, key) is missing"},
    {"cluster: a\n" SHARD0 "security: {mode: none, tls: {ca: a, cert: b, key: c}}\n", PS_ECONFIG,
     "7:29: 'tls' is set but 'mode' is none (plaintext)"},
    {"cluster: a\n" SHARD0 TLS0 "    cert: b.pem\n", PS_ECONFIG,
     "10:5: missing required key 'key' in 'security.tls'"},
    {"cluster: a\n" SHARD0 TLS0 "    cert: b.pem\n    key: b.key\n    worker_key: w.key\n",
     PS_ECONFIG, "13:17: 'worker_cert' and 'worker_key' go together in 'security.tls'"},
    {"cluster: a\n" SHARD0 TLS0 "    cert: b.pem\n    key: b.key\n    operator_cert: o.pem\n",
     PS_ECONFIG, "13:20: 'operator_cert' and 'operator_key' go together in 'security.tls'"},
    {"cluster: a\n" SHARD0 TLS0 "    pem: b.pem\n", PS_ECONFIG,
     "11:5: unknown key 'pem' in 'security.tls'"},
    {"cluster: a\n" SHARD0 "security: {mode: none, require_client_cert: maybe}\n", PS_ECONFIG,
     "7:45: unknown value 'maybe' for 'require_client_cert' (expected false or true)"},
    {"cluster: a\n" SHARD0 "security: {mode: none, secret_file: ''}\n", PS_ECONFIG,
     "7:37: empty string for 'secret_file'"},
    {"cluster: a\n" SHARD0 "security: {mode: none, payload_mac: true}\n", PS_ECONFIG,
     "7:37: 'payload_mac' needs 'secret_file' (the MAC key comes from the hello)"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:6'}\n",
     PS_ECONFIG, "8:5: missing required key 'workers' in an 'aggregators' entry"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:6', workers: 0}\n",
     PS_ECONFIG, "8:53: 'workers' is 0, outside 1..4096"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: 'g h', grpc: 'h:5', channel: 'h:6', workers: 2}\n",
     PS_ECONFIG, "8:12: bad name 'g h' for 'name' (1-63 letters, digits, '.', '_', '-')"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:6', workers: 2}\n"
     "  - {name: g, grpc: 'h:7', channel: 'h:8', workers: 2}\n",
     PS_ECONFIG, "9:12: duplicate aggregator name 'g' (first at line 8)"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:6', workers: 2}\n"
     "  - {name: k, grpc: 'h:6', channel: 'h:8', workers: 2}\n",
     PS_ECONFIG, "9:21: duplicate address 'h:6' for 'grpc' of aggregator 'k' (first at line 8, 'channel' of "
     "aggregator 'g')"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:2', channel: 'h:6', workers: 2}\n" SEC0,
     PS_ECONFIG, "8:21: aggregator 'g': 'grpc' address 'h:2' is shard 0's (its 'channel', line 5)"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:6', workers: 2,"
     " max_delay_ms: -1}\n", PS_ECONFIG, "8:70: 'max_delay_ms' is -1, outside 0..60000"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:6', workers: 2,"
     " max_delay_ms: 2000}\ntraining: {pull_timeout_ms: 2000}\n" SEC0, PS_ECONFIG,
     "8:70: aggregator 'g': 'max_delay_ms' (2000) must be below training's 'pull_timeout_ms' "
     "(2000): a push held that long would outlast its worker's wait for the reply"},
    {"cluster: a\n" SHARD0 "aggregators: {name: g}\n", PS_ECONFIG,
     "7:14: expected a list for 'aggregators'"},
    {"cluster: a\nworkers:\n  aggregator: g\n" SHARD0 SEC0, PS_ECONFIG,
     "3:15: workers' 'aggregator' 'g' is not in the 'aggregators' list"},
    /* Integers without sign, numbers in the README's forms only (strtod
     * alone took '+5', hex and leading blanks). */
    {"cluster: a\nchunk_elems: +5\n" SHARD0 SEC0, PS_ECONFIG,
     "2:14: expected an integer for 'chunk_elems'"},
    {"cluster: a\ndata:\n  scale: 0x10\n" SHARD0 SEC0, PS_ECONFIG,
     "3:10: expected a number for 'scale'"},
    {"cluster: a\ndata:\n  scale: ' 2'\n" SHARD0 SEC0, PS_ECONFIG,
     "3:10: expected a number for 'scale', not the string ' 2' (no quotes)"},
    /* a quoted scalar is a string, whatever it holds */
    {"cluster: a\nchunk_elems: \"5\"\n" SHARD0 SEC0, PS_ECONFIG,
     "2:14: expected an integer for 'chunk_elems', not the string '5' (no quotes)"},
    {"cluster: a\ntraining:\n  epochs: '5'\n" SHARD0 SEC0, PS_ECONFIG,
     "3:11: expected an integer for 'epochs', not the string '5' (no quotes)"},
    {"cluster: a\nworkers:\n  slowdown: [1, \"2\"]\n" SHARD0 SEC0, PS_ECONFIG,
     "3:17: expected a list of numbers for 'slowdown', not the string '2' (no quotes)"},
    {"cluster: a\nworkers:\n  overlap: \"true\"\n" SHARD0 SEC0, PS_ECONFIG,
     "3:12: expected true or false for 'overlap', not the string 'true' (no quotes)"},
    /* Every documented key, refused with its name: type, range, pairing. */
    {"cluster: a\ndurability:\n  flush_interval_ms: 0\n" SHARD0, PS_ECONFIG,
     "3:22: 'flush_interval_ms' is 0, outside 1..3600000"},
    {"cluster: a\nlimits:\n  max_request_bytes: 1023\n" SHARD0, PS_ECONFIG,
     "3:22: 'max_request_bytes' is 1023, outside 1024..1073741824"},
    {"cluster: a\nlimits:\n  drain_timeout_ms: 600001\n" SHARD0, PS_ECONFIG,
     "3:21: 'drain_timeout_ms' is 600001, outside 0..600000"},
    {"cluster: a\nlimits:\n  idle_timeout_ms: 999\n" SHARD0, PS_ECONFIG,
     "3:20: 'idle_timeout_ms' is 999, outside 1000..86400000"},
    {"cluster: a\nlimits: 5\n" SHARD0, PS_ECONFIG,
     "2:9: expected a mapping for 'limits', got the value '5'"
     " (a section's keys go on the lines below it, indented)"},
    {"cluster: a\nshards:\n  - {id: 65536, grpc: 'h:1', channel: 'h:2', data_dir: d}\n", PS_ECONFIG,
     "3:10: 'id' is 65536, outside 0..65535"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: ''}\n", PS_ECONFIG,
     "3:52: empty string for 'data_dir'"},
    {"cluster: a\nworkers: 3\n" SHARD0, PS_ECONFIG,
     "2:10: expected a mapping for 'workers', got the value '3'"
     " (a section's keys go on the lines below it, indented)"},
    {"cluster: a\nworkers:\n  count: 0\n" SHARD0, PS_ECONFIG,
     "3:10: 'count' is 0, outside 1..4096"},
    {"cluster: a\nworkers:\n  retry_ms: 86400001\n" SHARD0, PS_ECONFIG,
     "3:13: 'retry_ms' is 86400001, outside 0..86400000"},
    {"cluster: a\nworkers:\n  overlap: yes\n" SHARD0, PS_ECONFIG,
     "3:12: unknown value 'yes' for 'overlap' (expected false or true)"},
    {"cluster: a\nworkers:\n  blas_threads: 0\n" SHARD0, PS_ECONFIG,
     "3:17: 'blas_threads' is 0, outside 1..256"},
    {"cluster: a\nworkers:\n  blas_threads: 257\n" SHARD0, PS_ECONFIG,
     "3:17: 'blas_threads' is 257, outside 1..256"},
    {"cluster: a\nworkers:\n  coordinator: 65536\n" SHARD0, PS_ECONFIG,
     "3:16: 'coordinator' is 65536, outside 0..65535"},
    {"cluster: a\nworkers:\n  heartbeat_ms: 9\n" SHARD0, PS_ECONFIG,
     "3:17: 'heartbeat_ms' is 9, outside 10..3600000"},
    {"cluster: a\nworkers:\n  lease_ms: 19\n" SHARD0, PS_ECONFIG,
     "3:13: 'lease_ms' is 19, outside 20..86400000"},
    {"cluster: a\nworkers:\n  jitter_factor: 0.5\n" SHARD0, PS_ECONFIG,
     "3:18: 'jitter_factor' is 0.5, outside 1..1000"},
    {"cluster: a\nworkers:\n  aggregator: 'g h'\n" SHARD0, PS_ECONFIG,
     "3:15: bad name 'g h' for 'aggregator' (1-63 letters, digits, '.', '_', '-')"},
    {"cluster: a\ntraining: []\n" SHARD0, PS_ECONFIG,
     "2:11: expected a mapping for 'training'"},
    {"cluster: a\ntraining:\n  model: 'm 1'\n" SHARD0, PS_ECONFIG,
     "3:10: bad name 'm 1' for 'model' (1-63 letters, digits, '.', '_', '-')"},
    {"cluster: a\ntraining:\n  epochs: 0\n" SHARD0, PS_ECONFIG,
     "3:11: 'epochs' is 0, outside 1..100000"},
    {"cluster: a\ntraining:\n  batch_size: 1048577\n" SHARD0, PS_ECONFIG,
     "3:15: 'batch_size' is 1048577, outside 1..1048576"},
    {"cluster: a\ntraining:\n  staleness: 1000001\n" SHARD0, PS_ECONFIG,
     "3:14: 'staleness' is 1000001, outside 0..1000000"},
    {"cluster: a\ntraining:\n  staleness_weight: linear\n" SHARD0, PS_ECONFIG,
     "3:21: unknown value 'linear' for 'staleness_weight' (expected none or inverse)"},
    {"cluster: a\ntraining:\n  pull_timeout_ms: 0\n" SHARD0, PS_ECONFIG,
     "3:20: 'pull_timeout_ms' is 0, outside 1..86400000"},
    {"cluster: a\ntraining:\n  codec_warmup_steps: 4294967296\n" SHARD0, PS_ECONFIG,
     "3:23: 'codec_warmup_steps' is 4294967296, outside 0..4294967295"},
    {"cluster: a\ndata:\n  partitions: 0\n" SHARD0, PS_ECONFIG,
     "3:15: 'partitions' is 0, outside 1..65536"},
    {"cluster: a\ndata:\n  limit: 4294967296\n" SHARD0, PS_ECONFIG,
     "3:10: 'limit' is 4294967296, outside 0..4294967295"},
    {"cluster: a\ndata:\n  test_images: x\n" SHARD0, PS_ECONFIG,
     "3:3: 'test_images' and 'test_labels' go together in 'data'"},
    {"cluster: a\nsparse:\n  memory_rows: lots\n" SHARD0, PS_ECONFIG,
     "3:16: expected an integer for 'memory_rows'"},
    {"cluster: a\n" SHARD0 "security:\n  mode: tls\n  tls:\n    cert: b.pem\n    key: b.key\n", PS_ECONFIG,
     "10:5: missing required key 'ca' in 'security.tls'"},
    {"cluster: a\n" SHARD0 TLS0 "    key: b.key\n", PS_ECONFIG,
     "10:5: missing required key 'cert' in 'security.tls'"},
    /* ca, cert and key have no default: an empty one needs a path */
    {"cluster: a\n" SHARD0 TLS0 "    cert:\n    key: b.key\n", PS_ECONFIG,
     "11:10: 'cert' has an empty value (it needs a path)"},
    {"cluster: a\n" SHARD0 "security:\n  mode: tls\n  tls:\n    ca: ~\n", PS_ECONFIG,
     "10:9: 'ca' has an empty value (it needs a path)"},
    {"cluster: a\n" SHARD0 "security: {mode: tls, tls: x}\n", PS_ECONFIG,
     "7:28: expected a mapping for 'tls', got the value 'x'"
     " (a section's keys go on the lines below it, indented)"},
    {"cluster: a\n" SHARD0 "security: {mode: none, secret_file: [a]}\n", PS_ECONFIG,
     "7:37: expected a string for 'secret_file'"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: h5, channel: 'h:6', workers: 2}\n", PS_ECONFIG,
     "8:21: bad address 'h5' for 'grpc' (expected host:port, port 1..65535)"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'h:5', channel: 'h:0', workers: 2}\n", PS_ECONFIG,
     "8:37: bad address 'h:0' for 'channel' (expected host:port, port 1..65535)"},
    {"cluster: a\nx: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
     PS_ECONFIG, "2:35: nested deeper than 32 levels"},
    /* A tag would change how YAML reads the value (!!str false is the
     * string, which psd would take as the boolean): refused, not ignored. */
    {"cluster: a\nworkers:\n  overlap: !!str false\n" SHARD0, PS_ECONFIG,
     "3:12: YAML tag '!!str' (psd reads values by its own rules; remove the tag)"},
    {"cluster: a\ntraining: !!map\n  epochs: !<tag:yaml.org,2002:int> 3\n" SHARD0, PS_ECONFIG,
     "2:11: YAML tag '!!map' (psd reads values by its own rules; remove the tag)"},
    /* A NUL (YAML's \0 escape) would end the C string early: the cluster
     * "h\0x" was taken as "h", a data_dir "/a\0/b" as "/a". */
    {"cluster: \"a\\0x\"\n" SHARD0 SEC0, PS_ECONFIG,
     "1:10: a string holds a NUL byte (YAML's \\0, \\x00 or \\u0000 escape); psd would "
     "read it cut short there"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'h:1', channel: 'h:2', data_dir: \"/d\\0/e\"}\n" SEC0,
     PS_ECONFIG,
     "3:52: a string holds a NUL byte (YAML's \\0, \\x00 or \\u0000 escape); psd would "
     "read it cut short there"},
    /* the other escapes of a NUL, named by the message too */
    {"cluster: \"a\\x00x\"\n" SHARD0 SEC0, PS_ECONFIG,
     "1:10: a string holds a NUL byte (YAML's \\0, \\x00 or \\u0000 escape); psd would "
     "read it cut short there"},
    {"cluster: \"a\\u0000x\"\n" SHARD0 SEC0, PS_ECONFIG,
     "1:10: a string holds a NUL byte (YAML's \\0, \\x00 or \\u0000 escape); psd would "
     "read it cut short there"},
    {"cluster: a\n\"work\\0ers\": {count: 1}\n" SHARD0 SEC0, PS_ECONFIG,
     "2:1: a string holds a NUL byte (YAML's \\0, \\x00 or \\u0000 escape); psd would "
     "read it cut short there"},
    /* One address however it is written: inet_pton's reading of an IP
     * address, localhost the loopback one, host names without case (they
     * passed psd -t as different strings, then failed to bind). */
    {"cluster: a\nshards:\n  - {id: 0, grpc: '[::1]:34010', channel: 'h:1', data_dir: d}\n"
     "  - {id: 1, grpc: '[0:0::1]:34010', channel: 'h:2', data_dir: e}\n" SEC0, PS_ECONFIG,
     "4:19: duplicate address '[0:0::1]:34010' for 'grpc' of shard 1, the same as '[::1]:34010' "
     "(line 3, 'grpc' of shard 0)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'localhost:34010', channel: 'h:1', data_dir: d}\n"
     "  - {id: 1, grpc: 'h:2', channel: '127.0.0.1:34010', data_dir: e}\n" SEC0, PS_ECONFIG,
     "4:35: duplicate address '127.0.0.1:34010' for 'channel' of shard 1, the same as "
     "'localhost:34010' (line 3, 'grpc' of shard 0)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'localhost:3', channel: '[::1]:3', data_dir: d}\n" SEC0,
     PS_ECONFIG, "3:43: duplicate address '[::1]:3' for 'channel' of shard 0, the same as 'localhost:3' "
     "(line 3, 'grpc' of shard 0)"},
    /* one psd's own two addresses are on one host: a wildcard is an error there */
    {"cluster: a\nshards:\n  - {id: 0, grpc: '0.0.0.0:3', channel: '127.0.0.1:3', data_dir: d}\n" SEC0,
     PS_ECONFIG, "3:41: duplicate address '127.0.0.1:3' for 'channel' of shard 0, the same as '0.0.0.0:3' "
     "(line 3, 'grpc' of shard 0): "
     "one psd's two addresses share its host"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: 'H:2', channel: 'h:6', workers: 2}\n"
     SEC0, PS_ECONFIG, "8:21: aggregator 'g': 'grpc' address 'H:2' is shard 0's ('h:2') (its 'channel', line 5)"},
    {"cluster: a\n" SHARD0 "aggregators:\n  - {name: g, grpc: '10.0.0.1:5', channel: 'h:6', "
     "workers: 2}\n  - {name: k, grpc: '[::ffff:10.0.0.1]:5', channel: 'h:8', workers: 2}\n" SEC0,
     PS_ECONFIG, "9:21: duplicate address '[::ffff:10.0.0.1]:5' for 'grpc' of aggregator 'k', the same as "
     "'10.0.0.1:5' (line 8, 'grpc' of aggregator 'g')"},
    /* No leading zeros: YAML 1.1 reads 010 as octal 8, psd read it as 10;
     * a port's too (07000 passed, 034010 was a "bad address"). */
    {"cluster: a\nshards:\n  - {id: 01, grpc: 'h:1', channel: 'h:2', data_dir: d}\n" SEC0, PS_ECONFIG,
     "3:10: 'id' is 01: no leading zeros (YAML 1.1 would read it as octal)"},
    {"cluster: a\nchunk_elems: 0100\n" SHARD0 SEC0, PS_ECONFIG,
     "2:14: 'chunk_elems' is 0100: no leading zeros (YAML 1.1 would read it as octal)"},
    {"cluster: a\nlimits:\n  drain_timeout_ms: 00\n" SHARD0 SEC0, PS_ECONFIG,
     "3:21: 'drain_timeout_ms' is 00: no leading zeros (YAML 1.1 would read it as octal)"},
    {"cluster: a\ndata:\n  scale: 010\n" SHARD0 SEC0, PS_ECONFIG,
     "3:10: 'scale' is 010: no leading zeros (YAML 1.1 would read it as octal)"},
    {"cluster: a\ndata:\n  scale: 1/0255\n" SHARD0 SEC0, PS_ECONFIG,
     "3:10: 'scale' is 1/0255: no leading zeros (YAML 1.1 would read it as octal)"},
    {"cluster: a\nworkers:\n  slowdown: [1, -02.5]\n" SHARD0 SEC0, PS_ECONFIG,
     "3:17: 'slowdown' is -02.5: no leading zeros (YAML 1.1 would read it as octal)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: '127.0.0.1:07000', channel: 'h:1', data_dir: d}\n" SEC0,
     PS_ECONFIG,
     "3:19: bad address '127.0.0.1:07000' for 'grpc' (07000 has a leading zero: write 7000)"},
    {"cluster: a\nshards:\n  - {id: 0, grpc: 'h:2', channel: '127.0.0.1:034010', data_dir: d}\n" SEC0,
     PS_ECONFIG,
     "3:35: bad address '127.0.0.1:034010' for 'channel' (034010 has a leading zero: write "
     "34010)"},
    /* A number beyond a double is out of range, not "expected a number". */
    {"cluster: a\nworkers:\n  jitter_prob: 1e400\n" SHARD0 SEC0, PS_ECONFIG,
     "3:16: 'jitter_prob' is 1e400, outside 0..1"},
    {"cluster: a\nworkers:\n  jitter_prob: -1e400\n" SHARD0 SEC0, PS_ECONFIG,
     "3:16: 'jitter_prob' is -1e400, outside 0..1"},
    {"cluster: a\nworkers:\n  slowdown: [1, 1e999]\n" SHARD0 SEC0, PS_ECONFIG,
     "3:17: 'slowdown' is 1e999, outside 1..1000"},
    {"cluster: a\ndata:\n  scale: 1e300/1e-300\n" SHARD0 SEC0, PS_ECONFIG,
     "3:10: 'scale' is 1e300/1e-300, outside 1e-09..1e+09"},
    {"cluster: a\ndata:\n  scale: 1e-400\n" SHARD0 SEC0, PS_ECONFIG,
     "3:10: 'scale' is 1e-400, outside 1e-09..1e+09"},
    {"cluster: a\nworkers:\n  jitter_prob: 1e-400\n" SHARD0 SEC0, PS_ECONFIG,
     "3:16: 'jitter_prob' is 1e-400, nearer 0 than a double holds (write 0)"},
    /* an empty document after the file's is fine, a second one that is not empty is not */
    {"cluster: a\n" SHARD0 SEC0 "---\n---\ncluster: b\n", PS_ECONFIG,
     "10:1: more than one yaml document"},
};

START_TEST(test_config_bad_file) {
  const struct bad_case *bc = &bad_cases[_i];
  ps_config c;
  ps_errbuf eb = {""};
  const char *path = write_yaml(bc->yaml);
  int r = ps_config_load(&c, path, &eb);
  char want[1024];
  snprintf(want, sizeof want, "%s:%s", path, bc->msg);
  ck_assert_msg(r == bc->err, "case %d: got %d (%s)", _i, r, eb.msg);
  ck_assert_str_eq(eb.msg, want);
  ck_assert_ptr_null(c.shards);
  ck_assert_ptr_null(c.cluster);
}
END_TEST

START_TEST(test_config_unreadable) {
  ps_config c;
  ps_errbuf eb = {""};
  char path[600];
  snprintf(path, sizeof path, "%s/missing.yaml", ps_test_tmpdir());
  ck_assert_int_eq(ps_config_load(&c, path, &eb), PS_EIO);
  char want[700];
  snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
  ck_assert_str_eq(eb.msg, want);
  const char *dir = ps_test_tmpdir();
  ck_assert_int_eq(ps_config_load(&c, dir, &eb), PS_EIO);
  snprintf(want, sizeof want, "%s: cannot read: Is a directory", dir);
  ck_assert_str_eq(eb.msg, want);
  /* a FIFO nobody writes to reads as empty: no open that blocks forever */
  snprintf(path, sizeof path, "%s/fifo.yaml", dir);
  ck_assert_int_eq(mkfifo(path, 0600), 0);
  ck_assert_int_eq(ps_config_load(&c, path, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "empty configuration"), "%s", eb.msg);
}
END_TEST

/* A file of '[' is refused at once, before libyaml's loader (quadratic
 * in the depth: 100 KB of '[' took 36 s), and so is a file over the cap. */
START_TEST(test_config_hostile_sizes) {
  size_t n = 100 * 1000;
  char *text = malloc(PS_CONFIG_MAX_BYTES + 2);
  ck_assert_ptr_nonnull(text);
  memset(text, '[', n);
  text[n] = '\0';
  ps_config c;
  ps_errbuf eb = {""};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const char *path = write_yaml(text);
  ck_assert_int_eq(ps_config_load(&c, path, &eb), PS_ECONFIG);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ck_assert_msg(strstr(eb.msg, ":1:33: nested deeper than 32 levels"), "%s", eb.msg);
  /* Not a timing test: a bound 100x above what a linear scan takes. */
  ck_assert_double_lt((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, 3.0);
  memset(text, '#', PS_CONFIG_MAX_BYTES + 1);
  text[PS_CONFIG_MAX_BYTES + 1] = '\0';
  path = write_yaml(text);
  ck_assert_int_eq(ps_config_load(&c, path, &eb), PS_ECONFIG);
  char want[700];
  snprintf(want, sizeof want, "%s: 1048577 bytes, more than the 1048576 a configuration may have",
           path);
  ck_assert_str_eq(eb.msg, want);
  free(text);
}
END_TEST

/* The number readers every program shares with the cluster file: the
 * README's forms, whole, and nothing strtod/strtoull would add. */
START_TEST(test_parse_numbers) {
  static const struct {
    const char *s;
    double want; /* NAN: refused */
  } nums[] = {{"0.5", 0.5},   {"-3.9e-3", -3.9e-3}, {"1/4", 0.25}, {"+2", 2},   {"7", 7},
              {"1e3/1e1", 100}, {"0x10", NAN},      {"inf", NAN},  {"nan", NAN}, {" 1", NAN},
              {"1 ", NAN},    {"", NAN},            {"1/0", NAN},  {"1/", NAN},  {"1e-400", NAN},
              {"1e400", NAN}, {"1e300/1e-300", NAN}, {"1/2/3", NAN}, {"-", NAN},
              {"010", NAN},   {"00.5", NAN},        {"-07", NAN},  {"1/02", NAN}, {"0", 0},
              {"-0.25", -0.25}, {"10.05", 10.05},   {"1e05", 1e5}, {"0/1", 0},
              {"1e-200/1e200", NAN}, {"-1e400", NAN}};
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    double v = -42;
    int rc = ps_parse_number(nums[i].s, &v);
    if (isnan(nums[i].want)) {
      /* beyond a double: out of range (the value saturated), not "no number" */
      int over = strstr(nums[i].s, "e400") || strstr(nums[i].s, "e300/");
      int under = strstr(nums[i].s, "e-400") || strstr(nums[i].s, "e-200/");
      if (over || under)
        ck_assert_msg(rc == PS_ETOOBIG && (over ? isinf(v) : v == 0), "'%s': %d, %g", nums[i].s,
                      rc, v);
      else
        ck_assert_msg(rc == PS_EINVAL && v == -42, "'%s' taken as %g", nums[i].s, v);
    } else {
      ck_assert_msg(rc == 0, "'%s' refused", nums[i].s);
      ck_assert_double_eq_tol(v, nums[i].want, 1e-12);
    }
  }
  static const struct {
    const char *s;
    int rc;
    uint64_t want;
  } ints[] = {{"0", 0, 0},           {"18446744073709551615", 0, UINT64_MAX},
              {"18446744073709551616", PS_ETOOBIG, 0}, {"+5", PS_EINVAL, 0}, {"-1", PS_EINVAL, 0},
              {"0x10", PS_EINVAL, 0}, {" 1", PS_EINVAL, 0}, {"", PS_EINVAL, 0}, {"1.0", PS_EINVAL, 0},
              {"01", PS_EINVAL, 0}, {"00", PS_EINVAL, 0}, {"0018446744073709551616", PS_EINVAL, 0},
              {"10", 0, 10}};
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    uint64_t v = 7;
    ck_assert_msg(ps_parse_uint(ints[i].s, &v) == ints[i].rc, "'%s'", ints[i].s);
    ck_assert_uint_eq(v, ints[i].rc ? 7 : ints[i].want);
  }
}
END_TEST

/* The flag readers: the file's rules, and the reason said with the flag
 * and the value (psd said "bad shard id '01'", psctl "wants a number"
 * for 1e400). */
START_TEST(test_flag_values) {
  static const struct {
    const char *s;
    uint64_t min, max;
    const char *msg; /* NULL: taken */
  } ints[] = {
      {"7", 0, 10, NULL},
      {"0", 0, 10, NULL},
      {"01", 0, 10, "--f wants an integer in [0, 10], got '01': a leading zero (write 1)"},
      {"000", 0, 10, "got '000': a leading zero (write 0)"},
      {"11", 0, 10, "--f wants an integer in [0, 10], got '11': out of range"},
      {"-1", 0, 10, "got '-1': out of range"},
      {"-0", 0, 10, "got '-0': out of range"},
      {"99999999999999999999", 0, UINT64_MAX, "got '99999999999999999999': out of range"},
      {"1.0", 0, 10, "got '1.0': not an integer (decimal digits only)"},
      {"+1", 0, 10, "got '+1': not an integer"},
      {"", 0, 10, "got '': not an integer"},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    uint64_t v = 42;
    ps_errbuf eb = {{0}};
    int rc = ps_flag_uint("--f", ints[i].s, ints[i].min, ints[i].max, &v, &eb);
    if (!ints[i].msg) {
      ck_assert_msg(rc == 0, "'%s': %s", ints[i].s, eb.msg);
      continue;
    }
    ck_assert_msg(rc == PS_EINVAL && v == 42, "'%s' taken", ints[i].s);
    ck_assert_msg(strstr(eb.msg, ints[i].msg), "'%s': %s", ints[i].s, eb.msg);
  }
  static const struct {
    const char *s;
    double min, max;
    const char *msg;
  } nums[] = {
      {"0.5", 0, 1, NULL},
      {"1/4", 0, 1, NULL},
      {"-2", -DBL_MAX, DBL_MAX, NULL},
      {"+2", 1, 1000, "--f wants a number in [1, 1000], got '+2': a sign (write it without)"},
      {"1e400", 1e-6, 1, "--f wants a number in [1e-06, 1], got '1e400': out of range (beyond a double)"},
      {"1e400", -DBL_MAX, DBL_MAX, "--f wants a number, got '1e400': out of range (beyond a double)"},
      {"1e-400", 0, DBL_MAX, "--f wants a number >= 0, got '1e-400': nearer 0 than a double holds (write 0)"},
      {"1e-400", 1e-6, 1, "got '1e-400': out of range (beyond a double)"},
      {"00.5", 0, 1, "got '00.5': a leading zero in an integer part"},
      {"1/02", 0, 1, "got '1/02': a leading zero"},
      {"0x10", 0, DBL_MAX, "got '0x10': not a number"},
      {"nan", -DBL_MAX, DBL_MAX, "got 'nan': not a number"},
      {"2", 0, 1, "--f wants a number in [0, 1], got '2': out of range"},
      {"-0", 0, 1, "got '-0': out of range"},
  };
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    double v = 42;
    ps_errbuf eb = {{0}};
    int rc = ps_flag_number("--f", nums[i].s, nums[i].min, nums[i].max, &v, &eb);
    if (!nums[i].msg) {
      ck_assert_msg(rc == 0, "'%s': %s", nums[i].s, eb.msg);
      continue;
    }
    ck_assert_msg(rc == PS_EINVAL && v == 42, "'%s' taken", nums[i].s);
    ck_assert_msg(strstr(eb.msg, nums[i].msg), "'%s': %s", nums[i].s, eb.msg);
  }
}
END_TEST

Suite *ps_config_suite(void) {
  Suite *s = suite_create("ps_config");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_config_good_file);
  tcase_add_test(tc, test_config_defaults);
  tcase_add_test(tc, test_config_group_commit_warning);
  tcase_add_test(tc, test_config_require_cert_warning);
  tcase_add_test(tc, test_config_mode_shorthand);
  tcase_add_test(tc, test_config_data_dir_per_host);
  tcase_add_test(tc, test_config_repo_examples);
  tcase_add_test(tc, test_config_loads);
  tcase_add_loop_test(tc, test_config_bad_file, 0, (int)(sizeof bad_cases / sizeof bad_cases[0]));
  tcase_add_test(tc, test_config_unreadable);
  tcase_add_test(tc, test_config_hostile_sizes);
  tcase_add_test(tc, test_parse_numbers);
  tcase_add_test(tc, test_flag_values);
  suite_add_tcase(s, tc);
  return s;
}
