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
#include "vhu-backend-private.h"

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
#include "vhu-vring-private.h"

#define MSG_TIMEOUT_MS   1000
#define LISTEN_BACKLOG   8
#define POLL_INTERVAL_MS 1

/* What a queue's sources get as data: lives as long as the backend. */
typedef struct {
  VhuBackend *backend;
  guint qidx;
} QueueRef;

typedef struct {
  QueueRef ref;
  VhuVring *vring;
  /* watch_lock: */
  int kick_fd;       /* polled by the queue thread's loop; closed on that thread */
  gboolean polled;   /* started without a kick fd: the loop polls the ring */
  gint kick_pending; /* atomic: a scheduled queue_kick is queued */
} VhuQueue;

struct _VhuBackend {
  VhuDeviceIface iface;
  gpointer dev;
  GMainContext *context;
  VhuBackendOptions options;
  GMutex watch_lock; /* the queues' kick sources; never held across a call out */
  GMutex req_lock;   /* backend_req_fd and writes to it */

  /* Control thread only. */
  int listen_fd;
  GSource *listen_source;
  char *socket_path;
  dev_t socket_dev;
  ino_t socket_ino;
  int conn_fd;
  GSource *conn_source;
  gboolean serving;
  gboolean single_client;
  void (*disconnect_func)(gpointer data);
  gpointer disconnect_data;
  guint64 offered_features;
  guint64 offered_protocol;
  guint64 protocol_features;
  int backend_req_fd;      /* req_lock; written on the control thread only */
  gboolean backend_req_ok; /* req_lock: BACKEND_REQ negotiated, channel usable */

  guint64 features; /* atomic: negotiated virtio features */
  /* Control thread only (rings hold their own references). */
  VhuMemTable *mem;
  guint8 *inflight_base;
  gsize inflight_size;
  guint num_queues;
  guint max_queue_size;
  VhuQueue *queues;

  gint status; /* atomic: virtio status byte, NEEDS_RESET included */

  GMainContext *qctx;
  GThread *qthread;
  gint quit; /* atomic: the queue thread's loop ends */
};

typedef enum {
  H_OK,        /* ack 0 when asked */
  H_REPLIED,   /* the request's own reply was sent */
  H_REFUSED,   /* ack 1 when asked, otherwise just logged */
  H_MALFORMED, /* ack 1 when asked, otherwise the connection is dropped */
  H_CLOSE,     /* drop the connection */
} HResult;

static void disconnect(VhuBackend *b);
static void start_listen_watch(VhuBackend *b);

/* ------------------------------------------------------------------ */
/* Queue thread side */

/* Tells the frontend that the device status changed (NEEDS_RESET), over the
 * backend channel when BACKEND_REQ was negotiated (virtio 1.3 \u00a72.1.2 asks
 * for a configuration change notification).  Any thread.  One non-blocking
 * send without NEED_REPLY: a frontend that does not read its channel loses
 * the notification, it never stalls the caller. */
