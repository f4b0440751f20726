/* test-util.h: what the vhost and gpu tests share: waits that end with a
 * timeout, temporary directories, backend processes serving a socket, and
 * a thread running a main loop. */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/* A fresh temporary directory from @tmpl ("name-XXXXXX"); fails the test
 * if it cannot be made. */
char *tu_make_tmpdir(const char *tmpl);

/* TRUE once @fd is readable (or hung up); FALSE after @timeout_ms. */
gboolean tu_wait_readable(int fd, int timeout_ms);

/* Reads one line of @proc's stdout pipe into @line (newline dropped), byte
 * by byte so that nothing after it is consumed; each byte must arrive
 * within @timeout_ms.  Fails the test otherwise, or if @size is too small. */
void tu_read_line(GSubprocess *proc, char *line, gsize size, int timeout_ms);
/* Reads one line as above and checks that it is @expected. */
void tu_expect_line(GSubprocess *proc, const char *expected, int timeout_ms);
/* Spawns @argv and waits until it printed the line "ready" (the null
 * device does once it serves). */
GSubprocess *tu_spawn_ready(GSubprocessLauncher *launcher, const char *const *argv, int timeout_ms);

/* Waits up to @timeout_ms for @proc to exit, iterating the default main
 * context.  Returns its exit status, or -1 when a signal ended it; if it is
 * still running, it is killed and the test fails. */
int tu_wait_exit(GSubprocess *proc, int timeout_ms);
/* TRUE while the GSubprocess @proc runs (for vhu_frontend_connect_wait). */
gboolean tu_proc_alive(gpointer proc);

/* A backend process and its socket, alone in a temporary directory. */
typedef struct {
  GSubprocess *proc;
  char *dir;
  char *path;
} TuBackend;

/* b->dir from @tmpl (see tu_make_tmpdir), b->path = @name in it. */
void tu_backend_init(TuBackend *b, const char *tmpl, const char *name);
/* QEMU's vhost-user-gpu (@binary) on a fresh socket, with its stdout
 * discarded and G_DEBUG unset (it logs guest errors as criticals).  It says
 * nothing when ready.  FALSE, with the test skipped, if not installed. */
gboolean tu_spawn_qemu_gpu(TuBackend *b, const char *binary, const char *tmpl);
/* Removes the socket file and the directory and frees @b's members; the
 * process must be gone. */
void tu_backend_clear(TuBackend *b);

/* A thread that runs @loop with its context as the thread default, until
 * tu_loop_thread_join quits the loop from that context and joins it. */
GThread *tu_loop_thread_new(const char *name, GMainLoop *loop);
void tu_loop_thread_join(GThread *thread, GMainLoop *loop);

G_END_DECLS
