/* vhu-backend.c: the device side of vhost-user.
 *
 * Threading model
 * - Control thread: whoever iterates the GMainContext given to
 *   vhu_backend_new.  The listening socket, the connection and every
 *   vhost-user message are handled there, one message per dispatch.  A message
 *   that stalls half-way is abandoned after MSG_TIMEOUT_MS and the connection
 *   dropped, so the control context never hangs on a peer.
 * - Queue thread: owned by the backend, runs its own GMainContext through a
 *   loop of ours (queue_loop_iterate) that polls the started rings' kick
 *   eventfds beside the context's own fds.  A guest kick is handled in that
 *   loop without a pass through GLib (prepare, query, check, dispatch cost
 *   about as much as the wake-up itself): one poll, one read of the kick
 *   eventfd, the ring's work and (when the guest wants one) one write of the
 *   call eventfd.  A ring started without a kick fd is polled every
 *   POLL_INTERVAL_MS.  The idle sources vhu_backend_kick schedules and any
 *   source a device attaches run through the context as usual; all call
 *   iface->queue_kick with no lock held.
 * - Locks: each VhuVring has its own, taken inside its functions.  Rings are
 *   started, stopped and reconfigured on the control thread only, so a check
 *   made there (is the ring started?) stays true until that thread changes
 *   it.  watch_lock guards the queues' kick sources, req_lock the backend
 *   channel.  No lock is held across a call into the device or a write that
 *   could wait: a device, a consumer or a frontend fd can stall nothing but
 *   its own work.  The memory table pointer is the control thread's; the
 *   rings and popped requests hold their own references.
 *
 * Ownership
 * - Kick fds belong to the queue's watch.  A watch is destroyed on the
 *   control thread, but its fd is closed by an idle source on the queue
 *   context: that idle is dispatched only after the queue thread rebuilt its
 *   poll set without the fd, so the fd number cannot be reused while it is
 *   still polled.
 * - Call and error fds are owned by the VhuVring (vhu_vring_set_call_fd).
 * - The memory table is reference counted; a popped VhuElem keeps the
 *   mappings its iovecs point into alive.
 * - The inflight buffer is mmapped here and handed to the rings as regions;
 *   it is unmapped only after every ring was reset.
 * - Every fd that arrives with a message and is not kept is closed when the
 *   message has been handled, whatever the outcome.
 *
 * Connections: one frontend at a time.  While one is connected the listening
 * socket is not watched, so further frontends wait in the kernel backlog and
 * are accepted once the current one left.  After a disconnect all rings are
 * stopped, iface->reset runs, the memory table, features and status are
 * dropped and the next frontend is served, unless single_client (or an
 * inherited fd) says to stop. */
#include "vhu-backend-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "vhu-mem.h"

#define LISTEN_BACKLOG 8

static void disconnect(VhuBackend *b);
static void start_listen_watch(VhuBackend *b);

/* ------------------------------------------------------------------ */
/* Ring and session state (control thread) */

/* Starts a stopped ring: the device learns of it before the first pop. */
gboolean
vhu_backend_start_queue(VhuBackend *b, guint qidx, GError **error)
{
  VhuVring *vring = b->queues[qidx].vring;

  if (b->mem == NULL) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "no memory table yet");
    return FALSE;
  }
  if (!vhu_vring_set_mem(vring, b->mem, error)) {
    g_prefix_error(error, "ring address not mapped: ");
    return FALSE;
  }
  vhu_vring_hold_pops(vring, TRUE);
  if (!vhu_vring_start(vring, error)) {
    vhu_vring_hold_pops(vring, FALSE);
    return FALSE;
  }
  if (b->iface.queue_started != NULL)
    b->iface.queue_started(b->dev, qidx, TRUE);
  vhu_vring_hold_pops(vring, FALSE);
  return TRUE;
}

/* Stops @qidx: no more pops, the device completes what it holds (still
 * landing in the used ring, so GET_VRING_BASE counts it), then the stop. */
void
vhu_backend_stop_queue(VhuBackend *b, guint qidx)
{
  VhuQueue *q = &b->queues[qidx];

  vhu_backend_drop_kick_watch(b, q);
  if (!vhu_vring_is_started(q->vring))
    return;
  vhu_vring_hold_pops(q->vring, TRUE);
  if (b->iface.queue_started != NULL)
    b->iface.queue_started(b->dev, qidx, FALSE);
  vhu_vring_stop(q->vring);
}

static void
unmap_inflight(VhuBackend *b)
{
  if (b->inflight_base != NULL)
    munmap(b->inflight_base, b->inflight_size);
  b->inflight_base = NULL;
  b->inflight_size = 0;
}

