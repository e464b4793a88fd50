/* Tests for ps_pb: UTF-8 validation, names, and checked unpacking of
 * messages whose strings hold a NUL or bytes that are not UTF-8. */
#include <string.h>

#include "ps.pb-c.h"
#include "ps_pb.h"
#include "ps_test.h"

START_TEST(test_utf8) {
  static const struct {
    const char *s;
    size_t len;
    int ok;
  } cases[] = {
      {"plain ascii", 11, 1},         {"caf\xc3\xa9", 5, 1},          {"\xe2\x82\xac", 3, 1},
      {"\xf0\x9f\x98\x80", 4, 1},     {"a\0b", 3, 0},                 {"\xff", 1, 0},
      {"\xc0\x80", 2, 0},             /* overlong NUL */
      {"\xe0\x80\xaf", 3, 0},         /* overlong '/' */
      {"\xed\xa0\x80", 3, 0},         /* a surrogate */
      {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
      {"\xe2\x82", 2, 0},             /* cut short */
      {"\xc3\x28", 2, 0},             /* bad continuation */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    ck_assert_msg(ps_utf8_valid(cases[i].s, cases[i].len) == cases[i].ok, "case %zu", i);
}
END_TEST

START_TEST(test_names) {
  ps_errbuf eb;
  ck_assert_int_eq(ps_name_check("model", "mlp-2.v_1", &eb), 0);
  ck_assert_int_eq(ps_name_check("model", "", &eb), PS_EINVAL);
  ck_assert_int_eq(ps_name_check("model", NULL, &eb), PS_EINVAL);
  ck_assert_int_eq(ps_name_check("model", "a b", &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "bad model name 'a b' (1-63 letters, digits, '.', '_', '-')");
  ck_assert_int_eq(ps_name_check("model", "x\n\xff", &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "bad model name 'x\\x0a\\xff' (1-63 letters, digits, '.', '_', '-')");
  char long_name[80];
  memset(long_name, 'a', 64);
  long_name[64] = '\0';
  ck_assert_int_eq(ps_name_check("cluster", long_name, &eb), PS_EINVAL);
  long_name[63] = '\0';
  ck_assert_int_eq(ps_name_check("cluster", long_name, &eb), 0);
  ck_assert_int_eq(ps_text_check("worker host", "node-7.example", 255, &eb), 0);
  ck_assert_int_eq(ps_text_check("worker host", "a\x1b[2J", 255, &eb), PS_EINVAL);
  ck_assert_str_eq(eb.msg, "worker host holds a control character (byte 1)");
  ck_assert_int_eq(ps_text_check("worker host", long_name, 10, &eb), PS_EINVAL);
}
END_TEST

/* pack_with packs a ModelSpec (nested in a SubmitModelRequest) whose name
 * is "nameX" and whose first tensor is "tenY", then replaces X and Y in
 * the wire bytes by BX and BY; returns the length. */
static size_t pack_with(uint8_t *buf, uint8_t bx, uint8_t by) {
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT;
  Ps__TensorSpec *tp[1] = {&t};
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  Ps__SubmitModelRequest req = PS__SUBMIT_MODEL_REQUEST__INIT;
  t.name = "tenY";
  spec.name = "nameX";
  spec.n_tensors = 1;
  spec.tensors = tp;
  req.model = &spec;
  size_t n = ps__submit_model_request__pack(&req, buf);
  uint8_t *x = memchr(buf, 'X', n), *y = memchr(buf, 'Y', n);
  ck_assert(x && y);
  *x = bx;
  *y = by;
  return n;
}

START_TEST(test_unpack_checks_nested_strings) {
  uint8_t buf[256];
  ProtobufCMessage *m;
  ps_errbuf eb;
  size_t n = pack_with(buf, 'x', 'y');
  ck_assert_int_eq(ps_pb_unpack(&ps__submit_model_request__descriptor, buf, n, &m, &eb), 0);
  ck_assert_str_eq(((Ps__SubmitModelRequest *)m)->model->name, "namex");
  protobuf_c_message_free_unpacked(m, NULL);
  n = pack_with(buf, 0, 'y');
  ck_assert_int_eq(ps_pb_unpack(&ps__submit_model_request__descriptor, buf, n, &m, &eb),
                   PS_EINVAL);
  ck_assert_str_eq(eb.msg, "field 'name' of ModelSpec is not valid UTF-8 or holds a NUL byte");
  ck_assert_ptr_null(m);
  n = pack_with(buf, 'x', 0xff);
  ck_assert_int_eq(ps_pb_unpack(&ps__submit_model_request__descriptor, buf, n, &m, &eb),
                   PS_EINVAL);
  ck_assert_str_eq(eb.msg, "field 'name' of TensorSpec is not valid UTF-8 or holds a NUL byte");
  static const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
  ck_assert_int_eq(ps_pb_unpack(&ps__submit_model_request__descriptor, junk, sizeof junk, &m, &eb),
                   PS_EINVAL);
  ck_assert_str_eq(eb.msg, "malformed SubmitModelRequest message");
}
END_TEST

Suite *ps_pb_suite(void) {
  Suite *s = suite_create("ps_pb");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_utf8);
  tcase_add_test(tc, test_names);
  tcase_add_test(tc, test_unpack_checks_nested_strings);
  suite_add_tcase(s, tc);
  return s;
}
