/* test-daemon.h: one of our daemons (gst-vhost-gpu, gst-vhost-sound) as a
 * child process on a socket of its own, with its log (stderr) collected line
 * by line on a thread, so tests wait for what it says instead of sleeping. */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct {
  GSubprocess *proc;
  char *dir;  /* a fresh temporary directory */
  char *path; /* the socket in it */
  GThread *reader;
  GMutex lock;
  GCond cond;
  GPtrArray *lines; /* the daemon's stderr so far */
  gboolean eof;
} TuDaemon;

/* Starts @binary --socket-path PATH @extra... (NULL-terminated, may be
 * NULL), PATH being @sock_name in a fresh directory from @tmpl, and waits
 * until it logs "listening on". */
void tu_daemon_start(TuDaemon *d, const char *binary, const char *tmpl, const char *sock_name,
                     const char *const *extra, int timeout_ms);
/* TRUE once the daemon logged a line containing @text; FALSE when it ended
 * or @timeout_ms passed first. */
gboolean tu_daemon_wait_log(TuDaemon *d, const char *text, int timeout_ms);
/* How many lines logged so far contain @text. */
guint tu_daemon_count_log(TuDaemon *d, const char *text);
/* Waits (bounded) until its stderr closed and it was reaped; fails the test
 * if it does not end in time. */
void tu_daemon_wait_exit(TuDaemon *d, int timeout_ms);
/* SIGTERM, then checks it exited 0 within @timeout_ms, and frees @d's
 * members (the directory and socket file removed).  No-op once stopped. */
void tu_daemon_stop(TuDaemon *d, int timeout_ms);
/* Frees @d's members after the process ended some other way. */
void tu_daemon_clear(TuDaemon *d);

G_END_DECLS
