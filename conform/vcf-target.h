/* vcf-target.h: the backend under test.
 *
 * Either a socket someone else serves (--socket-path), or a command the tool
 * starts itself (--start 'CMD ... {socket} ...'): a fresh socket path in a
 * private temporary directory replaces {socket}, the process is started
 * before the first check and again whenever it is gone, and its death is
 * classified (signal, exit status) so the runner can report it against the
 * check that caused it.  A backend that exits with status 0 after its
 * frontend left (QEMU's vhost-user-gpu serves one connection) is not a
 * crash; it is simply started again.  Single-threaded. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _VcfTarget VcfTarget;

VcfTarget *vcf_target_new_socket(const char *path);
/* @command is split with g_shell_parse_argv; it must contain {socket}. */
VcfTarget *vcf_target_new_command(const char *command, GError **error);
void vcf_target_free(VcfTarget *t);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VcfTarget, vcf_target_free)

/* "socket PATH" or the command line, for reports. */
const char *vcf_target_describe(VcfTarget *t);
/* Makes sure a backend listens (starting one if needed); the socket path. */
const char *vcf_target_ensure(VcfTarget *t, GError **error);
/* After a check: does the backend still serve?  Connects and asks
 * GET_FEATURES.  FALSE when it died or stopped serving because of that
 * check, with @why ("killed by signal 11 (SIGSEGV)", "exited with status 1",
 * "stopped accepting connections"). */
gboolean vcf_target_survived(VcfTarget *t, char **why);
/* TRUE when no backend can be reached any more (socket mode after a crash). */
gboolean vcf_target_is_gone(VcfTarget *t);

G_END_DECLS