/* Rings forget their inflight regions before the buffer goes away. */
void
vhu_backend_drop_inflight(VhuBackend *b)
{
  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_set_inflight(b->queues[i].vring, NULL, 0, NULL);
  unmap_inflight(b);
}

/* Stops every ring, resets the device, then forgets the rings' setup, the
 * negotiated virtio features and the status. */
void
vhu_backend_reset_device(VhuBackend *b)
{
  for (guint i = 0; i < b->num_queues; i++)
    vhu_backend_stop_queue(b, i);

  if (b->iface.reset != NULL)
    b->iface.reset(b->dev);

  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_reset(b->queues[i].vring);
  unmap_inflight(b);
  __atomic_store_n(&b->features, 0, __ATOMIC_RELAXED);
  g_atomic_int_set(&b->status, 0);
}

/* Installs @mem (taking it) in the rings, unless a started ring would no
 * longer be mapped: then the current table stays and @mem is dropped.
 * Stopped rings may hold stale addresses until the next SET_VRING_ADDR. */
gboolean
vhu_backend_set_mem(VhuBackend *b, VhuMemTable *mem, GError **error)
{
  for (guint i = 0; i < b->num_queues; i++) {
    g_autoptr(GError) local = NULL;

    if (!vhu_vring_check_mem(b->queues[i].vring, mem, &local)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "queue %u is started and would no longer be mapped: %s", i, local->message);
      vhu_mem_table_unref(mem);
      return FALSE;
    }
  }
  g_clear_pointer(&b->mem, vhu_mem_table_unref);
  b->mem = mem;
  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_set_mem(b->queues[i].vring, mem, NULL);
  return TRUE;
}

/* ------------------------------------------------------------------ */
/* Connection lifecycle (control thread) */

static gboolean
on_conn_readable(int fd, GIOCondition cond, gpointer data)
{
  VhuBackend *b = data;
  g_autoptr(GError) error = NULL;
  VhuMsg *msg = g_new(VhuMsg, 1);
  VhuMsgStatus st = vhu_msg_read(fd, msg, MSG_TIMEOUT_MS, &error);
  gboolean keep = FALSE;

  if (st == VHU_MSG_OK)
    keep = vhu_backend_handle_message(b, msg);
  else if (st == VHU_MSG_ERROR && msg->hdr.request != 0)
    g_warning("%s: %s (%" G_GUINT32_FORMAT ") rejected: %s; dropping the connection", b->iface.name,
              vhu_request_name(msg->hdr.request), msg->hdr.request, error->message);
  else if (st == VHU_MSG_ERROR)
    g_warning("%s: bad message header from the frontend: %s; dropping the connection",
              b->iface.name, error->message);
  g_free(msg);
  if (keep)
    return G_SOURCE_CONTINUE;
  disconnect(b);
  return G_SOURCE_REMOVE;
}

static void
attach_connection(VhuBackend *b, int fd)
{
  b->conn_fd = fd;
  b->conn_source = g_unix_fd_source_new(fd, G_IO_IN);
  g_source_set_callback(b->conn_source, G_SOURCE_FUNC(on_conn_readable), b, NULL);
  g_source_attach(b->conn_source, b->context);
}

static void
close_listener(VhuBackend *b)
{
  if (b->listen_source != NULL) {
    g_source_destroy(b->listen_source);
    g_clear_pointer(&b->listen_source, g_source_unref);
  }
  if (b->listen_fd >= 0)
    close(b->listen_fd);
  b->listen_fd = -1;
}

/* Tears the session down; with @notify, tells the owner and decides
 * whether to serve the next frontend. */
static void
drop_connection(VhuBackend *b, gboolean notify)
{
  if (b->conn_source != NULL) {
    g_source_destroy(b->conn_source);
    g_clear_pointer(&b->conn_source, g_source_unref);
  }
  if (b->conn_fd >= 0)
    close(b->conn_fd);
  b->conn_fd = -1;

  vhu_backend_reset_device(b);

  g_clear_pointer(&b->mem, vhu_mem_table_unref);
  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_set_mem(b->queues[i].vring, NULL, NULL);
  b->protocol_features = 0;
  g_mutex_lock(&b->req_lock);
  if (b->backend_req_fd >= 0)
    close(b->backend_req_fd);
  b->backend_req_fd = -1;
  b->backend_req_ok = FALSE;
  g_mutex_unlock(&b->req_lock);

  if (!notify)
    return;
  if (b->single_client) {
    b->serving = FALSE;
    close_listener(b);
  } else if (b->listen_fd >= 0)
    start_listen_watch(b);
  if (b->disconnect_func != NULL)
    b->disconnect_func(b->disconnect_data);
}

static void
disconnect(VhuBackend *b)
{
  g_message("%s: frontend disconnected", b->iface.name);
  drop_connection(b, TRUE);
}

