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
 * SIGTERM/SIGINT, or when the frontend left with --once or --fd.
 *
 * --fault NAME (with --socket-path) makes it a deliberately wrong backend,
 * for showing that gst-vhost-conform catches each kind of fault: a relay
 * thread accepts on PATH and passes every message to the real backend (on
 * PATH.inner), breaking one rule of the protocol on the way; see
 * fault_names below. */
#include <signal.h>
#include <glib-unix.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vhu-backend.h"
#include "vhu-msg.h"

#include <errno.h>
#include <gio/gio.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

/* --- deliberate faults (--fault) ---------------------------------------- */

typedef enum {
  FAULT_NONE,
  FAULT_REPLY_FLAGS,  /* SET_VRING_NUM acked with flags 0x4 instead of 0x5 */
  FAULT_NO_ACK,       /* SET_VRING_NUM/ADDR/BASE never acked */
  FAULT_NO_PF_ENABLE, /* SET_FEATURES without PROTOCOL_FEATURES leaves rings disabled */
  FAULT_ADD_MEM_REG,  /* ADD_MEM_REG acked but dropped */
  FAULT_VRING_BASE,   /* GET_VRING_BASE answers one more than the truth */
  FAULT_EVENT_IDX,    /* EVENT_IDX acked but ignored */
  FAULT_CONFIG_SIZE,  /* GET_CONFIG answers 4 bytes short */
  FAULT_STATUS,       /* GET_STATUS always answers 0 */
  FAULT_INFLIGHT,     /* GET_INFLIGHT_FD answers a 16-byte buffer */
  FAULT_NO_RESUBMIT,  /* SET_INFLIGHT_FD acked but dropped: nothing is resubmitted */
  FAULT_RECONNECT,    /* after a frontend left with rings started, nobody is served */
  FAULT_CRASH,        /* SIGSEGV on a message larger than the protocol allows */
} Fault;

static const char *const fault_names[] = {
  "none",        "reply-flags", "no-ack",      "no-pf-enable", "add-mem-reg",
  "vring-base",  "event-idx",   "config-size", "status",       "inflight",
  "no-resubmit", "reconnect",   "crash",
};

typedef struct {
  Fault fault;
  int listen_fd;
  char inner_path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
  gboolean poisoned; /* FAULT_RECONNECT: a frontend left with rings started */
  gboolean started;
} Relay;

static gboolean
has_own_reply(guint32 request)
{
  switch (request) {
    case VHU_GET_FEATURES:
    case VHU_GET_VRING_BASE:
    case VHU_GET_PROTOCOL_FEATURES:
    case VHU_GET_QUEUE_NUM:
    case VHU_GET_CONFIG:
    case VHU_GET_INFLIGHT_FD:
    case VHU_GET_MAX_MEM_SLOTS:
    case VHU_GET_STATUS:
      return TRUE;
    default:
      return FALSE;
  }
}

/* Frontend to backend; FALSE ends the connection. */
static gboolean
relay_request(Relay *r, int fe, int be)
{
  VhuMsg msg;
  VhuMsgStatus st;
  guint64 v;
  gboolean ok;

  vhu_msg_init(&msg);
  st = vhu_msg_read(fe, &msg, 1000, NULL);
  if (st == VHU_MSG_ERROR && r->fault == FAULT_CRASH && msg.hdr.size > VHU_MAX_PAYLOAD) {
    /* Die by the signal itself, past any handler a sanitizer installed. */
    signal(SIGSEGV, SIG_DFL);
    raise(SIGSEGV);
  }
  if (st != VHU_MSG_OK)
    return FALSE;
  if (msg.hdr.request == VHU_SET_VRING_KICK || msg.hdr.request == VHU_GET_VRING_BASE)
    r->started = msg.hdr.request == VHU_SET_VRING_KICK;
  if (msg.hdr.request == VHU_SET_FEATURES && msg.hdr.size == 8) {
    memcpy(&v, msg.payload, 8);
    if (r->fault == FAULT_EVENT_IDX)
      v &= ~(G_GUINT64_CONSTANT(1) << VHU_F_RING_EVENT_IDX);
    if (r->fault == FAULT_NO_PF_ENABLE)
      v |= G_GUINT64_CONSTANT(1) << VHU_F_PROTOCOL_FEATURES;
    memcpy(msg.payload, &v, 8);
  }
  if ((r->fault == FAULT_ADD_MEM_REG && msg.hdr.request == VHU_ADD_MEM_REG)
      || (r->fault == FAULT_NO_RESUBMIT && msg.hdr.request == VHU_SET_INFLIGHT_FD)) {
    v = 0;
    ok = !(msg.hdr.flags & VHU_FLAG_NEED_REPLY)
         || vhu_msg_write(fe, msg.hdr.request, VHU_REPLY_FLAGS, &v, 8, NULL, 0, NULL);
    vhu_msg_close_fds(&msg);
    return ok;
  }
  ok = vhu_msg_write(be, msg.hdr.request, msg.hdr.flags, msg.payload, msg.hdr.size, msg.fds,
                     msg.n_fds, NULL);
  vhu_msg_close_fds(&msg);
  return ok;
}

