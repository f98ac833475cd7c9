/* ota.h — `mopt` subcommands for OTA payloads (cli/ota.c): pack, unpack, delta, apply,
 * payload-info, verify-manifest. Each takes the arguments after the subcommand name and
 * returns the process exit code (0 ok, 1 bad input / verification failed, 2 usage, 3 internal). */
#ifndef MOPT_CLI_OTA_H
#define MOPT_CLI_OTA_H

int mopt_cli_pack(int argc, char **argv);            /* mopt pack MODEL -o PAYLOAD */
int mopt_cli_unpack(int argc, char **argv);          /* mopt unpack PAYLOAD -o MODEL */
int mopt_cli_delta(int argc, char **argv);           /* mopt delta OLD NEW -o PAYLOAD */
int mopt_cli_apply(int argc, char **argv);           /* mopt apply OLD PAYLOAD -o NEW */
int mopt_cli_payload_info(int argc, char **argv);    /* mopt payload-info PAYLOAD */
int mopt_cli_verify_manifest(int argc, char **argv); /* mopt verify-manifest MANIFEST --key KEY */

#endif