static gboolean
on_listen_readable(int fd, GIOCondition cond, gpointer data)
{
  VhuBackend *b = data;
  int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

  if (conn < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
      g_warning("%s: accept: %s", b->iface.name, g_strerror(errno));
    return G_SOURCE_CONTINUE;
  }
  g_message("%s: frontend connected", b->iface.name);
  /* One frontend at a time: later ones wait in the backlog. */
  g_clear_pointer(&b->listen_source, g_source_unref);
  attach_connection(b, conn);
  return G_SOURCE_REMOVE;
}

static void
start_listen_watch(VhuBackend *b)
{
  b->listen_source = g_unix_fd_source_new(b->listen_fd, G_IO_IN);
  g_source_set_callback(b->listen_source, G_SOURCE_FUNC(on_listen_readable), b, NULL);
  g_source_attach(b->listen_source, b->context);
}

/* ------------------------------------------------------------------ */
/* Public API */

static VhuBackend *
backend_new(const VhuDeviceIface *iface, gpointer dev, GMainContext *context,
            const VhuBackendOptions *options, gboolean queue_thread)
{
  VhuBackend *b;

  g_return_val_if_fail(iface != NULL, NULL);
  g_return_val_if_fail(iface->num_queues >= 1 && iface->num_queues <= VHU_VRING_IDX_MASK + 1, NULL);
  g_return_val_if_fail(iface->config_size <= VHU_MAX_CONFIG_SIZE, NULL);
  g_return_val_if_fail(iface->max_queue_size <= VHU_MAX_QUEUE_SIZE, NULL);

  b = g_new0(VhuBackend, 1);
  b->iface = *iface;
  if (b->iface.name == NULL)
    b->iface.name = "vhost-user";
  b->dev = dev;
  b->context = context != NULL ? g_main_context_ref(context) : g_main_context_ref_thread_default();
  if (options != NULL)
    b->options = *options;
  if (b->options.socket_mode == 0)
    b->options.socket_mode = 0600;
  b->single_client = b->options.single_client;
  g_mutex_init(&b->watch_lock);
  g_mutex_init(&b->req_lock);
  b->listen_fd = -1;
  b->conn_fd = -1;
  b->backend_req_fd = -1;
  b->serving = TRUE;

  b->offered_features = iface->features | G_GUINT64_CONSTANT(1) << VHU_F_VERSION_1
                        | G_GUINT64_CONSTANT(1) << VHU_F_RING_INDIRECT_DESC
                        | G_GUINT64_CONSTANT(1) << VHU_F_RING_EVENT_IDX
                        | G_GUINT64_CONSTANT(1) << VHU_F_PROTOCOL_FEATURES;
  b->offered_protocol = 1u << VHU_PF_MQ | 1u << VHU_PF_REPLY_ACK | 1u << VHU_PF_BACKEND_REQ
                        | 1u << VHU_PF_CONFIGURE_MEM_SLOTS | 1u << VHU_PF_RESET_DEVICE
                        | 1u << VHU_PF_STATUS | 1u << VHU_PF_INFLIGHT_SHMFD;
  if (iface->config_size > 0 || iface->get_config != NULL)
    b->offered_protocol |= 1u << VHU_PF_CONFIG;

  b->num_queues = iface->num_queues;
  b->max_queue_size = iface->max_queue_size ? iface->max_queue_size : VHU_MAX_QUEUE_SIZE;
  b->queues = g_new0(VhuQueue, b->num_queues);
  for (guint i = 0; i < b->num_queues; i++) {
    b->queues[i].ref = (QueueRef){ b, i };
    b->queues[i].vring = vhu_vring_new(i);
    vhu_vring_set_broken_func(b->queues[i].vring, vhu_backend_ring_broken, b);
    b->queues[i].kick_fd = -1;
  }

  b->qctx = g_main_context_new();
  if (queue_thread)
    b->qthread = g_thread_new("vhu-queue", vhu_backend_queue_thread, b);
  return b;
}

VhuBackend *
vhu_backend_new(const VhuDeviceIface *iface, gpointer dev, GMainContext *context,
                const VhuBackendOptions *options)
{
  return backend_new(iface, dev, context, options, TRUE);
}

VhuBackend *
vhu_backend_new_manual(const VhuDeviceIface *iface, gpointer dev, GMainContext *context,
                       const VhuBackendOptions *options)
{
  return backend_new(iface, dev, context, options, FALSE);
}