static void
notify_config_change(VhuBackend *b)
{
  VhuMsgHeader hdr = { .request = VHU_BACKEND_CONFIG_CHANGE_MSG, .flags = VHU_VERSION };
  ssize_t w;

  g_mutex_lock(&b->req_lock);
  if (b->backend_req_ok && b->backend_req_fd >= 0) {
    do
      w = send(b->backend_req_fd, &hdr, sizeof hdr, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof hdr) {
      /* A short write would desynchronise the channel: stop using it. */
      g_warning("%s: backend channel %s; configuration change not sent", b->iface.name,
                w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? "full" : "unusable");
      b->backend_req_ok = w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
  }
  g_mutex_unlock(&b->req_lock);
}

/* A pop or push broke a ring (guest corruption, or its memory vanished):
 * one log line, NEEDS_RESET, the ring's error eventfd, the frontend told.
 * Runs on the thread that used the ring, without any lock. */
static void
on_ring_broken(gpointer data, VhuVring *vring, const char *reason)
{
  VhuBackend *b = data;

  /* Status first: whoever sees the line can read NEEDS_RESET already. */
  g_atomic_int_or(&b->status, VHU_STATUS_NEEDS_RESET);
  g_warning("%s: queue %u broken: %s; device needs reset", b->iface.name, vhu_vring_index(vring),
            reason);
  vhu_vring_signal_error(vring);
  notify_config_change(b);
}

static void
run_queue(VhuBackend *b, guint qidx)
{
  VhuVring *vring = b->queues[qidx].vring;

  if (!vhu_vring_is_started(vring) || vhu_vring_is_broken(vring))
    return;
  if (b->iface.queue_kick != NULL)
    b->iface.queue_kick(b->dev, b, qidx);
}

static gboolean
on_kick_idle(gpointer data)
{
  QueueRef *r = data;
  VhuBackend *b = r->backend;

  g_atomic_int_set(&b->queues[r->qidx].kick_pending, 0);
  run_queue(b, r->qidx);
  return G_SOURCE_REMOVE;
}

static void
schedule_kick(VhuBackend *b, guint qidx)
{
  GSource *s;

  if (!g_atomic_int_compare_and_exchange(&b->queues[qidx].kick_pending, 0, 1))
    return;
  s = g_idle_source_new();
  g_source_set_priority(s, G_PRIORITY_DEFAULT);
  g_source_set_callback(s, on_kick_idle, &b->queues[qidx].ref, NULL);
  g_source_attach(s, b->qctx);
  g_source_unref(s);
}

static gboolean
close_fd_idle(gpointer data)
{
  return G_SOURCE_REMOVE;
}

static void
close_fd_notify(gpointer data)
{
  close(GPOINTER_TO_INT(data));
}

/* Closes @fd on the queue thread (or when its context goes away). */
static void
close_on_queue_thread(VhuBackend *b, int fd)
{
  GSource *s = g_idle_source_new();

  g_source_set_priority(s, G_PRIORITY_HIGH);
  g_source_set_callback(s, close_fd_idle, GINT_TO_POINTER(fd), close_fd_notify);
  g_source_attach(s, b->qctx);
  g_source_unref(s);
}

/* Stops watching @q's kick fd (any thread but the queue thread inside its
 * poll): the number is closed on the queue thread, after its loop rebuilt
 * the poll set without it, so it cannot be reused while still polled. */
static void
drop_kick_watch(VhuBackend *b, VhuQueue *q)
{
  g_mutex_lock(&b->watch_lock);
  if (q->kick_fd >= 0)
    close_on_queue_thread(b, q->kick_fd);
  q->kick_fd = -1;
  q->polled = FALSE;
  g_mutex_unlock(&b->watch_lock);
}

/* Watches @fd (or, when -1, polls the ring: SET_VRING_KICK's no-fd flag
 * asks for that) from the queue thread's loop, which is woken to see it. */
static void
add_kick_watch(VhuBackend *b, guint qidx, int fd)
{
  VhuQueue *q = &b->queues[qidx];

  g_mutex_lock(&b->watch_lock);
  q->kick_fd = fd;
  q->polled = fd < 0;
  g_mutex_unlock(&b->watch_lock);
  g_main_context_wakeup(b->qctx);
}

/* Empties the eventfd.  FALSE when the fd is unusable (EOF, error, hangup). */
static gboolean
drain_kick(int fd, gushort revents)
{
  guint64 count;
  ssize_t r;

  if (!(revents & G_IO_IN))
    return FALSE;
  do
    r = read(fd, &count, sizeof count);
  while (r < 0 && errno == EINTR);
  if (r == (ssize_t)sizeof count)
    return TRUE;
  return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* The queue thread's view of the kick fds: the first n entries of its poll
 * set, rebuilt whenever its GLib context is woken (a watch added or
 * dropped wakes it). */
typedef struct {
  GPollFD *fds; /* kick fds, then the context's */
  guint *qidx;  /* queue of each kick fd */
  guint n_kicks, n_fds, alloc;
  gboolean any_polled;
} QueueLoop;

static void
collect_kicks(VhuBackend *b, QueueLoop *l)
{
  l->n_kicks = 0;
  l->any_polled = FALSE;
  g_mutex_lock(&b->watch_lock);
  for (guint i = 0; i < b->num_queues; i++) {
    VhuQueue *q = &b->queues[i];

    l->any_polled |= q->polled;
    if (q->kick_fd < 0)
      continue;
    l->fds[l->n_kicks] = (GPollFD){ .fd = q->kick_fd, .events = G_IO_IN };
    l->qidx[l->n_kicks++] = i;
  }
  g_mutex_unlock(&b->watch_lock);
}

/* Queue thread.  A kick fd that is unusable is no longer watched. */
static void
forget_kick_fd(VhuBackend *b, guint qidx, int fd)
{
  VhuQueue *q = &b->queues[qidx];

  g_mutex_lock(&b->watch_lock);
  if (q->kick_fd == fd) {
    g_warning("%s: queue %u: kick fd hung up or unreadable; no longer watched", b->iface.name,
              qidx);
    close(fd);
    q->kick_fd = -1;
  }
  g_mutex_unlock(&b->watch_lock);
}

/* Runs the rings whose kick fd fired; TRUE if any did. */
static gboolean
run_kicks(VhuBackend *b, QueueLoop *l)
{
  gboolean any = FALSE;

  for (guint i = 0; i < l->n_kicks; i++) {
    GPollFD *f = &l->fds[i];

    if (f->revents == 0)
      continue;
    any = TRUE;
    if (!drain_kick(f->fd, f->revents)) {
      forget_kick_fd(b, l->qidx[i], f->fd);
      f->fd = -1; /* poll ignores it until the set is rebuilt */
      continue;
    }
    run_queue(b, l->qidx[i]);
  }
  return any;
}

static void
run_polled(VhuBackend *b)
{
  for (guint i = 0; i < b->num_queues; i++) {
    gboolean polled;

    g_mutex_lock(&b->watch_lock);
    polled = b->queues[i].polled;
    g_mutex_unlock(&b->watch_lock);
    if (polled)
      run_queue(b, i);
  }
}

static gint
ms_until(gint64 deadline)
{
  gint64 left = deadline - g_get_monotonic_time();

  return left <= 0 ? 0 : (gint)MIN((left + 999) / 1000, G_MAXINT);
}

/* Polls the kick fds and the context's fds until something for the context
 * happens (one of its fds, its timeout); kicks alone are handled here, so a
 * guest kick costs a poll, a read and the ring's work, and no pass through
 * GLib's prepare/query/check/dispatch. */
static void
poll_until_context(VhuBackend *b, QueueLoop *l, gint timeout)
{
  gint64 deadline = timeout < 0 ? -1 : g_get_monotonic_time() + (gint64)timeout * 1000;
  gint64 next_poll = g_get_monotonic_time() + POLL_INTERVAL_MS * 1000;

  for (;;) {
    gint t = deadline < 0 ? -1 : ms_until(deadline);
    gboolean kicked;
    int r;

    if (l->any_polled)
      t = t < 0 ? ms_until(next_poll) : MIN(t, ms_until(next_poll));
    r = g_poll(l->fds, l->n_fds, t);
    if (r < 0 && errno != EINTR) {
      g_critical("%s: queue thread poll: %s", b->iface.name, g_strerror(errno));
      return;
    }
    if (r < 0)
      continue;
    kicked = run_kicks(b, l);
    if (l->any_polled && g_get_monotonic_time() >= next_poll) {
      run_polled(b);
      next_poll = g_get_monotonic_time() + POLL_INTERVAL_MS * 1000;
    }
    if (r > 0 && !kicked)
      return; /* a context fd */
    for (guint i = l->n_kicks; i < l->n_fds; i++)
      if (l->fds[i].revents != 0)
        return;
    if (deadline >= 0 && g_get_monotonic_time() >= deadline)
      return;
    for (guint i = 0; i < l->n_kicks; i++)
      l->fds[i].revents = 0;
  }
}

/* One pass of the queue context, as g_main_context_iteration would make,
 * with the kick fds polled beside its own. */
static void
queue_loop_iterate(VhuBackend *b, QueueLoop *l)
{
  gint max_priority, timeout, n;

  g_main_context_prepare(b->qctx, &max_priority);
  for (;;) {
    collect_kicks(b, l);
    n = g_main_context_query(b->qctx, max_priority, &timeout, l->fds + l->n_kicks,
                             (gint)(l->alloc - l->n_kicks));
    if ((guint)n + l->n_kicks <= l->alloc)
      break;
    l->alloc = (guint)n + b->num_queues;
    l->fds = g_renew(GPollFD, l->fds, l->alloc);
  }
  l->n_fds = l->n_kicks + (guint)n;
  for (guint i = 0; i < l->n_fds; i++)
    l->fds[i].revents = 0;
  poll_until_context(b, l, timeout);
  g_main_context_check(b->qctx, max_priority, l->fds + l->n_kicks, n);
  g_main_context_dispatch(b->qctx);
}

static gpointer
queue_thread_main(gpointer data)
{
  VhuBackend *b = data;
  QueueLoop l = { 0 };

  l.alloc = b->num_queues + 8;
  l.fds = g_new(GPollFD, l.alloc);
  l.qidx = g_new(guint, b->num_queues);
  g_main_context_acquire(b->qctx);
  g_main_context_push_thread_default(b->qctx);
  while (!g_atomic_int_get(&b->quit))
    queue_loop_iterate(b, &l);
  g_main_context_pop_thread_default(b->qctx);
  g_main_context_release(b->qctx);
  g_free(l.fds);
  g_free(l.qidx);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Ring and session state (control thread) */

/* Stops @qidx: no more pops, the device completes what it holds (still
 * landing in the used ring, so GET_VRING_BASE counts it), then the stop. */
static void
stop_queue(VhuBackend *b, guint qidx)
{
  VhuQueue *q = &b->queues[qidx];

  drop_kick_watch(b, q);
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
static void
drop_inflight(VhuBackend *b)
{
  for (guint i = 0; i < b->num_queues; i++)
    vhu_vring_set_inflight(b->queues[i].vring, NULL, 0, NULL);
  unmap_inflight(b);
}

/* Stops every ring, resets the device, then forgets the rings' setup, the
 * negotiated virtio features and the status. */
static void
reset_device(VhuBackend *b)
{
  for (guint i = 0; i < b->num_queues; i++)
    stop_queue(b, i);

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
static gboolean
set_mem(VhuBackend *b, VhuMemTable *mem, GError **error)
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
/* Message helpers */

static gboolean
send_reply(VhuBackend *b, guint32 request, const void *payload, gsize size, const int *fds,
           guint n_fds)
{
  g_autoptr(GError) error = NULL;

  if (!vhu_msg_write(b->conn_fd, request, VHU_REPLY_FLAGS, payload, size, fds, n_fds, &error)) {
    g_message("%s: cannot reply to %s: %s", b->iface.name, vhu_request_name(request),
              error->message);
    return FALSE;
  }
  return TRUE;
}

static HResult
reply_u64(VhuBackend *b, guint32 request, guint64 value)
{
  return send_reply(b, request, &value, sizeof value, NULL, 0) ? H_REPLIED : H_CLOSE;
}

static gboolean
check_size(const VhuMsg *msg, gsize size, GError **error)
{
  if (msg->hdr.size == size)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
              "payload is %" G_GUINT32_FORMAT " bytes, expected %" G_GSIZE_FORMAT, msg->hdr.size,
              size);
  return FALSE;
}

static gboolean
check_fds(const VhuMsg *msg, guint n, GError **error)
{
  if (msg->n_fds == n)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%u file descriptor%s, expected %u",
              msg->n_fds, msg->n_fds == 1 ? "" : "s", n);
  return FALSE;
}

static gboolean
check_plain(const VhuMsg *msg, gsize size, GError **error)
{
  return check_size(msg, size, error) && check_fds(msg, 0, error);
}

/* A getter: no payload, no fds, a u64 answer. */
static HResult
reply_plain_u64(VhuBackend *b, const VhuMsg *msg, guint64 value, GError **error)
{
  if (!check_plain(msg, 0, error))
    return H_MALFORMED;
  return reply_u64(b, msg->hdr.request, value);
}

static guint64
payload_u64(const VhuMsg *msg)
{
  guint64 v;

  memcpy(&v, msg->payload, sizeof v);
  return v;
}

static gboolean
check_queue(VhuBackend *b, guint32 index, GError **error)
{
  if (index < b->num_queues)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
              "queue index %" G_GUINT32_FORMAT " out of range (%u queues)", index, b->num_queues);
  return FALSE;
}

static gboolean
read_vring_state(VhuBackend *b, const VhuMsg *msg, VhuVringState *state, GError **error)
{
  if (!check_plain(msg, sizeof *state, error))
    return FALSE;
  memcpy(state, msg->payload, sizeof *state);
  return check_queue(b, state->index, error);
}

/* ------------------------------------------------------------------ */
/* Handlers */

static HResult
handle_set_features(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  /* Transport bits QEMU passes through from the guest without asking us
   * (vhost-user-gpu has no feature filter): tolerated, not negotiated. */
  const guint64 tolerated = G_GUINT64_CONSTANT(1) << VHU_F_ANY_LAYOUT
                            | G_GUINT64_CONSTANT(1) << VHU_F_NOTIFY_ON_EMPTY
                            | G_GUINT64_CONSTANT(1) << 40 /* RING_RESET */;
  guint64 value, unknown;

  if (!check_plain(msg, 8, error))
    return H_MALFORMED;
  value = payload_u64(msg);
  unknown = value & ~b->offered_features & ~tolerated;
  value &= b->offered_features;

  __atomic_store_n(&b->features, value, __ATOMIC_RELAXED);
  for (guint i = 0; i < b->num_queues; i++) {
    VhuVring *vring = b->queues[i].vring;

    vhu_vring_set_features(vring, value);
    /* Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings are
     * enabled from the start. */
    if (!(value & (G_GUINT64_CONSTANT(1) << VHU_F_PROTOCOL_FEATURES))
        && !vhu_vring_is_enabled(vring)) {
      vhu_vring_set_enabled(vring, TRUE);
      if (vhu_vring_is_started(vring))
        schedule_kick(b, i);
    }
  }
  if (b->iface.set_features != NULL)
    b->iface.set_features(b->dev, value);

  if (unknown != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                "features 0x%" G_GINT64_MODIFIER "x were not offered (ignored)", unknown);
    return H_REFUSED;
  }
  return H_OK;
}

static HResult
handle_set_protocol_features(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  guint64 value, unknown;

  if (!check_plain(msg, 8, error))
    return H_MALFORMED;
  value = payload_u64(msg);
  unknown = value & ~b->offered_protocol;
  b->protocol_features = value & b->offered_protocol;
  g_mutex_lock(&b->req_lock);
  b->backend_req_ok = (b->protocol_features & (G_GUINT64_CONSTANT(1) << VHU_PF_BACKEND_REQ)) != 0;
  g_mutex_unlock(&b->req_lock);
  if (unknown != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                "protocol features 0x%" G_GINT64_MODIFIER "x were not offered (ignored)", unknown);
    return H_REFUSED;
  }
  return H_OK;
}

