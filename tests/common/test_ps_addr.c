/* Tests for ps_addr: host:port splitting. */
#include "ps_addr.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ps_test.h"

START_TEST(test_addr_good) {
  char host[64];
  int port;
  ps_errbuf eb = {{0}};
  ck_assert_int_eq(ps_addr_split("host-b:7101", host, sizeof host, &port, &eb), 0);
  ck_assert_str_eq(host, "host-b");
  ck_assert_int_eq(port, 7101);
  ck_assert_int_eq(ps_addr_split("127.0.0.1:1", host, sizeof host, &port, &eb), 0);
  ck_assert_str_eq(host, "127.0.0.1");
  ck_assert_int_eq(port, 1);
  ck_assert_int_eq(ps_addr_split("h:65535", host, sizeof host, &port, &eb), 0);
  ck_assert_int_eq(port, 65535);
}
END_TEST

START_TEST(test_addr_bad_port) {
  static const char *bad[] = {"h:0", "h:65536", "h:70000", "h:", "h:-1", "h:+80", "h:000080"};
  char host[64];
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int port = 7;
    ps_errbuf eb = {{0}};
    ck_assert_int_eq(ps_addr_split(bad[i], host, sizeof host, &port, &eb), PS_EINVAL);
    ck_assert_int_eq(port, -1);
    ck_assert_msg(strstr(eb.msg, bad[i]) != NULL, "%s: %s", bad[i], eb.msg);
  }
}
END_TEST

START_TEST(test_addr_junk) {
  static const char *bad[] = {"80abc", "h:80abc", "h:80 ", "h:8 0", "localhost", ":80",
                              "a:b:80", "h h:80", "[::1:80", "[]:80", "[::1]x:80", ""};
  char host[64];
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int port = 7;
    ps_errbuf eb = {{0}};
    ck_assert_msg(ps_addr_split(bad[i], host, sizeof host, &port, &eb) == PS_EINVAL, "%s",
                  bad[i]);
    ck_assert_msg(port <= 0, "%s", bad[i]);
  }
  int port;
  ps_errbuf eb = {{0}};
  ck_assert_int_eq(ps_addr_split(NULL, host, sizeof host, &port, &eb), PS_EINVAL);
  ck_assert_int_eq(ps_addr_split("averylonghostname:80", host, 8, &port, &eb), PS_EINVAL);
}
END_TEST

START_TEST(test_addr_v6) {
  char host[64];
  int port;
  ps_errbuf eb = {{0}};
  ck_assert_int_eq(ps_addr_split("[::1]:7001", host, sizeof host, &port, &eb), 0);
  ck_assert_str_eq(host, "::1");
  ck_assert_int_eq(port, 7001);
  ck_assert_int_eq(ps_addr_split("[fe80::1%eth0]:80", host, sizeof host, &port, &eb), 0);
  ck_assert_str_eq(host, "fe80::1%eth0");
  ck_assert_int_eq(ps_addr_split("::1:7001", host, sizeof host, &port, &eb), PS_EINVAL);
  ck_assert_int_eq(ps_addr_split("[::1]:99999", host, sizeof host, &port, &eb), PS_EINVAL);
  ck_assert_int_eq(port, -1);
}
END_TEST

/* A port with a leading zero is refused (07000 read as octal elsewhere
 * would be another port); the message says what to write instead.  Up to
 * now 07000 passed (5 digits) while 034010 was "bad port" (6). */
START_TEST(test_addr_port_leading_zero) {
  static const struct {
    const char *addr, *why;
  } bad[] = {{"127.0.0.1:07000", "07000 has a leading zero: write 7000"},
             {"127.0.0.1:034010", "034010 has a leading zero: write 34010"},
             {"[::1]:00080", "00080 has a leading zero: write 80"},
             {"h:01", "01 has a leading zero: write 1"}};
  char host[64];
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int port = 7;
    ps_errbuf eb = {{0}};
    ck_assert_int_eq(ps_addr_split(bad[i].addr, host, sizeof host, &port, &eb), PS_EINVAL);
    ck_assert_int_eq(port, -1);
    ck_assert_msg(strstr(eb.msg, bad[i].addr) && strstr(eb.msg, bad[i].why), "%s: %s",
                  bad[i].addr, eb.msg);
  }
  /* all zeros, or too large without them: the range is at fault */
  static const char *range[] = {"h:00", "h:0065536", "h:000000000000000000080000"};
  for (size_t i = 0; i < sizeof range / sizeof *range; i++) {
    int port = 7;
    ps_errbuf eb = {{0}};
    ck_assert_int_eq(ps_addr_split(range[i], host, sizeof host, &port, &eb), PS_EINVAL);
    ck_assert_int_eq(port, -1);
    ck_assert_msg(strstr(eb.msg, "want 1..65535"), "%s: %s", range[i], eb.msg);
  }
}
END_TEST