void
vhu_backend_free(VhuBackend *b)
{
  struct stat st;

  if (b == NULL)
    return;
  if (b->conn_fd >= 0)
    drop_connection(b, FALSE);
  close_listener(b);
  /* Remove the socket file only if it is still the one we created. */
  if (b->socket_path != NULL && lstat(b->socket_path, &st) == 0 && S_ISSOCK(st.st_mode)
      && st.st_dev == b->socket_dev && st.st_ino == b->socket_ino)
    unlink(b->socket_path);
  g_free(b->socket_path);

  if (b->qthread != NULL) {
    g_atomic_int_set(&b->quit, 1);
    g_main_context_wakeup(b->qctx);
    g_thread_join(b->qthread);
  }
  /* Destroys pending idles: deferred closes run their notify here. */
  g_main_context_unref(b->qctx);

  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_free(b->queues[i].vring);
  g_free(b->queues);
  g_mutex_clear(&b->watch_lock);
  g_mutex_clear(&b->req_lock);
  g_main_context_unref(b->context);
  g_free(b);
}

/* Creates, binds and listens; returns the fd or -1 with @error set (and no
 * socket file left behind). */
static int
bind_listen(const struct sockaddr_un *addr, guint mode, GError **error)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  gboolean bound = FALSE;
  int errsv;

  if (fd < 0)
    goto fail;
  /* Linux creates the socket file with the socket inode's mode (minus the
   * umask), so restrict it before bind: no window with a wider mode. */
  if (fchmod(fd, mode) < 0 || bind(fd, (const struct sockaddr *)addr, sizeof *addr) < 0)
    goto fail;
  bound = TRUE;
  if (chmod(addr->sun_path, mode) < 0 || listen(fd, LISTEN_BACKLOG) < 0)
    goto fail;
  return fd;

fail:
  errsv = errno;
  g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "cannot listen on %s: %s",
              addr->sun_path, g_strerror(errsv));
  if (bound)
    unlink(addr->sun_path);
  if (fd >= 0)
    close(fd);
  return -1;
}

gboolean
vhu_backend_listen(VhuBackend *b, const char *path, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct stat st;
  int fd;

  g_return_val_if_fail(b != NULL && path != NULL, FALSE);
  if (b->listen_fd >= 0 || b->conn_fd >= 0 || !b->serving) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_BUSY, "backend already in use");
    return FALSE;
  }
  if (strlen(path) >= sizeof addr.sun_path) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FILENAME_TOO_LONG, "socket path too long: %s", path);
    return FALSE;
  }
  strcpy(addr.sun_path, path);

  /* A stale socket is replaced; anything else is not ours to remove. */
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                  "%s exists and is not a socket; not replacing it", path);
      return FALSE;
    }
    unlink(path);
  }
  fd = bind_listen(&addr, b->options.socket_mode, error);
  if (fd < 0)
    return FALSE;
  if (lstat(path, &st) == 0) {
    b->socket_dev = st.st_dev;
    b->socket_ino = st.st_ino;
  }
  b->listen_fd = fd;
  b->socket_path = g_strdup(path);
  start_listen_watch(b);
  return TRUE;
}

gboolean
vhu_backend_serve_fd(VhuBackend *b, int fd, GError **error)
{
  int type = 0;
  socklen_t len = sizeof type;

  g_return_val_if_fail(b != NULL, FALSE);
  if (b->listen_fd >= 0 || b->conn_fd >= 0 || !b->serving) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_BUSY, "backend already in use");
    close(fd);
    return FALSE;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "fd %d is not a stream socket", fd);
    close(fd);
    return FALSE;
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  b->single_client = TRUE;
  attach_connection(b, fd);
  return TRUE;
}

gboolean
vhu_backend_is_serving(VhuBackend *b)
{
  return b->serving;
}

void
vhu_backend_set_disconnect_func(VhuBackend *b, void (*func)(gpointer data), gpointer data)
{
  b->disconnect_func = func;
  b->disconnect_data = data;
}

VhuVring *
vhu_backend_get_vring(VhuBackend *b, guint qidx)
{
  g_return_val_if_fail(qidx < b->num_queues, NULL);
  return b->queues[qidx].vring;
}

guint64
vhu_backend_get_features(VhuBackend *b)
{
  return __atomic_load_n(&b->features, __ATOMIC_RELAXED);
}

void
vhu_backend_set_needs_reset(VhuBackend *b, const char *why)
{
  if (g_atomic_int_or(&b->status, VHU_STATUS_NEEDS_RESET) & VHU_STATUS_NEEDS_RESET)
    return;
  g_warning("%s: device needs reset: %s", b->iface.name, why != NULL ? why : "device error");
  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_signal_error(b->queues[i].vring);
  vhu_backend_notify_config_change(b);
}

guint8
vhu_backend_get_status(VhuBackend *b)
{
  return (guint8)g_atomic_int_get(&b->status);
}

GMainContext *
vhu_backend_get_queue_context(VhuBackend *b)
{
  return b->qctx;
}

void
vhu_backend_kick(VhuBackend *b, guint qidx)
{
  g_return_if_fail(qidx < b->num_queues);
  vhu_backend_schedule_kick(b, qidx);
}