static HResult
install_mem(VhuBackend *b, VhuMemTable *mem, GError **error)
{
  return set_mem(b, mem, error) ? H_OK : H_MALFORMED;
}

static HResult
handle_set_mem_table(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuMemTableDesc desc;
  g_autoptr(VhuMemTable) table = NULL;

  if (msg->hdr.size < 8) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload of %" G_GUINT32_FORMAT " bytes is shorter than the table header",
                msg->hdr.size);
    return H_MALFORMED;
  }
  memset(&desc, 0, sizeof desc);
  memcpy(&desc, msg->payload, MIN(msg->hdr.size, sizeof desc));
  if (desc.nregions > VHU_MAX_TABLE_REGIONS) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "%" G_GUINT32_FORMAT " regions, at most %u", desc.nregions, VHU_MAX_TABLE_REGIONS);
    return H_MALFORMED;
  }
  /* QEMU sends only the used entries; accept the full-size form too. */
  if (msg->hdr.size != 8 + desc.nregions * sizeof(VhuMemRegionDesc)
      && msg->hdr.size != sizeof desc) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload is %" G_GUINT32_FORMAT " bytes for %" G_GUINT32_FORMAT " regions",
                msg->hdr.size, desc.nregions);
    return H_MALFORMED;
  }
  if (!check_fds(msg, desc.nregions, error))
    return H_MALFORMED;

  table = vhu_mem_table_new();
  for (guint i = 0; i < desc.nregions; i++) {
    VhuMemTable *next
        = vhu_mem_table_add(table, &desc.regions[i], msg->fds[i], VHU_MAX_TABLE_REGIONS, error);

    if (next == NULL) {
      g_prefix_error(error, "region %u: ", i);
      return H_MALFORMED;
    }
    vhu_mem_table_unref(table);
    table = next;
  }
  return install_mem(b, g_steal_pointer(&table), error);
}

