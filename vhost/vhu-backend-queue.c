/* vhu-backend-queue.c: the queue thread of a VhuBackend: its poll loop over
 * the kick eventfds beside its GLib context, scheduled kicks, broken-ring
 * reports.  See vhu-backend.c for the threading model. */
#include "vhu-backend-internal.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Queue thread side */

/* Tells the frontend that the device status changed (NEEDS_RESET), over the
 * backend channel when BACKEND_REQ was negotiated (virtio 1.3 \u00a72.1.2 asks
 * for a configuration change notification).  Any thread.  One non-blocking
 * send without NEED_REPLY: a frontend that does not read its channel loses
 * the notification, it never stalls the caller. */
void
vhu_backend_notify_config_change(VhuBackend *b)
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
void
vhu_backend_ring_broken(gpointer data, VhuVring *vring, const char *reason)
{
  VhuBackend *b = data;

  /* Status first: whoever sees the line can read NEEDS_RESET already. */
  g_atomic_int_or(&b->status, VHU_STATUS_NEEDS_RESET);
  g_warning("%s: queue %u broken: %s; device needs reset", b->iface.name, vhu_vring_index(vring),
            reason);
  vhu_vring_signal_error(vring);
  vhu_backend_notify_config_change(b);
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

void
vhu_backend_schedule_kick(VhuBackend *b, guint qidx)
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
void
vhu_backend_drop_kick_watch(VhuBackend *b, VhuQueue *q)
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
void
vhu_backend_add_kick_watch(VhuBackend *b, guint qidx, int fd)
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

gpointer
vhu_backend_queue_thread(gpointer data)
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
