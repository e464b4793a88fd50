/* psctl: the operator CLI's entry point — dispatches the subcommand named
 * by argv[1] through a table. */
#include <stdio.h>
#include <string.h>

#include "ps_log.h"
#include "ps_proc.h"
#include "ps_rpc.h"
#include "ps_version.h"
#include "psctl.h"

static const struct psctl_cmd {
  const char *name;
  int (*main)(int argc, char **argv);
  const char *help;
} psctl_cmds[] = {
    {"status", psctl_status_main, "show every shard's state, models, rates and storage"},
    {"submit", psctl_submit_main, "register a model graph file on every shard"},
    {"model", psctl_model_main, "build common model graph files, or show one"},
    {"export", psctl_export_main, "write a model's parameters to an .npz file"},
    {"bench", psctl_bench_main, "measure push/pull throughput against the shards"},
};
#define PSCTL_NCMDS (sizeof psctl_cmds / sizeof psctl_cmds[0])

/* psctl_usage prints the command list to F. */
static void psctl_usage(FILE *f) {
  fprintf(f, "usage: psctl COMMAND [--config FILE] [ARGS...]\n\ncommands:\n");
  for (size_t i = 0; i < PSCTL_NCMDS; i++)
    fprintf(f, "  %-8s %s\n", psctl_cmds[i].name, psctl_cmds[i].help);
  fprintf(f, "\nThe cluster file defaults to ./%s.  'psctl COMMAND --help' describes a command.\n"
          "'psctl --version' prints psctl's build (commit and its UTC date); 'psctl status'\n"
          "shows each shard's.\n",
          PSCTL_DEFAULT_CONFIG);
}

/* psctl_run runs CMD with argv[1] (its name) as its argv[0], which
 * getopt_long names in its own messages: "psctl CMD" there, as in every
 * other message of the command ("psctl bench: unrecognized option ..."). */
static int psctl_run(const struct psctl_cmd *cmd, int argc, char **argv) {
  static char name[32];
  snprintf(name, sizeof name, "psctl %s", cmd->name);
  argv[1] = name;
  return cmd->main(argc - 1, argv + 1);
}

/* psctl_dispatch returns the subcommand's exit code; 0 for --help and
 * --version, 2 for a missing or unknown command. */
static int psctl_dispatch(int argc, char **argv) {
  if (argc < 2) {
    fputs("psctl: no command given\nsee 'psctl --help'\n", stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    psctl_usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    if (argc > 2) { /* a script's typo must not read as a build */
      fprintf(stderr, "psctl: --version takes no argument, got '%s'\nsee 'psctl --help'\n",
              argv[2]);
      return 2;
    }
    ps_version_print("psctl");
    return 0;
  }
  for (size_t i = 0; i < PSCTL_NCMDS; i++)
    if (!strcmp(argv[1], psctl_cmds[i].name)) return psctl_run(&psctl_cmds[i], argc, argv);
  fprintf(stderr, "psctl: unknown command '%s'\nsee 'psctl --help'\n", argv[1]);
  return 2;
}

/* main: the subcommand's exit code, 1 where it succeeded but what it
 * printed could not be written (a full disk, a closed stdout): a script
 * reading `psctl status --json > f` must not take an empty f for an
 * answer. */
int main(int argc, char **argv) {
  ps_proc_start(); /* first: fds 0-2 open, no signal blocked (ps_proc.h) */
  ps_grpc_env();   /* before any thread (ps_rpc.h) */
  ps_log_init("psctl", LOG_WARNING);
  return ps_proc_flush_stdout("psctl", "the output", psctl_dispatch(argc, argv));
}