static HResult
handle_mem_reg(VhuBackend *b, const VhuMsg *msg, gboolean add, GError **error)
{
  VhuMemSingleRegion reg;
  g_autoptr(VhuMemTable) empty = NULL;
  VhuMemTable *current, *next;

  if (!check_size(msg, sizeof reg, error))
    return H_MALFORMED;
  /* REM_MEM_REG: old QEMU attached the region's fd; tolerate and close it. */
  if (add ? !check_fds(msg, 1, error) : msg->n_fds > 1) {
    if (!add)
      check_fds(msg, 1, error);
    return H_MALFORMED;
  }
  memcpy(&reg, msg->payload, sizeof reg);

  current = b->mem;
  if (current == NULL)
    current = empty = vhu_mem_table_new();
  if (add)
    next = vhu_mem_table_add(current, &reg.region, msg->fds[0], VHU_MAX_MEM_SLOTS, error);
  else
    next = vhu_mem_table_remove(current, &reg.region, error);
  if (next == NULL)
    return H_MALFORMED;
  return install_mem(b, next, error);
}

/* SET_VRING_NUM, SET_VRING_BASE: only a stopped ring may change. */
static HResult
set_stopped_vring(VhuBackend *b, const VhuVringState *st,
                  gboolean (*set)(VhuVring *vring, guint num, GError **error), GError **error)
{
  VhuVring *vring = b->queues[st->index].vring;
  gboolean ok = FALSE;

  /* Rings start and stop on this thread only: the check stays true. */
  if (vhu_vring_is_started(vring))
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY, "queue %u is started", st->index);
  else
    ok = set(vring, st->num, error);
  return ok ? H_OK : H_MALFORMED;
}