/* ps_addr_same: one address however it is written (IP addresses as
 * inet_pton reads them, localhost as the loopback address, host names
 * without case), a wildcard and another address on one port only maybe,
 * and no DNS. */
START_TEST(test_addr_same) {
  static const struct {
    const char *a, *b;
    int want;
  } cases[] = {
      {"127.0.0.1:7000", "127.0.0.1:7000", PS_ADDR_SAME},
      {"[::1]:34010", "[0:0::1]:34010", PS_ADDR_SAME},
      {"[::1]:34010", "[0000:0:0:0:0:0:0:1]:34010", PS_ADDR_SAME},
      {"localhost:34010", "127.0.0.1:34010", PS_ADDR_SAME},
      {"[::1]:34010", "localhost:34010", PS_ADDR_SAME},
      {"LocalHost:1", "localhost:1", PS_ADDR_SAME},
      {"Host-B:7101", "host-b:7101", PS_ADDR_SAME},
      {"[::ffff:10.0.0.1]:5", "10.0.0.1:5", PS_ADDR_SAME},
      {"[fe80::1%eth0]:80", "[fe80::0:1%eth0]:80", PS_ADDR_SAME},
      {"0.0.0.0:7000", "0.0.0.0:7000", PS_ADDR_SAME},
      {"[::]:7000", "[0::0]:7000", PS_ADDR_SAME},
      /* a wildcard takes the port on every address of its host */
      {"0.0.0.0:7000", "10.0.0.2:7000", PS_ADDR_MAYBE},
      {"host-b:7000", "0.0.0.0:7000", PS_ADDR_MAYBE},
      {"localhost:7000", "0.0.0.0:7000", PS_ADDR_MAYBE},
      {"[::]:7000", "0.0.0.0:7000", PS_ADDR_MAYBE},
      {"[::]:7000", "10.0.0.2:7000", PS_ADDR_MAYBE},
      {"[::]:7000", "[::1]:7000", PS_ADDR_MAYBE},
      {"0.0.0.0:7000", "[::1]:7000", PS_ADDR_OTHER}, /* an IPv4 wildcard only */
      {"0.0.0.0:7000", "10.0.0.2:7001", PS_ADDR_OTHER},
      {"127.0.0.1:7000", "127.0.0.2:7000", PS_ADDR_OTHER},
      {"127.0.0.1:7000", "127.0.0.1:7001", PS_ADDR_OTHER},
      {"localhost:7000", "10.0.0.1:7000", PS_ADDR_OTHER},
      {"host-a:7000", "host-b:7000", PS_ADDR_OTHER},
      {"host-a:7000", "10.0.0.1:7000", PS_ADDR_OTHER}, /* no DNS */
      {"[fe80::1%eth0]:80", "[fe80::1%eth1]:80", PS_ADDR_OTHER},
      {"h:7000", "h:07000", PS_ADDR_OTHER}, /* not an address */
      {"h", "h", PS_ADDR_OTHER},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_assert_msg(ps_addr_same(cases[i].a, cases[i].b) == cases[i].want, "%s %s: %d",
                  cases[i].a, cases[i].b, ps_addr_same(cases[i].a, cases[i].b));
    ck_assert_msg(ps_addr_same(cases[i].b, cases[i].a) == cases[i].want, "%s %s", cases[i].b,
                  cases[i].a);
  }
  ck_assert(ps_addr_wildcard("0.0.0.0:1") && ps_addr_wildcard("[::]:1") &&
            ps_addr_wildcard("[0:0::0]:1") && ps_addr_wildcard("[::ffff:0.0.0.0]:1"));
  ck_assert(!ps_addr_wildcard("127.0.0.1:1") && !ps_addr_wildcard("[::1]:1") &&
            !ps_addr_wildcard("localhost:1") && !ps_addr_wildcard("0.0.0.0") &&
            !ps_addr_wildcard("0.0.0.0:01"));
}
END_TEST

