/* ps_version: the build psd, psw and psctl were made from, fixed at build
 * time, so that an operator can tell which side of a compatibility note's
 * date (README) a binary is on: `psd --version`, and each shard's and
 * aggregator's Status (StatusReply.build, psctl status).
 *
 * Invariant: the string is the Makefile's (build/gen/ps_version_gen.h):
 * "COMMIT (DATE)", COMMIT being `git describe --always --dirty` of the
 * checkout built ("-dirty": with changes to tracked files not committed)
 * and DATE that commit's time in UTC ("2026-11-30T14:36Z"); "unknown"
 * where the sources were no git checkout.  Never NULL nor empty. */
#ifndef PS_VERSION_H
#define PS_VERSION_H

/* ps_version returns the build string. */
const char *ps_version(void);

/* ps_version_print prints "PROG BUILD" on stdout (--version). */
void ps_version_print(const char *prog);

#endif