static HResult
handle_vring_num(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  if (st.num > b->max_queue_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "ring size %" G_GUINT32_FORMAT " above the maximum %u", st.num, b->max_queue_size);
    return H_MALFORMED;
  }
  return set_stopped_vring(b, &st, vhu_vring_set_num, error);
}

static HResult
handle_vring_base(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  return set_stopped_vring(b, &st, vhu_vring_set_base, error);
}

static HResult
handle_vring_addr(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringAddr addr;
  VhuVring *vring;
  gboolean ok;

  if (!check_plain(msg, sizeof addr, error))
    return H_MALFORMED;
  memcpy(&addr, msg->payload, sizeof addr);
  if (!check_queue(b, addr.index, error))
    return H_MALFORMED;
  vring = b->queues[addr.index].vring;
  ok = vhu_vring_set_addr(vring, &addr, error);
  /* Without a table yet the addresses are checked at start. */
  if (ok && b->mem != NULL && !vhu_vring_set_mem(vring, b->mem, error)) {
    g_prefix_error(error, "ring address not mapped: ");
    ok = FALSE;
  }
  return ok ? H_OK : H_MALFORMED;
}

static HResult
handle_get_vring_base(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  stop_queue(b, st.index);
  st.num = vhu_vring_get_base(b->queues[st.index].vring);
  return send_reply(b, msg->hdr.request, &st, sizeof st, NULL, 0) ? H_REPLIED : H_CLOSE;
}

/* SET_VRING_KICK/CALL/ERR: u64 with the index in bits 0-7 and bit 8 = no fd. */
static gboolean
read_vring_fd(VhuBackend *b, VhuMsg *msg, guint *qidx, int *fd, GError **error)
{
  guint64 v;
  gboolean nofd;

  if (!check_size(msg, 8, error))
    return FALSE;
  v = payload_u64(msg);
  nofd = (v & VHU_VRING_NOFD) != 0;
  if (v & ~(guint64)(VHU_VRING_IDX_MASK | VHU_VRING_NOFD)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "unknown bits in 0x%" G_GINT64_MODIFIER "x", v);
    return FALSE;
  }
  if (!check_fds(msg, nofd ? 0 : 1, error))
    return FALSE;
  *qidx = (guint)(v & VHU_VRING_IDX_MASK);
  if (!check_queue(b, *qidx, error))
    return FALSE;
  *fd = nofd ? -1 : vhu_msg_steal_fd(msg, 0);
  return TRUE;
}

/* Kick, call and error fds must be eventfds: a pipe or a socket as call fd
 * fills up (and raises SIGPIPE once its reader goes), a kick fd that is a
 * regular file or /dev/zero is readable for ever and would spin the queue
 * thread.  Refused when handed over; the fd is made non-blocking, so even an
 * eventfd whose counter saturates never blocks a write. */
static gboolean
check_eventfd(int fd, GError **error)
{
  char path[64], target[64];
  struct stat st;
  ssize_t n;

  g_snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  n = readlink(path, target, sizeof target - 1);
  if (n >= 0) {
    target[n] = '\0';
    if (strcmp(target, "anon_inode:[eventfd]") == 0)
      return g_unix_set_fd_nonblocking(fd, TRUE, error);
  } else if (fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == 0) {
    /* No /proc: an anonymous inode is the best that can be told. */
    return g_unix_set_fd_nonblocking(fd, TRUE, error);
  }
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "fd is not an eventfd (%s)",
              n >= 0 ? target : "unknown kind");
  return FALSE;
}

static gboolean
read_vring_eventfd(VhuBackend *b, VhuMsg *msg, guint *qidx, int *fd, GError **error)
{
  if (!read_vring_fd(b, msg, qidx, fd, error))
    return FALSE;
  if (*fd >= 0 && !check_eventfd(*fd, error)) {
    close(*fd);
    return FALSE;
  }
  return TRUE;
}

/* Starts a stopped ring: the device learns of it before the first pop. */
static gboolean
start_queue(VhuBackend *b, guint qidx, GError **error)
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

