/* cli.h — the `mopt` command-line tool: helpers shared by its subcommands (the cli/ files). */
#ifndef MOPT_CLI_H
#define MOPT_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "mopt.h"

/* Exit codes shared by every subcommand (contracts.md §1). */
enum { CLI_OK = 0, CLI_BAD_INPUT = 1, CLI_USAGE = 2, CLI_INTERNAL = 3 };

/* Exit code for a core error: model/spec problems are bad input, the rest internal. */
int cli_exit_code(int err);
/* Reads a whole file (malloc'd, NUL-terminated; *len excludes the NUL). 0 or MOPT_EIO/ENOMEM
 * with diag. */
int cli_read_file(const char *path, char **out, size_t *len, mopt_diag *diag);
/* Writes data to path atomically (temp file in the same directory, fsync, rename). */
int cli_write_file_atomic(const char *path, const char *data, size_t len, mopt_diag *diag);
/* Parses a spec file (api_spec_parse, no "model" key required). */
int cli_load_spec(const char *path, mopt_spec *spec, mopt_diag *diag);

int cli_inspect(int argc, char **argv);
int cli_optimize(int argc, char **argv);
int cli_worker(int argc, char **argv);

#endif
