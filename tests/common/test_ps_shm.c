/* Tests for ps_shm, a tensor-channel connection's shared-memory region:
 * the seals hold (the descriptor can be neither shrunk, nor grown, nor
 * resealed: nobody can make the shard fault on it), a region opened
 * through /proc/<pid>/fd/<fd> with the right size and token shares its
 * bytes both ways, a wrong token, size or descriptor (another process's
 * file, a pid from elsewhere) is refused and maps nothing, and a region
 * moved onto the owner's memory keeps that memory's bytes and, released,
 * leaves private memory holding the region's last bytes. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ps_shm.h"
#include "ps_test.h"

#define SHM_BYTES (3u * 4096u)

START_TEST(test_seals_hold) {
  ps_shm s;
  ps_errbuf eb;
  ck_assert_msg(ps_shm_create(&s, SHM_BYTES, &eb) == 0, "%s", eb.msg);
  ck_assert_int_ge(s.fd, 0);
  ck_assert_ptr_eq(s.data, s.map + PS_SHM_HDR);
  ck_assert_uint_eq(s.bytes, SHM_BYTES);
  /* What a client may try on its descriptor (the same file): all refused. */
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", s.fd);
  int f = open(path, O_RDWR);
  ck_assert_int_ge(f, 0);
  errno = 0;
  ck_assert_int_eq(ftruncate(f, 0), -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_int_eq(ftruncate(f, PS_SHM_HDR + SHM_BYTES + 4096), -1);
  ck_assert_int_eq(fcntl(f, F_ADD_SEALS, F_SEAL_WRITE), -1);
  ck_assert_int_eq(fcntl(f, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
                   F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  close(f);
  s.data[SHM_BYTES - 1] = 7; /* the whole range is backed */
  ck_assert_int_eq(ps_shm_holds(&s, 0, SHM_BYTES), 1);
  ck_assert_int_eq(ps_shm_holds(&s, 8, SHM_BYTES), 0);
  ck_assert_int_eq(ps_shm_holds(&s, 4, 8), 0); /* unaligned */
  ck_assert_int_eq(ps_shm_holds(&s, SHM_BYTES, 0), 1);
  ck_assert_int_eq(ps_shm_holds(&s, UINT64_MAX - 7, 16), 0);
  ps_shm_release(&s);
  ck_assert_ptr_null(s.map);
  ck_assert_int_eq(s.fd, -1);
  ps_shm_release(&s); /* twice: fine */
}
END_TEST

START_TEST(test_open_checks) {
  ps_shm s, c;
  ps_errbuf eb;
  ck_assert_msg(ps_shm_create(&s, SHM_BYTES, &eb) == 0, "%s", eb.msg);
  uint32_t me = (uint32_t)getpid();
  ck_assert_msg(ps_shm_open(&c, me, (uint32_t)s.fd, SHM_BYTES, s.token, PS_SHM_TOKEN, &eb) == 0,
                "%s", eb.msg);
  c.data[100] = 42; /* shared both ways */
  ck_assert_int_eq(s.data[100], 42);
  s.data[SHM_BYTES - 1] = 9;
  ck_assert_int_eq(c.data[SHM_BYTES - 1], 9);
  ps_shm_release(&c);
  uint8_t bad[PS_SHM_TOKEN];
  memcpy(bad, s.token, sizeof bad);
  bad[5] ^= 1;
  ck_assert_int_eq(ps_shm_open(&c, me, (uint32_t)s.fd, SHM_BYTES, bad, PS_SHM_TOKEN, &eb),
                   PS_EPROTO);
  ck_assert_ptr_null(c.map);
  ck_assert_int_eq(ps_shm_open(&c, me, (uint32_t)s.fd, SHM_BYTES - 4096, s.token, PS_SHM_TOKEN,
                               &eb), PS_EPROTO);
  ck_assert_int_eq(ps_shm_open(&c, me, (uint32_t)s.fd, SHM_BYTES, s.token, 16, &eb), PS_EPROTO);
  /* Another file behind that number (stdin-like descriptors, a plain
   * file): not sealed, or not the size. */
  char tmpl[600];
  snprintf(tmpl, sizeof tmpl, "%s/plainXXXXXX", ps_test_tmpdir());
  int pf = mkstemp(tmpl);
  ck_assert_int_ge(pf, 0);
  ck_assert_int_eq(ftruncate(pf, PS_SHM_HDR + SHM_BYTES), 0);
  ck_assert_int_eq(ps_shm_open(&c, me, (uint32_t)pf, SHM_BYTES, s.token, PS_SHM_TOKEN, &eb),
                   PS_EPROTO);
  close(pf);
  unlink(tmpl);
  ck_assert_int_eq(ps_shm_open(&c, me, 1000000, SHM_BYTES, s.token, PS_SHM_TOKEN, &eb), PS_EPERM);
  ck_assert_ptr_null(c.map);
  ps_shm_release(&s);
}
END_TEST

START_TEST(test_move_keeps_bytes) {
  ps_shm s, c;
  ps_errbuf eb;
  ck_assert_msg(ps_shm_create(&s, SHM_BYTES, &eb) == 0, "%s", eb.msg);
  ck_assert_msg(ps_shm_open(&c, (uint32_t)getpid(), (uint32_t)s.fd, SHM_BYTES, s.token,
                            PS_SHM_TOKEN, &eb) == 0, "%s", eb.msg);
  uint8_t *mine = mmap(NULL, SHM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert(mine != MAP_FAILED);
  for (unsigned i = 0; i < SHM_BYTES; i++) mine[i] = (uint8_t)(i * 7);
  ck_assert_int_eq(ps_shm_move(&c, mine + 1, &eb), PS_EINVAL); /* not page aligned */
  ck_assert_msg(ps_shm_move(&c, mine, &eb) == 0, "%s", eb.msg);
  ck_assert_ptr_eq(c.data, mine);
  ck_assert_int_eq(ps_shm_move(&c, mine, &eb), PS_EINVAL); /* once */
  for (unsigned i = 0; i < SHM_BYTES; i += 97) ck_assert_int_eq(mine[i], (uint8_t)(i * 7));
  for (unsigned i = 0; i < SHM_BYTES; i += 97) ck_assert_int_eq(s.data[i], (uint8_t)(i * 7));
  s.data[5] = 0xab; /* the shard writes; the owner's memory sees it */
  ck_assert_int_eq(mine[5], 0xab);
  mine[6] = 0xcd;
  ck_assert_int_eq(s.data[6], 0xcd);
  ps_shm_release(&c);
  /* Private again, the last bytes kept: the shard's writes no longer show. */
  ck_assert_int_eq(mine[5], 0xab);
  ck_assert_int_eq(mine[6], 0xcd);
  ck_assert_int_eq(mine[97], (uint8_t)(97 * 7));
  s.data[5] = 1;
  ck_assert_int_eq(mine[5], 0xab);
  mine[SHM_BYTES - 1] = 3;
  munmap(mine, SHM_BYTES);
  ps_shm_release(&s);
}
END_TEST

Suite *ps_shm_suite(void) {
  Suite *s = suite_create("ps_shm");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_seals_hold);
  tcase_add_test(tc, test_open_checks);
  tcase_add_test(tc, test_move_keeps_bytes);
  suite_add_tcase(s, tc);
  return s;
}