static HResult
handle_vring_kick(VhuBackend *b, VhuMsg *msg, GError **error)
{
  VhuQueue *q;
  guint qidx;
  int fd;

  if (!read_vring_eventfd(b, msg, &qidx, &fd, error))
    return H_MALFORMED;
  q = &b->queues[qidx];
  drop_kick_watch(b, q);
  if (!vhu_vring_is_started(q->vring) && !start_queue(b, qidx, error)) {
    if (fd >= 0)
      close(fd);
    return H_MALFORMED;
  }
  add_kick_watch(b, qidx, fd);
  /* Requests may be pending already (or resubmitted from inflight). */
  schedule_kick(b, qidx);
  return H_OK;
}

static HResult
handle_vring_call_err(VhuBackend *b, VhuMsg *msg, gboolean call, GError **error)
{
  guint qidx;
  int fd;

  if (!read_vring_eventfd(b, msg, &qidx, &fd, error))
    return H_MALFORMED;
  if (call)
    vhu_vring_set_call_fd(b->queues[qidx].vring, fd);
  else
    vhu_vring_set_err_fd(b->queues[qidx].vring, fd);
  return H_OK;
}

static HResult
handle_vring_enable(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;
  VhuVring *vring;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  if (st.num > 1) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "enable value %" G_GUINT32_FORMAT,
                st.num);
    return H_MALFORMED;
  }
  vring = b->queues[st.index].vring;
  vhu_vring_set_enabled(vring, st.num != 0);
  if (st.num != 0 && vhu_vring_is_started(vring))
    schedule_kick(b, st.index);
  return H_OK;
}

static HResult
handle_backend_req_fd(VhuBackend *b, VhuMsg *msg, GError **error)
{
  int type = 0;
  socklen_t len = sizeof type;

  if (!check_size(msg, 0, error) || !check_fds(msg, 1, error))
    return H_MALFORMED;
  if (getsockopt(msg->fds[0], SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "backend channel fd is not a stream socket");
    return H_MALFORMED;
  }
  g_mutex_lock(&b->req_lock);
  if (b->backend_req_fd >= 0)
    close(b->backend_req_fd);
  b->backend_req_fd = vhu_msg_steal_fd(msg, 0);
  g_mutex_unlock(&b->req_lock);
  return H_OK;
}

/* Parses a config payload and checks it against the device's config space. */
static gboolean
read_config(VhuBackend *b, const VhuMsg *msg, VhuConfigMsg *cfg, GError **error)
{
  guint32 end;

  if (msg->hdr.size < VHU_CONFIG_HDR_SIZE) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload of %" G_GUINT32_FORMAT " bytes is shorter than the %u-byte header",
                msg->hdr.size, (guint)VHU_CONFIG_HDR_SIZE);
    return FALSE;
  }
  memcpy(cfg, msg->payload, MIN(msg->hdr.size, sizeof *cfg));
  if (cfg->size == 0 || cfg->size > VHU_MAX_CONFIG_SIZE
      || msg->hdr.size != VHU_CONFIG_HDR_SIZE + cfg->size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "config size %" G_GUINT32_FORMAT " in a payload of %" G_GUINT32_FORMAT " bytes",
                cfg->size, msg->hdr.size);
    return FALSE;
  }
  if (!check_fds(msg, 0, error))
    return FALSE;
  if (!g_uint_checked_add(&end, cfg->offset, cfg->size) || end > b->iface.config_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "config range %" G_GUINT32_FORMAT "+%" G_GUINT32_FORMAT
                " outside the %" G_GSIZE_FORMAT "-byte config space",
                cfg->offset, cfg->size, b->iface.config_size);
    return FALSE;
  }
  return TRUE;
}

static HResult
handle_get_config(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuConfigMsg cfg;
  guint8 space[VHU_MAX_CONFIG_SIZE] = { 0 };

  if (!read_config(b, msg, &cfg, error)) {
    /* An empty reply is an error QEMU understands; the session survives. */
    g_warning("%s: GET_CONFIG (%u) rejected: %s; answered with an empty reply", b->iface.name,
              VHU_GET_CONFIG, (*error)->message);
    g_clear_error(error);
    return send_reply(b, msg->hdr.request, NULL, 0, NULL, 0) ? H_REPLIED : H_CLOSE;
  }
  if (b->iface.get_config != NULL)
    b->iface.get_config(b->dev, space, b->iface.config_size);
  memcpy(cfg.region, space + cfg.offset, cfg.size);
  return send_reply(b, msg->hdr.request, &cfg, VHU_CONFIG_HDR_SIZE + cfg.size, NULL, 0) ? H_REPLIED
                                                                                        : H_CLOSE;
}

static HResult
handle_set_config(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuConfigMsg cfg;
  gboolean ok = TRUE;

  if (!read_config(b, msg, &cfg, error))
    return H_MALFORMED;
  if (b->iface.set_config != NULL)
    ok = b->iface.set_config(b->dev, cfg.offset, cfg.region, cfg.size, cfg.flags, error);
  if (!ok && error != NULL && *error == NULL)
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED, "refused by the device");
  return ok ? H_OK : H_REFUSED;
}

