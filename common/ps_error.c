/* ps_error: error codes, names, and conversions. */
#include "ps_error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *ps_strerror(int err) {
  if (err == 0) return "success";
  switch (err) {
#define PS_ERR_CASE(name, code, msg) case code: return msg;
    PS_ERRNO_MAP(PS_ERR_CASE)
#undef PS_ERR_CASE
  }
  return "unknown error";
}

const char *ps_errname(int err) {
  if (err == 0) return "OK";
  switch (err) {
#define PS_ERR_NAME(name, code, msg) case code: return "PS_" #name;
    PS_ERRNO_MAP(PS_ERR_NAME)
#undef PS_ERR_NAME
  }
  return "PS_E?";
}

int ps_err_path_failed(int err) {
  return err == PS_EUNAVAIL || err == PS_EIO || err == PS_ETIMEDOUT || err == PS_EPROTO ||
         err == PS_ESHUTDOWN;
}

int ps_err_from_errno(int e) {
  switch (e) {
    case 0: return 0;
    case ENOMEM: return PS_ENOMEM;
    case ENOENT: return PS_ENOENT;
    case EEXIST: return PS_EEXIST;
    case EINVAL: return PS_EINVAL;
    case ETIMEDOUT: return PS_ETIMEDOUT;
    case ENOSPC: return PS_ENOSPC;
    case EDQUOT: return PS_ENOSPC;
    case EAGAIN: return PS_ELOCKED;
    case ECONNREFUSED: case ECONNRESET: case EPIPE: case EHOSTUNREACH:
      return PS_EUNAVAIL;
    default: return PS_EIO;
  }
}

/* grpc_status_code values, from grpc/impl/codegen/status.h. */
enum { G_OK = 0, G_INVALID_ARGUMENT = 3, G_PERMISSION_DENIED = 7, G_UNAUTHENTICATED = 16, G_DEADLINE_EXCEEDED = 4,
       G_NOT_FOUND = 5, G_ALREADY_EXISTS = 6, G_RESOURCE_EXHAUSTED = 8,
       G_FAILED_PRECONDITION = 9, G_ABORTED = 10, G_UNIMPLEMENTED = 12, G_INTERNAL = 13,
       G_UNAVAILABLE = 14, G_DATA_LOSS = 15 };

/* A full disk goes as UNAVAILABLE, as a DEGRADED shard's refusal does (a
 * failing disk either way; the message says which): RESOURCE_EXHAUSTED
 * comes back as PS_ETOOBIG, a request too large, which nobody retries. */
int ps_err_to_grpc(int err) {
  switch (err) {
    case 0: return G_OK;
    case PS_EINVAL: case PS_EPROTO: case PS_EFORMAT: return G_INVALID_ARGUMENT;
    case PS_ENOENT: return G_NOT_FOUND;
    case PS_EEXIST: return G_ALREADY_EXISTS;
    case PS_ETOOBIG: case PS_ENOMEM: return G_RESOURCE_EXHAUSTED;
    case PS_ETIMEDOUT: return G_DEADLINE_EXCEEDED;
    case PS_EUNAVAIL: case PS_ESHUTDOWN: case PS_EDEGRADED: case PS_ENOSPC: return G_UNAVAILABLE;
    case PS_ENOTSUP: return G_UNIMPLEMENTED;
    case PS_ELOCKED: case PS_ECONFIG: return G_FAILED_PRECONDITION;
    case PS_EEXPIRED: return G_ABORTED;
    case PS_EIO: return G_DATA_LOSS;
    case PS_EPERM: return G_PERMISSION_DENIED;
    default: return G_INTERNAL;
  }
}

int ps_err_from_grpc(int status) {
  switch (status) {
    case G_OK: return 0;
    case G_INVALID_ARGUMENT: return PS_EINVAL;
    case G_NOT_FOUND: return PS_ENOENT;
    case G_ALREADY_EXISTS: return PS_EEXIST;
    case G_RESOURCE_EXHAUSTED: return PS_ETOOBIG;
    case G_DEADLINE_EXCEEDED: return PS_ETIMEDOUT;
    case G_UNAVAILABLE: return PS_EUNAVAIL;
    case G_UNIMPLEMENTED: return PS_ENOTSUP;
    case G_FAILED_PRECONDITION: return PS_ECONFIG;
    case G_ABORTED: return PS_EEXPIRED;
    case G_DATA_LOSS: return PS_EIO;
    case G_PERMISSION_DENIED: case G_UNAUTHENTICATED: return PS_EPERM;
    default: return PS_EINTERNAL;
  }
}

int ps_errf(ps_errbuf *eb, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(eb, err, fmt, ap);
  va_end(ap);
  return err;
}

/* ps_verrf: see ps_error.h. */
int ps_verrf(ps_errbuf *eb, int err, const char *fmt, va_list ap) {
  if (eb) { /* through a copy: an argument may be EB's own message */
    char msg[sizeof eb->msg];
    vsnprintf(msg, sizeof msg, fmt, ap);
    memcpy(eb->msg, msg, sizeof msg);
  }
  return err;
}