/* Backend to frontend. */
static gboolean
relay_reply(Relay *r, int be, int fe)
{
  VhuMsg msg;
  guint32 flags, size;
  gboolean ok;

  vhu_msg_init(&msg);
  if (vhu_msg_read(be, &msg, 1000, NULL) != VHU_MSG_OK)
    return FALSE;
  flags = msg.hdr.flags;
  size = msg.hdr.size;
  if (r->fault == FAULT_REPLY_FLAGS && msg.hdr.request == VHU_SET_VRING_NUM)
    flags = VHU_FLAG_REPLY;
  if (r->fault == FAULT_NO_ACK && !has_own_reply(msg.hdr.request)
      && msg.hdr.request >= VHU_SET_VRING_NUM && msg.hdr.request <= VHU_SET_VRING_BASE) {
    vhu_msg_close_fds(&msg);
    return TRUE;
  }
  if (r->fault == FAULT_VRING_BASE && msg.hdr.request == VHU_GET_VRING_BASE && size == 8)
    ((VhuVringState *)msg.payload)->num++;
  if (r->fault == FAULT_CONFIG_SIZE && msg.hdr.request == VHU_GET_CONFIG && size >= 4)
    size -= 4;
  if (r->fault == FAULT_STATUS && msg.hdr.request == VHU_GET_STATUS && size == 8)
    memset(msg.payload, 0, 8);
  if (r->fault == FAULT_INFLIGHT && msg.hdr.request == VHU_GET_INFLIGHT_FD
      && size >= sizeof(VhuInflightMsg))
    ((VhuInflightMsg *)msg.payload)->mmap_size = 16;
  ok = vhu_msg_write(fe, msg.hdr.request, flags, msg.payload, size, msg.fds, msg.n_fds, NULL);
  vhu_msg_close_fds(&msg);
  return ok;
}

static int
connect_inner(const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

  g_strlcpy(addr.sun_path, path, sizeof addr.sun_path);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void
relay_connection(Relay *r, int fe)
{
  int be = connect_inner(r->inner_path);

  r->started = FALSE;
  if (be < 0 || r->poisoned) {
    if (be >= 0)
      close(be);
    return;
  }
  for (;;) {
    struct pollfd p[2] = { { fe, POLLIN, 0 }, { be, POLLIN, 0 } };

    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if ((p[0].revents && !relay_request(r, fe, be)) || (p[1].revents && !relay_reply(r, be, fe)))
      break;
  }
  close(be);
  r->poisoned = r->fault == FAULT_RECONNECT && r->started;
}

static gpointer
relay_thread(gpointer data)
{
  Relay *r = data;

  for (;;) {
    int fe = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC);

    if (fe < 0) {
      if (errno == EINTR)
        continue;
      return NULL;
    }
    relay_connection(r, fe);
    close(fe);
  }
}

/* Listens on @path for the relay; the backend itself serves @path.inner. */
static gboolean
relay_start(Relay *r, const char *path, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };

  r->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  g_strlcpy(addr.sun_path, path, sizeof addr.sun_path);
  unlink(path);
  if (r->listen_fd < 0 || bind(r->listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0
      || listen(r->listen_fd, 8) < 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "relay on %s: %s", path,
                g_strerror(errno));
    return FALSE;
  }
  g_thread_unref(g_thread_new("fault-relay", relay_thread, r));
  return TRUE;
}

static Fault
fault_lookup(const char *name)
{
  for (guint i = 0; i < G_N_ELEMENTS(fault_names); i++)
    if (g_strcmp0(name, fault_names[i]) == 0)
      return (Fault)i;
  return (Fault)-1;
}

int
main(int argc, char **argv)
{
  g_autofree char *socket_path = NULL, *fault_name = NULL;
  Relay relay = { 0 };
  int fd = -1, queues = 2, hold_queue = -1;
  gboolean once = FALSE;
  GOptionEntry entries[] = {
    { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &socket_path, "Listen on PATH", "PATH" },
    { "fd", 'f', 0, G_OPTION_ARG_INT, &fd, "Serve the connected socket N", "N" },
    { "queues", 'q', 0, G_OPTION_ARG_INT, &queues, "Number of queues (default 2)", "N" },
    { "hold-queue", 0, 0, G_OPTION_ARG_INT, &hold_queue, "Never complete requests of queue Q",
      "Q" },
    { "once", 0, 0, G_OPTION_ARG_NONE, &once, "Exit after the first frontend left", NULL },
    { "fault", 0, 0, G_OPTION_ARG_STRING, &fault_name,
      "Break one protocol rule (reply-flags, no-ack, no-pf-enable, add-mem-reg, vring-base, "
      "event-idx, config-size, status, inflight, no-resubmit, reconnect, crash); needs "
      "--socket-path",
      "NAME" },
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

  relay.fault = fault_lookup(fault_name != NULL ? fault_name : "none");
  if ((int)relay.fault < 0 || (relay.fault != FAULT_NONE && socket_path == NULL)) {
    g_printerr("vhu-null-backend: unknown --fault, or --fault without --socket-path\n");
    return 2;
  }
  if (relay.fault != FAULT_NONE) {
    if (g_snprintf(relay.inner_path, sizeof relay.inner_path, "%s.inner", socket_path)
        >= (int)sizeof relay.inner_path) {
      g_printerr("vhu-null-backend: socket path too long for --fault\n");
      return 2;
    }
    /* The backend serves PATH.inner; the relay listens on PATH once it does. */
    g_free(socket_path);
    socket_path = g_strdup(relay.inner_path);
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
  if (relay.fault != FAULT_NONE) {
    g_autofree char *outer = g_strndup(socket_path, strlen(socket_path) - strlen(".inner"));

    if (!relay_start(&relay, outer, &error)) {
      g_printerr("vhu-null-backend: %s\n", error->message);
      vhu_backend_free(dev.backend);
      return 1;
    }
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