static gboolean
is_pow2(guint v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

static gboolean
read_inflight(VhuBackend *b, const VhuMsg *msg, guint nfds, VhuInflightMsg *inf, gsize *stride,
              gsize *total, GError **error)
{
  if (!check_size(msg, sizeof *inf, error) || !check_fds(msg, nfds, error))
    return FALSE;
  memcpy(inf, msg->payload, sizeof *inf);
  if (inf->num_queues == 0 || inf->num_queues > b->num_queues || !is_pow2(inf->queue_size)
      || inf->queue_size > b->max_queue_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "%u queues of %u entries (device: %u queues of at most %u)", inf->num_queues,
                inf->queue_size, b->num_queues, b->max_queue_size);
    return FALSE;
  }
  *stride = vhu_vring_inflight_region_size(inf->queue_size);
  /* Small by the checks above, but keep the arithmetic honest. */
  if (!g_size_checked_mul(total, *stride, inf->num_queues)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "size overflow");
    return FALSE;
  }
  return TRUE;
}

static HResult
handle_get_inflight_fd(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuInflightMsg inf;
  gsize stride, total;
  int fd = -1;
  gboolean ok;

  if (!read_inflight(b, msg, 0, &inf, &stride, &total, error))
    goto fail;
  fd = memfd_create("vhu-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ftruncate(fd, (off_t)total) < 0
      || fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
    int errsv = errno;

    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "inflight buffer: %s",
                g_strerror(errsv));
    goto fail;
  }
  inf.mmap_size = total;
  inf.mmap_offset = 0;
  ok = send_reply(b, msg->hdr.request, &inf, sizeof inf, &fd, 1);
  close(fd);
  return ok ? H_REPLIED : H_CLOSE;

fail:
  /* mmap_size 0 and no fd: QEMU reads it as "no inflight buffer". */
  g_warning("%s: GET_INFLIGHT_FD (%u) rejected: %s; answered without a buffer", b->iface.name,
            VHU_GET_INFLIGHT_FD, (*error)->message);
  g_clear_error(error);
  if (fd >= 0)
    close(fd);
  memset(&inf, 0, sizeof inf);
  return send_reply(b, msg->hdr.request, &inf, sizeof inf, NULL, 0) ? H_REPLIED : H_CLOSE;
}

static HResult
handle_set_inflight_fd(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuInflightMsg inf;
  gsize stride, total;
  guint64 end;
  struct stat st;
  int fd, seals;
  void *base;
  HResult res = H_OK;

  if (!read_inflight(b, msg, 1, &inf, &stride, &total, error))
    return H_MALFORMED;
  fd = msg->fds[0];
  if (inf.mmap_size < total || inf.mmap_size > G_MAXSIZE
      || !g_uint64_checked_add(&end, inf.mmap_offset, inf.mmap_size) || fstat(fd, &st) < 0
      || end > (guint64)st.st_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "buffer %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                " does not fit the fd or the %" G_GSIZE_FORMAT " bytes needed",
                inf.mmap_offset, inf.mmap_size, total);
    return H_MALFORMED;
  }
  /* A frontend that could shrink the file would make us fault on access. */
  seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "inflight fd is not sealed against shrinking");
    return H_MALFORMED;
  }
  base = mmap(NULL, inf.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)inf.mmap_offset);
  if (base == MAP_FAILED) {
    int errsv = errno;

    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "mmap: %s", g_strerror(errsv));
    return H_MALFORMED;
  }

  for (guint i = 0; i < b->num_queues; i++) {
    if (vhu_vring_is_started(b->queues[i].vring)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY, "queue %u is started", i);
      munmap(base, inf.mmap_size);
      return H_MALFORMED;
    }
  }
  drop_inflight(b);
  b->inflight_base = base;
  b->inflight_size = inf.mmap_size;
  for (guint i = 0; i < inf.num_queues && res == H_OK; i++) {
    if (!vhu_vring_set_inflight(b->queues[i].vring, (guint8 *)base + i * stride, stride, error)) {
      g_prefix_error(error, "queue %u: ", i);
      res = H_MALFORMED;
    }
  }
  if (res != H_OK)
    drop_inflight(b);
  return res;
}

static HResult
handle_set_status(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  guint64 v;

  if (!check_plain(msg, 8, error))
    return H_MALFORMED;
  v = payload_u64(msg);
  if (v > 0xff) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "status 0x%" G_GINT64_MODIFIER "x is not a byte", v);
    return H_MALFORMED;
  }
  /* NEEDS_RESET is ours and sticks until the driver resets (writes 0). */
  if (v == 0) {
    g_atomic_int_set(&b->status, 0);
    return H_OK;
  }
  /* A ring may break on another thread meanwhile: keep its bit. */
  for (;;) {
    gint old = g_atomic_int_get(&b->status);

    if (g_atomic_int_compare_and_exchange(&b->status, old,
                                          (gint)v | (old & VHU_STATUS_NEEDS_RESET)))
      break;
  }
  return H_OK;
}

static HResult
handle_device_request(VhuBackend *b, VhuMsg *msg, GError **error)
{
  if (b->iface.device_request == NULL
      || !b->iface.device_request(b->dev, msg->hdr.request, msg->payload, msg->hdr.size, msg->fds,
                                  msg->n_fds, error)) {
    if (error != NULL && *error == NULL)
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "unknown request");
    return H_MALFORMED;
  }
  return H_OK;
}

