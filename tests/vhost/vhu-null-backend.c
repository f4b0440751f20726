/* vhu-null-backend: a vhost-user device that echoes requests, for tests and
 * benchmarks.
 *
 *   vhu-null-backend --socket-path PATH | --fd N [--queues N] [--hold-queue Q] [--once]
 *
 * Virtio device id 0xfffe (unassigned).  Config space: 16 bytes, byte i holds
 * 0xa0 + i.  Every request copies min(out_len, in_len) bytes of its readable
 * part into its writable part and completes with that length.  With
 * --hold-queue Q, requests of queue Q are popped but never completed (for
 * inflight and restart tests); each batch held prints "held Q TOTAL" on
 * stdout.  Prints "ready" once it serves; exits 0 on
 * SIGTERM/SIGINT, or when the frontend left with --once or --fd. */
#include <signal.h>
#include <glib-unix.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>

#include "vhu-backend.h"

#define NULL_DEVICE_ID   0xfffeu
#define NULL_CONFIG_SIZE 16u
#define COPY_CHUNK       4096u

typedef struct {
  VhuBackend *backend;
  GMainLoop *loop;
  int hold_queue;  /* -1: none */
  GMutex lock;     /* held */
  GPtrArray *held; /* VhuElem* */
} NullDevice;

static void
null_get_config(gpointer dev, guint8 *config, gsize size)
{
  for (gsize i = 0; i < size && i < NULL_CONFIG_SIZE; i++)
    config[i] = (guint8)(0xa0 + i);
}

static gboolean
null_set_config(gpointer dev, guint32 offset, const guint8 *data, gsize size, guint32 flags,
                GError **error)
{
  /* Read-only config space; writes are accepted and ignored. */
  return TRUE;
}

static guint32
echo(const VhuElem *elem)
{
  gsize n = MIN(elem->out_len, elem->in_len);
  guint8 buf[COPY_CHUNK];

  for (gsize off = 0; off < n;) {
    gsize chunk = MIN(n - off, sizeof buf);
    gsize got = vhu_elem_read(elem, off, buf, chunk);

    if (got == 0)
      break;
    vhu_elem_write(elem, off, buf, got);
    off += got;
  }
  return (guint32)MIN(n, G_MAXUINT32);
}

static void
null_queue_kick(gpointer data, VhuBackend *backend, guint qidx)
{
  NullDevice *dev = data;
  VhuVring *vring = vhu_backend_get_vring(backend, qidx);
  gboolean pushed = FALSE;
  guint held = 0, total = 0;
  VhuElem *elem;

  for (;;) {
    g_autoptr(GError) error = NULL;

    elem = vhu_vring_pop(vring, &error);
    if (elem == NULL)
      break; /* empty, or broken: the backend reports it */
    if ((int)qidx == dev->hold_queue) {
      g_mutex_lock(&dev->lock);
      g_ptr_array_add(dev->held, elem);
      total = dev->held->len;
      g_mutex_unlock(&dev->lock);
      held++;
      continue;
    }
    vhu_vring_push(vring, elem, echo(elem));
    pushed = TRUE;
  }
  if (pushed)
    vhu_vring_notify(vring);
  if (held > 0) {
    /* Tests wait for this line before killing us. */
    printf("held %u %u\n", qidx, total);
    fflush(stdout);
  }
}

static void
null_reset(gpointer data)
{
  NullDevice *dev = data;

  g_mutex_lock(&dev->lock);
  g_ptr_array_set_size(dev->held, 0);
  g_mutex_unlock(&dev->lock);
}

static void
on_disconnect(gpointer data)
{
  NullDevice *dev = data;

  if (!vhu_backend_is_serving(dev->backend))
    g_main_loop_quit(dev->loop);
}

static gboolean
on_signal(gpointer data)
{
  g_main_loop_quit(data);
  return G_SOURCE_CONTINUE;
}

int
main(int argc, char **argv)
{
  g_autofree char *socket_path = NULL;
  int fd = -1, queues = 2, hold_queue = -1;
  gboolean once = FALSE;
  GOptionEntry entries[] = {
    { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &socket_path, "Listen on PATH", "PATH" },
    { "fd", 'f', 0, G_OPTION_ARG_INT, &fd, "Serve the connected socket N", "N" },
    { "queues", 'q', 0, G_OPTION_ARG_INT, &queues, "Number of queues (default 2)", "N" },
    { "hold-queue", 0, 0, G_OPTION_ARG_INT, &hold_queue, "Never complete requests of queue Q",
      "Q" },
    { "once", 0, 0, G_OPTION_ARG_NONE, &once, "Exit after the first frontend left", NULL },
    { NULL },
  };
  g_autoptr(GOptionContext) octx = g_option_context_new("- echoing vhost-user test device");
  g_autoptr(GError) error = NULL;
  VhuDeviceIface iface = {
    .name = "null",
    .device_id = NULL_DEVICE_ID,
    .config_size = NULL_CONFIG_SIZE,
    .get_config = null_get_config,
    .set_config = null_set_config,
    .queue_kick = null_queue_kick,
    .reset = null_reset,
  };
  VhuBackendOptions options = { 0 };
  NullDevice dev = { 0 };

  /* A peer that goes away is an error return, never the end of us. */
  signal(SIGPIPE, SIG_IGN);
  g_option_context_add_main_entries(octx, entries, NULL);
  if (!g_option_context_parse(octx, &argc, &argv, &error)) {
    g_printerr("vhu-null-backend: %s\n", error->message);
    return 2;
  }
  if ((socket_path == NULL) == (fd < 0) || queues < 1 || queues > 256 || hold_queue >= queues) {
    g_printerr("vhu-null-backend: need exactly one of --socket-path and --fd, "
               "1 <= --queues <= 256 and --hold-queue < --queues\n");
    return 2;
  }

  iface.num_queues = (guint)queues;
  options.single_client = once;
  dev.hold_queue = hold_queue;
  g_mutex_init(&dev.lock);
  dev.held = g_ptr_array_new_with_free_func((GDestroyNotify)vhu_elem_free);
  dev.loop = g_main_loop_new(NULL, FALSE);
  dev.backend = vhu_backend_new(&iface, &dev, NULL, &options);
  vhu_backend_set_disconnect_func(dev.backend, on_disconnect, &dev);

  if (socket_path != NULL ? !vhu_backend_listen(dev.backend, socket_path, &error)
                          : !vhu_backend_serve_fd(dev.backend, fd, &error)) {
    g_printerr("vhu-null-backend: %s\n", error->message);
    vhu_backend_free(dev.backend);
    return 1;
  }
  g_unix_signal_add(SIGTERM, on_signal, dev.loop);
  g_unix_signal_add(SIGINT, on_signal, dev.loop);

  printf("ready\n");
  fflush(stdout);
  g_main_loop_run(dev.loop);

  vhu_backend_free(dev.backend);
  g_ptr_array_unref(dev.held);
  g_main_loop_unref(dev.loop);
  return 0;
}
