/* gst-vhost-wake-floor: the least CPU a backend that sleeps between kicks
 * can spend per request on one CPU.
 *
 * Two processes pinned to the first allowed CPU play driver and backend
 * over two eventfds (kick and call), with no work in between: the driver
 * kicks and waits for the call; the backend waits for the kick, drains it
 * and signals the call.  The backend's CPU time per round trip
 * (CLOCK_PROCESS_CPUTIME_ID, which includes its system calls and the
 * context switches charged to it) is printed for each way of waiting:
 *   poll       poll() on the kick fd, read, write
 *   read       a blocking read on the kick fd, write
 *   glib       a GMainContext with one fd source (what the queue thread does)
 *   glib+3     the same with three more idle fds in the context
 * A reference for docs/performance.md ("Small commands"), not a test. */
#include <gio/gio.h>
#include <glib-unix.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef enum { WAIT_POLL, WAIT_READ, WAIT_GLIB, WAIT_GLIB_MORE, N_WAITS } Wait;

static const char *const wait_names[N_WAITS] = { "poll", "read", "glib", "glib+3" };

typedef struct {
  int kick, call;
  long rounds, done;
} Pair;

static double
process_cpu_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void
must(gboolean ok, const char *what)
{
  if (!ok) {
    perror(what);
    _exit(1);
  }
}

static void
answer(Pair *p)
{
  guint64 v;

  must(read(p->kick, &v, sizeof v) == sizeof v, "read kick");
  v = 1;
  must(write(p->call, &v, sizeof v) == sizeof v, "write call");
  p->done++;
}

static gboolean
on_kick(gint fd, GIOCondition cond, gpointer data)
{
  answer(data);
  return G_SOURCE_CONTINUE;
}

static gboolean
on_idle_fd(gint fd, GIOCondition cond, gpointer data)
{
  return G_SOURCE_CONTINUE;
}

/* In the child: answers p->rounds kicks, then writes its CPU per round
 * trip (ns) to @out. */
static void
backend(Pair *p, Wait how, int out)
{
  double t0 = process_cpu_ns(), ns;

  if (how == WAIT_GLIB || how == WAIT_GLIB_MORE) {
    GMainContext *ctx = g_main_context_new();
    GSource *s = g_unix_fd_source_new(p->kick, G_IO_IN);

    g_source_set_callback(s, G_SOURCE_FUNC(on_kick), p, NULL);
    g_source_attach(s, ctx);
    for (int i = 0; how == WAIT_GLIB_MORE && i < 3; i++) {
      GSource *x = g_unix_fd_source_new(eventfd(0, EFD_CLOEXEC), G_IO_IN);

      g_source_set_callback(x, G_SOURCE_FUNC(on_idle_fd), NULL, NULL);
      g_source_attach(x, ctx);
    }
    while (p->done < p->rounds)
      g_main_context_iteration(ctx, TRUE);
  } else {
    while (p->done < p->rounds) {
      struct pollfd pfd = { p->kick, POLLIN, 0 };

      if (how == WAIT_POLL)
        must(poll(&pfd, 1, -1) == 1, "poll");
      answer(p);
    }
  }
  ns = (process_cpu_ns() - t0) / (double)p->rounds;
  must(write(out, &ns, sizeof ns) == sizeof ns, "write result");
}

static double
measure(Wait how, long rounds)
{
  Pair p = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC), rounds, 0 };
  int res[2];
  double ns = -1;
  pid_t pid;

  must(p.kick >= 0 && p.call >= 0 && pipe(res) == 0, "eventfd/pipe");
  pid = fork();
  must(pid >= 0, "fork");
  if (pid == 0) {
    backend(&p, how, res[1]);
    _exit(0);
  }
  for (long i = 0; i < rounds; i++) {
    struct pollfd pfd = { p.call, POLLIN, 0 };
    guint64 v = 1;

    must(write(p.kick, &v, sizeof v) == sizeof v, "write kick");
    must(poll(&pfd, 1, -1) == 1, "poll call");
    must(read(p.call, &v, sizeof v) == sizeof v, "read call");
  }
  must(read(res[0], &ns, sizeof ns) == sizeof ns, "read result");
  waitpid(pid, NULL, 0);
  close(p.kick);
  close(p.call);
  close(res[0]);
  close(res[1]);
  return ns;
}

int
main(int argc, char **argv)
{
  gint64 rounds = 200000;
  const GOptionEntry entries[] = {
    { "rounds", 'n', 0, G_OPTION_ARG_INT64, &rounds, "Round trips per way (200000)", "N" },
    { NULL },
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new("- backend CPU per kick, no work");
  g_autoptr(GError) error = NULL;
  cpu_set_t allowed, one;
  int cpu = -1;

  g_option_context_add_main_entries(ctx, entries, NULL);
  if (!g_option_context_parse(ctx, &argc, &argv, &error) || rounds < 1) {
    g_printerr("%s\n", error != NULL ? error->message : "bad --rounds");
    return 2;
  }
  must(sched_getaffinity(0, sizeof allowed, &allowed) == 0, "sched_getaffinity");
  for (int i = 0; i < CPU_SETSIZE && cpu < 0; i++) {
    if (CPU_ISSET(i, &allowed))
      cpu = i;
  }
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  must(sched_setaffinity(0, sizeof one, &one) == 0, "sched_setaffinity");
  printf("gst-vhost-wake-floor: eventfd round trips between two processes on CPU %d, "
         "%" G_GINT64_FORMAT " per way\nbackend CPU per round trip:\n",
         cpu, rounds);
  for (Wait w = 0; w < N_WAITS; w++) {
    fflush(stdout);
    printf("  %-8s %8.0f ns\n", wait_names[w], measure(w, (long)rounds));
  }
  return 0;
}