static gboolean
has_own_reply(guint32 request)
{
  switch (request) {
    case VHU_GET_FEATURES:
    case VHU_GET_PROTOCOL_FEATURES:
    case VHU_GET_VRING_BASE:
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

static HResult
dispatch(VhuBackend *b, VhuMsg *msg, GError **error)
{
  switch (msg->hdr.request) {
    case VHU_GET_FEATURES:
      return reply_plain_u64(b, msg, b->offered_features, error);
    case VHU_SET_FEATURES:
      return handle_set_features(b, msg, error);
    case VHU_GET_PROTOCOL_FEATURES:
      return reply_plain_u64(b, msg, b->offered_protocol, error);
    case VHU_SET_PROTOCOL_FEATURES:
      return handle_set_protocol_features(b, msg, error);
    case VHU_SET_OWNER:
      return check_plain(msg, 0, error) ? H_OK : H_MALFORMED;
    case VHU_RESET_OWNER:
    case VHU_RESET_DEVICE:
      if (!check_plain(msg, 0, error))
        return H_MALFORMED;
      reset_device(b);
      return H_OK;
    case VHU_SET_MEM_TABLE:
      return handle_set_mem_table(b, msg, error);
    case VHU_GET_MAX_MEM_SLOTS:
      return reply_plain_u64(b, msg, VHU_MAX_MEM_SLOTS, error);
    case VHU_ADD_MEM_REG:
      return handle_mem_reg(b, msg, TRUE, error);
    case VHU_REM_MEM_REG:
      return handle_mem_reg(b, msg, FALSE, error);
    case VHU_SET_LOG_BASE:
    case VHU_SET_LOG_FD:
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                          "dirty logging was not offered");
      return H_REFUSED;
    case VHU_SET_VRING_NUM:
      return handle_vring_num(b, msg, error);
    case VHU_SET_VRING_ADDR:
      return handle_vring_addr(b, msg, error);
    case VHU_SET_VRING_BASE:
      return handle_vring_base(b, msg, error);
    case VHU_GET_VRING_BASE:
      return handle_get_vring_base(b, msg, error);
    case VHU_SET_VRING_KICK:
      return handle_vring_kick(b, msg, error);
    case VHU_SET_VRING_CALL:
      return handle_vring_call_err(b, msg, TRUE, error);
    case VHU_SET_VRING_ERR:
      return handle_vring_call_err(b, msg, FALSE, error);
    case VHU_SET_VRING_ENABLE:
      return handle_vring_enable(b, msg, error);
    case VHU_GET_QUEUE_NUM:
      return reply_plain_u64(b, msg, b->num_queues, error);
    case VHU_SET_BACKEND_REQ_FD:
      return handle_backend_req_fd(b, msg, error);
    case VHU_GET_CONFIG:
      return handle_get_config(b, msg, error);
    case VHU_SET_CONFIG:
      return handle_set_config(b, msg, error);
    case VHU_GET_INFLIGHT_FD:
      return handle_get_inflight_fd(b, msg, error);
    case VHU_SET_INFLIGHT_FD:
      return handle_set_inflight_fd(b, msg, error);
    case VHU_SET_STATUS:
      return handle_set_status(b, msg, error);
    case VHU_GET_STATUS:
      return reply_plain_u64(b, msg, (guint8)g_atomic_int_get(&b->status), error);
    default:
      return handle_device_request(b, msg, error);
  }
}

gboolean
vhu_backend_handle_message(VhuBackend *b, VhuMsg *msg)
{
  g_autoptr(GError) error = NULL;
  guint32 request = msg->hdr.request;
  gboolean need_reply = (msg->hdr.flags & VHU_FLAG_NEED_REPLY) != 0;
  gboolean keep = TRUE;
  HResult res;

  if ((msg->hdr.flags & VHU_FLAG_VERSION) != VHU_VERSION) {
    g_set_error(&error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "flags 0x%" G_GINT32_MODIFIER "x: unsupported version", msg->hdr.flags);
    res = H_CLOSE;
  } else
    res = dispatch(b, msg, &error);
  vhu_msg_close_fds(msg);

  /* Messages with their own reply never get an ack: a malformed one cannot
   * be answered meaningfully, so the connection goes. */
  if (has_own_reply(request) && res == H_MALFORMED)
    res = H_CLOSE;
  /* Evaluated after the handler: SET_PROTOCOL_FEATURES may enable it. */
  need_reply = need_reply && (b->protocol_features & (G_GUINT64_CONSTANT(1) << VHU_PF_REPLY_ACK));

  switch (res) {
    case H_OK:
      if (need_reply && !has_own_reply(request))
        keep = reply_u64(b, request, 0) == H_REPLIED;
      break;
    case H_REPLIED:
      break;
    case H_REFUSED:
    case H_MALFORMED:
      g_warning("%s: %s (%" G_GUINT32_FORMAT ") rejected: %s%s", b->iface.name,
                vhu_request_name(request), request, error != NULL ? error->message : "?",
                need_reply || res == H_REFUSED ? "" : "; dropping the connection");
      if (need_reply)
        keep = reply_u64(b, request, 1) == H_REPLIED;
      else
        keep = res == H_REFUSED;
      break;
    case H_CLOSE:
      if (error != NULL)
        g_warning("%s: %s (%" G_GUINT32_FORMAT ") rejected: %s; dropping the connection",
                  b->iface.name, vhu_request_name(request), request, error->message);
      keep = FALSE;
      break;
  }
  return keep;
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

  reset_device(b);

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
    vhu_vring_set_broken_func(b->queues[i].vring, on_ring_broken, b);
    b->queues[i].kick_fd = -1;
  }

  b->qctx = g_main_context_new();
  if (queue_thread)
    b->qthread = g_thread_new("vhu-queue", queue_thread_main, b);
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
  notify_config_change(b);
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
  schedule_kick(b, qidx);
}
