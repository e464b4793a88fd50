/* Tests for ps_chan framing: the fixed header's encoding and every way a
 * header can be refused. */
#include <stdio.h>
#include <string.h>

#include "ps_chan.h"
#include "ps_test.h"

static ps_chan_hdr good_hdr(void) {
  ps_chan_hdr h = {.magic = PS_CHAN_MAGIC, .version = PS_CHAN_VERSION, .flags = 0,
                   .meta_len = 77, .reserved = 0, .data_len = 4ull << 20,
                   .req_id = 0x0102030405060708ull};
  return h;
}

START_TEST(test_hdr_round_trip) {
  ps_chan_hdr h = good_hdr(), d;
  uint8_t buf[PS_CHAN_HDR_LEN];
  ps_chan_hdr_encode(buf, &h);
  /* Little-endian layout, as documented in ps_chan.h. */
  ck_assert_int_eq(memcmp(buf, "PSC1", 4), 0);
  ck_assert_uint_eq(buf[4], 1);
  ck_assert_uint_eq(buf[8], 77);
  ck_assert_uint_eq(buf[18], 0x40);
  ck_assert_uint_eq(buf[24], 0x08);
  ck_assert_uint_eq(buf[31], 0x01);
  memset(&d, 0xff, sizeof d);
  ck_assert_int_eq(ps_chan_hdr_decode(&d, buf, 4ull << 20), 0);
  ck_assert_uint_eq(d.magic, h.magic);
  ck_assert_uint_eq(d.version, h.version);
  ck_assert_uint_eq(d.flags, 0);
  ck_assert_uint_eq(d.meta_len, 77);
  ck_assert_uint_eq(d.reserved, 0);
  ck_assert_uint_eq(d.data_len, 4ull << 20);
  ck_assert_uint_eq(d.req_id, 0x0102030405060708ull);
  /* Largest meta accepted. */
  h.meta_len = PS_CHAN_MAX_META;
  ps_chan_hdr_encode(buf, &h);
  ck_assert_int_eq(ps_chan_hdr_decode(&d, buf, UINT64_MAX), 0);
  ck_assert_uint_eq(d.meta_len, PS_CHAN_MAX_META);
}
END_TEST

/* Each case spoils one field of a good header. */
START_TEST(test_hdr_bad) {
  struct {
    const char *what;
    int want;
  } cases[] = {
      {"magic", PS_EPROTO},
      {"version", PS_EPROTO},
      {"flags", PS_EPROTO},
      {"reserved", PS_EPROTO},
      {"meta_len", PS_EPROTO},
      {"data_len", PS_ETOOBIG},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ps_chan_hdr h = good_hdr(), d;
    switch (i) { /* test table: one spoiled field per row */
      case 0: h.magic = 0x31435351; break;
      case 1: h.version = 2; break;
      case 2: h.flags = 2; break; /* PS_CHAN_FLAG_MAC is the only flag */
      case 3: h.reserved = 5; break;
      case 4: h.meta_len = PS_CHAN_MAX_META + 1; break;
      case 5: h.data_len = (4ull << 20) + 4; break;
    }
    uint8_t buf[PS_CHAN_HDR_LEN];
    ps_chan_hdr_encode(buf, &h);
    ck_assert_msg(ps_chan_hdr_decode(&d, buf, 4ull << 20) == cases[i].want,
                  "bad %s accepted or wrong code", cases[i].what);
  }
  /* The payload-MAC flag is a known one. */
  ps_chan_hdr h = good_hdr(), d0;
  h.flags = PS_CHAN_FLAG_MAC;
  uint8_t buf0[PS_CHAN_HDR_LEN];
  ps_chan_hdr_encode(buf0, &h);
  ck_assert_int_eq(ps_chan_hdr_decode(&d0, buf0, 4ull << 20), 0);
  ck_assert_uint_eq(d0.flags, PS_CHAN_FLAG_MAC);
  /* Garbage bytes are not a header. */
  uint8_t junk[PS_CHAN_HDR_LEN];
  memcpy(junk, "GET / HTTP/1.1\r\nHost: x\r\n\r\n.....", PS_CHAN_HDR_LEN);
  ps_chan_hdr d;
  ck_assert_int_eq(ps_chan_hdr_decode(&d, junk, UINT64_MAX), PS_EPROTO);
}
END_TEST

START_TEST(test_connect_refused) {
  /* Nothing listens on a port that was free a moment ago. */
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", ps_test_free_port());
  ps_chan_client *c = (ps_chan_client *)1;
  ps_errbuf eb;
  int64_t t0 = ps_test_now_ms();
  ck_assert_int_eq(ps_test_chan_connect(&c, addr, "test", 2000, &eb), PS_EUNAVAIL);
  ck_assert_ptr_null(c);
  ck_assert_msg(strstr(eb.msg, addr) != NULL, "message '%s' names no address", eb.msg);
  ck_assert_int_lt(ps_test_now_ms() - t0, 2000);
  ck_assert_int_eq(ps_test_chan_connect(&c, "no-port", "test", 100, &eb), PS_EINVAL);
}
END_TEST

Suite *ps_chan_suite(void) {
  Suite *s = suite_create("ps_chan");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_hdr_round_trip);
  tcase_add_test(tc, test_hdr_bad);
  tcase_add_test(tc, test_connect_refused);
  suite_add_tcase(s, tc);
  return s;
}