/* ps_addr_loopback and ps_addr_same_host: the loopback and same-host
 * judgements psd's plaintext warning and the data_dir check make, on
 * addresses as ps_addr_same reads them, not on their text. */
START_TEST(test_addr_loopback_same_host) {
  static const char *const lo[] = {"localhost:1", "LOCALHOST:1", "LocalHost:1", "127.0.0.1:1",
                                   "127.1.2.3:1", "[::1]:1", "[0:0::1]:1",
                                   "[0000:0:0:0:0:0:0:1]:1", "[::ffff:127.0.0.1]:1"};
  for (size_t i = 0; i < sizeof lo / sizeof *lo; i++)
    ck_assert_msg(ps_addr_loopback(lo[i]), "%s", lo[i]);
  static const char *const not_lo[] = {"10.0.0.1:1", "0.0.0.0:1", "[::]:1", "host-a:1",
                                       "localhost.example:1", "[::2]:1", "128.0.0.1:1",
                                       "localhost", "127.0.0.1:01", "[::ffff:10.0.0.1]:1"};
  for (size_t i = 0; i < sizeof not_lo / sizeof *not_lo; i++)
    ck_assert_msg(!ps_addr_loopback(not_lo[i]), "%s", not_lo[i]);
  static const struct {
    const char *a, *b;
    int want;
  } cases[] = {
      {"localhost:1", "127.0.0.1:2", 1},   {"LOCALHOST:1", "[::1]:2", 1},
      {"127.0.0.1:1", "127.0.0.2:2", 1},   {"[0:0::1]:1", "[::1]:1", 1},
      {"Host-A:1", "host-a:2", 1},         {"[::ffff:10.0.0.1]:1", "10.0.0.1:2", 1},
      {"0.0.0.0:1", "0.0.0.0:2", 1},       {"[::]:1", "[0::0]:2", 1},
      {"10.0.0.1:1", "10.0.0.2:1", 0},     {"localhost:1", "10.0.0.1:1", 0},
      {"host-a:1", "10.0.0.1:1", 0},       {"0.0.0.0:1", "10.0.0.1:1", 0},
      {"0.0.0.0:1", "[::]:1", 0},          {"0.0.0.0:1", "127.0.0.1:1", 0},
      {"h:1", "h", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_assert_msg(ps_addr_same_host(cases[i].a, cases[i].b) == cases[i].want, "%s %s",
                  cases[i].a, cases[i].b);
    ck_assert_msg(ps_addr_same_host(cases[i].b, cases[i].a) == cases[i].want, "%s %s",
                  cases[i].b, cases[i].a);
  }
}
END_TEST

/* ps_addr_dead_after: the kernel gives a connection up after DEAD_MS
 * without an acknowledgement (TCP_USER_TIMEOUT), probing an idle one from
 * half of it on (whole seconds, at least 1) every second. */
START_TEST(test_addr_dead_after) {
  static const struct {
    int ms, idle;
  } cases[] = {{10000, 5}, {2500, 1}, {1000, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ps_errbuf eb = {""};
    ck_assert_msg(ps_addr_dead_after(fd, cases[i].ms, &eb) == 0, "%s", eb.msg);
    unsigned int ut = 0;
    int v = 0;
    socklen_t n = sizeof ut;
    ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, &n), 0);
    ck_assert_uint_eq(ut, (unsigned)cases[i].ms);
    n = sizeof v;
    ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v, &n), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &n), 0);
    ck_assert_int_eq(v, cases[i].idle);
    ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, &n), 0);
    ck_assert_int_eq(v, 1);
    close(fd);
  }
  ps_errbuf eb = {""};
  ck_assert_int_eq(ps_addr_dead_after(-1, 1000, &eb), PS_EIO);
  ck_assert_msg(strstr(eb.msg, "TCP_USER_TIMEOUT"), "%s", eb.msg);
}
END_TEST

Suite *ps_addr_suite(void) {
  Suite *s = suite_create("ps_addr");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_addr_good);
  tcase_add_test(tc, test_addr_bad_port);
  tcase_add_test(tc, test_addr_junk);
  tcase_add_test(tc, test_addr_v6);
  tcase_add_test(tc, test_addr_port_leading_zero);
  tcase_add_test(tc, test_addr_same);
  tcase_add_test(tc, test_addr_loopback_same_host);
  tcase_add_test(tc, test_addr_dead_after);
  suite_add_tcase(s, tc);
  return s;
}
