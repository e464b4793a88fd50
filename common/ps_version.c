/* ps_version: see ps_version.h. */
#include "ps_version.h"

#include <stdio.h>

#include "ps_version_gen.h" /* PS_VERSION_STRING, written by the Makefile */

const char *ps_version(void) { return PS_VERSION_STRING[0] ? PS_VERSION_STRING : "unknown"; }

void ps_version_print(const char *prog) { printf("%s %s\n", prog, ps_version()); }
