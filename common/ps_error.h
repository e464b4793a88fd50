/* ps_error: the project's error codes.
 *
 * Every fallible function returns 0 or a negative PS_E* code (libuv style).
 * Foreign errors (RocksDB errptr, cudaError_t, cublasStatus_t, gRPC status,
 * errno) are converted once, at the boundary.  Thread-safe. */
#ifndef PS_ERROR_H
#define PS_ERROR_H

#include <stdarg.h>

#include <stddef.h>

#define PS_ERRNO_MAP(X)                                                     \
  X(EINVAL,   -1, "invalid argument")                                     \
  X(ENOMEM,   -2, "out of memory")                                        \
  X(ENOENT,   -3, "not found")                                            \
  X(EEXIST,   -4, "already exists")                                       \
  X(EIO,      -5, "i/o error")                                            \
  X(EPROTO,   -6, "protocol error")                                       \
  X(ETOOBIG,  -7, "request too large")                                    \
  X(ETIMEDOUT,-8, "timed out")                                            \
  X(EUNAVAIL, -9, "unavailable")                                          \
  X(ECONFIG, -10, "configuration error")                                  \
  X(EDEVICE, -11, "device error")                                         \
  X(ESHUTDOWN,-12, "shutting down")                                       \
  X(ENOSPC,  -13, "no space left")                                        \
  X(ELOCKED, -14, "locked by another process")                            \
  X(EDEGRADED,-15, "shard degraded")                                      \
  X(ENOTSUP, -16, "not supported")                                        \
  X(EFORMAT, -17, "bad file format")                                      \
  X(EINTERNAL,-18, "internal error")                                      \
  X(EEXPIRED,-19, "lease expired")                                       \
  X(EPERM,   -20, "permission denied")

enum {
#define PS_ERR_ENUM(name, code, msg) PS_##name = (code),
  PS_ERRNO_MAP(PS_ERR_ENUM)
#undef PS_ERR_ENUM
};

/* PS_DEGRADED_IN_MEMORY is the part of a DEGRADED shard's answer to a
 * push that says the push was applied in memory but its log sync failed
 * (README "Durability"); psw tells such answers from refusals by it. */
#define PS_DEGRADED_IN_MEMORY "this push is applied in memory but not on disk"

/* ps_strerror returns a static description of a PS_E* code (or "success",
 * or "unknown error"). */
const char *ps_strerror(int err);

/* ps_errname returns the static symbolic name ("PS_EINVAL") of a code. */
const char *ps_errname(int err);

/* ps_err_from_errno converts a positive errno value to a PS_E* code. */
int ps_err_from_errno(int e);

/* ps_err_path_failed says whether ERR means "the path to the peer
 * failed" (PS_EUNAVAIL, PS_EIO, PS_ETIMEDOUT, PS_EPROTO, PS_ESHUTDOWN):
 * no answer came, or the peer is going away, so a caller may close the
 * connection and go elsewhere.  psw_retryable is this plus a shard's
 * PS_EDEGRADED refusal; an aggregator's workers fail over after these
 * (psd_agg's agg_lost_note). */
int ps_err_path_failed(int err);

/* ps_err_to_grpc maps a PS_E* code to a grpc_status_code value (int, so
 * this header needs no gRPC); ps_err_from_grpc is its inverse where one
 * exists (otherwise PS_EUNAVAIL / PS_EINTERNAL).  A failing disk
 * (PS_EDEGRADED, PS_ENOSPC) goes as UNAVAILABLE, which comes back as
 * PS_EUNAVAIL: gRPC has no code of its own for it. */
int ps_err_to_grpc(int err);
int ps_err_from_grpc(int status);

/* ps_errbuf: a caller-owned message buffer that fallible functions fill
 * with a lowercase message quoting the subject, e.g.
 * "unknown model 'mlp'".  ps_errf formats into it (an argument may be its
 * own message: it formats through a copy) and returns err. */
typedef struct ps_errbuf {
  char msg[512];
} ps_errbuf;

int ps_errf(ps_errbuf *eb, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* ps_verrf is ps_errf with the arguments as AP, for wrappers that
 * format their own errors. */
int ps_verrf(ps_errbuf *eb, int err, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#endif
