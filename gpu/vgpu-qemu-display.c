/* vgpu-qemu-display.c: QEMU vhost-user-gpu display socket client. */
#include "vgpu-qemu-display.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <linux/sockios.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vhu-display-proto.h"

#define DEFAULT_REPLY_TIMEOUT_MS 1000u
#define DEFAULT_WRITE_TIMEOUT_MS 5000u
#define MAX_REPLY_SIZE           4096u /* replies we expect are at most 1056 bytes */
#define MAX_QUEUED_MSGS          256u  /* a display this far behind is not reading */
#define MAX_EXPECTED             64u   /* outstanding requests */
#define CONVERT_CHUNK            (256u * 1024u)
#define MAX_WRITE_IOV            1024u
#define SOCKET_BUFFER            (1024 * 1024) /* the kernel caps it at net.core.wmem_max */
#define PIPE_BUFFER              (1024 * 1024) /* capped at fs.pipe-max-size */
#define LENT_POLL_MIN_US         250
#define LENT_POLL_MAX_US         (32 * 1000)
#define OUR_FEATURES             ((1ull << VHU_DISPLAY_PF_EDID) | (1ull << VHU_DISPLAY_PF_DMABUF2))

typedef struct {
  guint32 request;
  guint32 flags;
  guint32 size;
} __attribute__((packed)) MsgHeader;

G_STATIC_ASSERT(sizeof(MsgHeader) == 12);

typedef struct {
  MsgHeader hdr;
  guint scanout; /* for coalescing; G_MAXUINT when not per scanout */
  union {
    guint64 u64;
    VhuDisplayScanout scanout;
    VhuDisplayUpdate update;
    VhuDisplayCursorPos pos;
    VhuDisplayEdidRequest edid;
  } body;
  gsize body_len;
  guint8 *data; /* owned extra payload (cursor update) */
  gsize data_len;
  VgpuImage *image; /* UPDATE: pixels come from here, read-marked ... */
  guint32 src_x, src_y;
  VgpuBacking *backing; /* ... or from here (read-marked), row h at offset + h * stride */
  guint64 offset;
} OutMsg;

typedef struct {
  guint32 request;
  VgpuQuery *query; /* NULL once answered (timeout) or for our own requests */
  GSource *timeout;
  gboolean expired;
} Expect;

typedef struct {
  VgpuQuery *query;
  guint scanout;
} DeferredEdid;

typedef struct _Conn Conn;

typedef struct {
  VgpuImage *image;
  VgpuRect rect;
  guint32 *cursor; /* 64x64, NULL when never defined */
  guint32 hot_x, hot_y, cursor_x, cursor_y;
  gboolean cursor_visible;
} ScanoutState;

struct _VgpuQemuDisplay {
  VgpuDevice *dev;
  VgpuQemuDisplayOptions options;
  Conn *conn;
  ScanoutState scanouts[VGPU_MAX_SCANOUTS];
  GMutex stats_lock; /* the writer threads update stats too */
  VgpuQemuDisplayStats stats;
};

struct _Conn {
  gint refcount;
  int fd;
  VgpuQemuDisplay *qd;            /* NULL once detached (device lock) */
  VgpuQemuDisplayOptions options; /* the lock, usable after the client went */
  GMainContext *context;
  GSource *read_source;
  GThread *writer;
  guint write_timeout_ms;

  /* Writer thread only: guest pages spliced into the socket rather than
   * copied.  Nothing tells when the display has read them, so the backings
   * stay lent until the socket holds nothing unread (polled while idle). */
  int pipe[2]; /* -1: not available, pixels are copied */
  gboolean splice_refused;
  GPtrArray *lent; /* VgpuBacking, each with one loan */
  gint64 lent_deadline;
  gint64 lent_poll_us;

  /* Output queue, shared with the writer thread. */
  GMutex lock;
  GCond cond;
  GQueue out;
  gboolean closing;
  gboolean writer_gone; /* the writer failed and exited: nothing is written any more */

  /* Device lock: */
  GQueue expects;  /* Expect, in request order */
  GQueue deferred; /* DeferredEdid until features are known */
  gboolean negotiated;
  guint64 features;
  guint32 sent_width[VGPU_MAX_SCANOUTS], sent_height[VGPU_MAX_SCANOUTS];
  MsgHeader rx_hdr;
  gsize rx_got;
  guint8 rx_buf[MAX_REPLY_SIZE];
};

static void conn_close(VgpuQemuDisplay *qd, const char *why);

/* Callbacks on the context lock through the connection: the client may be
 * gone, which they find out with the lock held (c->qd == NULL). */
static void
conn_lock(Conn *c)
{
  c->options.lock(c->options.lock_data);
}

static void
conn_unlock(Conn *c)
{
  c->options.unlock(c->options.lock_data);
}

static void
stats_add(VgpuQemuDisplay *qd, guint64 *field, guint64 n)
{
  g_mutex_lock(&qd->stats_lock);
  *field += n;
  g_mutex_unlock(&qd->stats_lock);
}

/* ------------------------------------------------------------------------ */
/* Messages */

static OutMsg *
out_msg_new(guint32 request, guint scanout, const void *body, gsize body_len)
{
  OutMsg *m = g_new0(OutMsg, 1);

  g_assert(body_len <= sizeof m->body);
  m->hdr.request = request;
  m->hdr.size = (guint32)body_len;
  m->scanout = scanout;
  if (body_len)
    memcpy(&m->body, body, body_len);
  m->body_len = body_len;
  return m;
}

/* Drops the pixel source of an UPDATE. */
static void
out_msg_clear_source(OutMsg *m)
{
  if (m->backing) {
    vgpu_backing_end_read(m->backing);
    g_clear_pointer(&m->backing, vgpu_backing_unref);
  } else if (m->image) {
    vgpu_image_end_read(m->image);
  }
  g_clear_pointer(&m->image, vgpu_image_unref);
}

static void
out_msg_free(OutMsg *m)
{
  out_msg_clear_source(m);
  g_free(m->data);
  g_free(m);
}

static Conn *
conn_ref(Conn *c)
{
  g_atomic_int_inc(&c->refcount);
  return c;
}

static void
conn_unref(gpointer data)
{
  Conn *c = data;

  if (!g_atomic_int_dec_and_test(&c->refcount))
    return;
  g_assert(c->writer == NULL && g_queue_is_empty(&c->out) && c->lent->len == 0);
  if (c->fd >= 0)
    close(c->fd);
  for (guint i = 0; i < 2; i++) {
    if (c->pipe[i] >= 0)
      close(c->pipe[i]);
  }
  g_ptr_array_unref(c->lent);
  g_main_context_unref(c->context);
  g_mutex_clear(&c->lock);
  g_cond_clear(&c->cond);
  g_free(c);
}

/* The last queued message for scanout @id whose request is in @kinds, or NULL
 * when a message in @barriers comes after it (both lists end with 0). */
static OutMsg *
last_for_scanout(Conn *c, guint id, const guint32 *kinds, const guint32 *barriers)
{
  for (GList *l = c->out.tail; l; l = l->prev) {
    OutMsg *m = l->data;

    if (m->scanout != id)
      continue;
    for (const guint32 *k = kinds; *k; k++) {
      if (m->hdr.request == *k)
        return m;
    }
    for (const guint32 *b = barriers; *b; b++) {
      if (m->hdr.request == *b)
        return NULL;
    }
  }
  return NULL;
}

static VgpuRect
update_rect(const OutMsg *m)
{
  return (VgpuRect){ m->body.update.x, m->body.update.y, m->body.update.width,
                     m->body.update.height };
}

static gboolean
rect_contains(const VgpuRect *outer, const VgpuRect *inner)
{
  VgpuRect common;

  return vgpu_rect_intersect(outer, inner, &common) && common.x == inner->x && common.y == inner->y
         && common.width == inner->width && common.height == inner->height;
}

/* Folds UPDATE @m into the queued UPDATE @old of the same scanout when that
 * shows the same pixels: the result covers both and reads the newest
 * source.  FALSE when they cannot be merged. */
static gboolean
merge_update(OutMsg *old, OutMsg *m)
{
  VgpuRect a = update_rect(old), b = update_rect(m), u;

  /* Same image at the same place on the scanout (offsets wrap alike). */
  if (old->image != m->image || old->src_x - a.x != m->src_x - b.x
      || old->src_y - a.y != m->src_y - b.y)
    return FALSE;
  if (rect_contains(&b, &a)) {
    /* @m covers @old: it takes @old's place in the queue. */
    out_msg_clear_source(old);
    old->body.update = m->body.update;
    old->hdr.size = m->hdr.size;
    old->image = g_steal_pointer(&m->image);
    old->backing = g_steal_pointer(&m->backing);
    old->src_x = m->src_x;
    old->src_y = m->src_y;
    old->offset = m->offset;
    return TRUE;
  }
  if (old->backing || m->backing) {
    /* Guest memory is only known to hold the rectangles flushed: no union.
     * The smaller one from the same place is part of the bigger one. */
    return old->backing == m->backing && rect_contains(&a, &b)
           && m->offset
                  == old->offset + (guint64)(b.y - a.y) * m->image->stride
                         + (guint64)(b.x - a.x) * 4u;
  }
  vgpu_rect_union(&a, &b, &u);
  old->src_x = old->src_x - a.x + u.x;
  old->src_y = old->src_y - a.y + u.y;
  old->body.update.x = u.x;
  old->body.update.y = u.y;
  old->body.update.width = u.width;
  old->body.update.height = u.height;
  old->hdr.size = (guint32)(sizeof old->body.update + (gsize)u.width * u.height * 4u);
  return TRUE;
}

/* Queues @m for the writer (device lock held).  Coalesces an UPDATE with a
 * queued one of the same scanout and image, and cursor positions with a
 * queued position.  FALSE when the display is too far behind. */
static gboolean
conn_push(Conn *c, OutMsg *m)
{
  static const guint32 update_kind[] = { VHU_DISPLAY_UPDATE, 0 };
  static const guint32 update_barrier[] = { VHU_DISPLAY_SCANOUT, 0 };
  static const guint32 pos_kind[] = { VHU_DISPLAY_CURSOR_POS, VHU_DISPLAY_CURSOR_POS_HIDE, 0 };
  static const guint32 pos_barrier[] = { VHU_DISPLAY_CURSOR_UPDATE, 0 };
  gboolean ok = TRUE;
  OutMsg *old;

  g_mutex_lock(&c->lock);
  if (m->hdr.request == VHU_DISPLAY_UPDATE
      && (old = last_for_scanout(c, m->scanout, update_kind, update_barrier))
      && merge_update(old, m)) {
    g_mutex_unlock(&c->lock);
    if (c->qd)
      stats_add(c->qd, &c->qd->stats.coalesced, 1);
    out_msg_free(m);
    return TRUE;
  }
  if ((m->hdr.request == VHU_DISPLAY_CURSOR_POS || m->hdr.request == VHU_DISPLAY_CURSOR_POS_HIDE)
      && (old = last_for_scanout(c, m->scanout, pos_kind, pos_barrier))) {
    old->hdr.request = m->hdr.request;
    old->body.pos = m->body.pos;
    g_mutex_unlock(&c->lock);
    out_msg_free(m);
    return TRUE;
  }
  if (c->writer_gone) {
    /* The reader will see the shutdown and close the connection. */
  } else if (c->out.length >= MAX_QUEUED_MSGS) {
    ok = FALSE;
  } else {
    g_queue_push_tail(&c->out, m);
    g_cond_signal(&c->cond);
    m = NULL;
  }
  g_mutex_unlock(&c->lock);
  if (m)
    out_msg_free(m);
  return ok;
}

/* Queues on the current connection; drops it when it is hopelessly behind. */
static void
send_msg(VgpuQemuDisplay *qd, OutMsg *m)
{
  if (!qd->conn) {
    out_msg_free(m);
    return;
  }
  if (!conn_push(qd->conn, m))
    conn_close(qd, "the display stopped reading (too many queued messages)");
}

/* ------------------------------------------------------------------------ */
/* Writer thread */

/* Drops the first @bytes of the @n iovecs at *@iov. */
static void
iov_advance(struct iovec **iov, guint *n, gsize bytes)
{
  while (*n > 0 && bytes >= (*iov)->iov_len) {
    bytes -= (*iov)->iov_len;
    (*iov)++;
    (*n)--;
  }
  if (*n > 0) {
    (*iov)->iov_base = (guint8 *)(*iov)->iov_base + bytes;
    (*iov)->iov_len -= bytes;
  }
}

static const char *
write_error(int err)
{
  return err == EAGAIN || err == EWOULDBLOCK ? "the display stopped reading (write timeout)"
                                             : g_strerror(err);
}

/* Writes all of @iov (modified).  The socket blocks, with SO_SNDTIMEO set
 * to write_timeout_ms: a display that takes no byte for that long fails the
 * write, and conn_close's shutdown() wakes a blocked one. */
static gboolean
write_iov(Conn *c, struct iovec *iov, guint n, const char **why)
{
  while (n > 0) {
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = MIN(n, MAX_WRITE_IOV) };
    ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

    if (r < 0) {
      if (errno == EINTR)
        continue;
      *why = write_error(errno);
      return FALSE;
    }
    iov_advance(&iov, &n, (gsize)r);
  }
  return TRUE;
}

/* Ends every loan: the display has read all it was lent, or the connection
 * is gone. */
static void
end_loans(Conn *c)
{
  for (guint i = 0; i < c->lent->len; i++) {
    vgpu_backing_end_loan(c->lent->pdata[i]);
    vgpu_backing_unref(c->lent->pdata[i]);
  }
  g_ptr_array_set_size(c->lent, 0);
}

/* Keeps @backing from going back to the guest until the display has read
 * the pages about to be spliced from it. */
static void
lend(Conn *c, VgpuBacking *backing)
{
  if (!g_ptr_array_find(c->lent, backing, NULL)) {
    vgpu_backing_begin_loan(backing);
    g_ptr_array_add(c->lent, vgpu_backing_ref(backing));
  }
  c->lent_deadline = g_get_monotonic_time() + (gint64)c->write_timeout_ms * 1000;
  c->lent_poll_us = LENT_POLL_MIN_US;
}

/* Ends the loans once nothing sent is left unread in the socket.  FALSE
 * when the display left spliced pages unread for the write timeout. */
static gboolean
reclaim_loans(Conn *c, const char **why)
{
  int unread = 0;

  if (c->lent->len == 0)
    return TRUE;
  if (ioctl(c->fd, SIOCOUTQ, &unread) == 0 && unread > 0) {
    if (g_get_monotonic_time() < c->lent_deadline)
      return TRUE;
    *why = "the display stopped reading (write timeout)";
    return FALSE;
  }
  end_loans(c);
  return TRUE;
}

/* Hands the pages of @iov to the socket without copying them: vmsplice into
 * the pipe, splice into the socket (the display copies them when it reads).
 * Advances *@iov / *@n past what went; stops early, returning TRUE, when the
 * kernel does not take those pages (the caller copies the rest).  FALSE on
 * a socket error. */
static gboolean
splice_iov(Conn *c, struct iovec **iov, guint *n, const char **why)
{
  while (*n > 0) {
    ssize_t r = vmsplice(c->pipe[1], *iov, MIN(*n, MAX_WRITE_IOV), 0);

    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      g_info("display socket: vmsplice: %s; copying pixels instead", g_strerror(errno));
      c->splice_refused = TRUE;
      return TRUE;
    }
    iov_advance(iov, n, (gsize)r);
    while (r > 0) {
      ssize_t k = splice(c->pipe[0], NULL, c->fd, NULL, (gsize)r, SPLICE_F_MOVE);

      if (k < 0 && errno == EINTR)
        continue;
      if (k <= 0) {
        *why = k < 0 ? write_error(errno) : "display socket closed";
        return FALSE;
      }
      r -= k;
    }
  }
  return TRUE;
}

/* X8R8G8B8-compatible pixels, sent as they are: one sendmsg() for the
 * header and every row, no copy in user space. */
static gboolean
write_rows_direct(Conn *c, OutMsg *m, struct iovec *head, guint n_head, const char **why)
{
  const VhuDisplayUpdate *u = &m->body.update;
  VgpuImage *img = m->image;
  gsize row = (gsize)u->width * 4u;
  g_autoptr(GArray) iov = g_array_sized_new(FALSE, FALSE, sizeof(struct iovec), n_head + 1);

  g_array_append_vals(iov, head, n_head);
  if (m->backing && row == img->stride) {
    vgpu_backing_append_iov(m->backing, m->offset, row * u->height, iov);
  } else if (m->backing) {
    for (guint32 h = 0; h < u->height; h++)
      vgpu_backing_append_iov(m->backing, m->offset + (guint64)h * img->stride, row, iov);
  } else {
    guint8 *src = img->data + (gsize)m->src_y * img->stride + (gsize)m->src_x * 4u;
    struct iovec v = { src, row * u->height }; /* whole rows: one piece */

    if (row == img->stride) {
      g_array_append_val(iov, v);
    } else {
      for (guint32 h = 0; h < u->height; h++) {
        v = (struct iovec){ src + (gsize)h * img->stride, row };
        g_array_append_val(iov, v);
      }
    }
  }
  if (m->backing && c->pipe[0] >= 0 && !c->splice_refused) {
    /* Guest memory: the header is written, the pixel pages are lent. */
    struct iovec *v = (struct iovec *)(void *)iov->data + n_head;
    guint n = iov->len - n_head;

    if (!write_iov(c, head, n_head, why))
      return FALSE;
    lend(c, m->backing);
    return splice_iov(c, &v, &n, why) && write_iov(c, v, n, why);
  }
  return write_iov(c, (struct iovec *)(void *)iov->data, iov->len, why);
}

/* Other formats: converted a bounded number of rows at a time (rows in
 * guest memory are gathered first). */
static gboolean
write_rows_converted(Conn *c, OutMsg *m, struct iovec *head, guint n_head, const char **why)
{
  const VhuDisplayUpdate *u = &m->body.update;
  VgpuImage *img = m->image;
  gsize row = (gsize)u->width * 4u;
  guint rows = (guint)MAX(1u, CONVERT_CHUNK / row);
  gsize chunk = (gsize)MIN(rows, u->height) * row;
  g_autofree guint8 *buf = g_malloc(chunk);
  g_autofree guint8 *gathered = m->backing ? g_malloc(chunk) : NULL;

  if (!write_iov(c, head, n_head, why))
    return FALSE;
  for (guint32 y = 0; y < u->height; y += rows) {
    guint n = MIN(rows, u->height - y);
    struct iovec iov = { buf, (gsize)n * row };

    if (m->backing) {
      for (guint h = 0; h < n; h++)
        vgpu_backing_read(m->backing, m->offset + (guint64)(y + h) * img->stride,
                          gathered + (gsize)h * row, row);
      vgpu_format_convert(img->format, gathered, u->width, n, (guint)row, 0, 0, u->width, n,
                          PIXMAN_x8r8g8b8, buf, (guint)row);
    } else {
      vgpu_format_convert(img->format, img->data, img->width, img->height, img->stride, m->src_x,
                          m->src_y + y, u->width, n, PIXMAN_x8r8g8b8, buf, (guint)row);
    }
    if (!write_iov(c, &iov, 1, why))
      return FALSE;
  }
  return TRUE;
}

static gboolean
write_update_pixels(Conn *c, OutMsg *m, struct iovec *head, guint n_head, const char **why)
{
  if (vgpu_format_is_xrgb(m->image->format))
    return write_rows_direct(c, m, head, n_head, why);
  return write_rows_converted(c, m, head, n_head, why);
}

static gboolean
write_msg(Conn *c, VgpuQemuDisplay *qd, OutMsg *m, const char **why)
{
  struct iovec iov[4];
  guint n = 0;
  gboolean ok;

  iov[n++] = (struct iovec){ &m->hdr, sizeof m->hdr };
  if (m->body_len)
    iov[n++] = (struct iovec){ &m->body, m->body_len };
  if (m->image) {
    ok = write_update_pixels(c, m, iov, n, why);
    if (ok) {
      stats_add(qd, &qd->stats.updates, 1);
      stats_add(qd, &qd->stats.update_bytes,
                (guint64)m->body.update.width * m->body.update.height * 4u);
    }
  } else {
    if (m->data_len)
      iov[n++] = (struct iovec){ m->data, m->data_len };
    ok = write_iov(c, iov, n, why);
  }
  if (ok)
    stats_add(qd, &qd->stats.messages, 1);
  return ok;
}

static gpointer
writer_main(gpointer data)
{
  Conn *c = data;
  VgpuQemuDisplay *qd = c->qd; /* valid until this thread is joined */
  const char *why = NULL;
  GQueue rest = G_QUEUE_INIT;
  gboolean closing, ok = TRUE;
  sigset_t sigpipe;
  OutMsg *m;

  /* splice() into a closed socket raises SIGPIPE (there is no MSG_NOSIGNAL
   * for it): this thread takes the EPIPE instead. */
  sigemptyset(&sigpipe);
  sigaddset(&sigpipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &sigpipe, NULL);

  g_mutex_lock(&c->lock);
  while (ok && !c->closing) {
    m = g_queue_pop_head(&c->out);
    if (!m && c->lent->len == 0) {
      g_cond_wait(&c->cond, &c->lock);
      continue;
    }
    if (!m) {
      /* Idle with pages lent: nothing signals that the display has read
       * them, so look again a little later. */
      g_cond_wait_until(&c->cond, &c->lock, g_get_monotonic_time() + c->lent_poll_us);
      c->lent_poll_us = MIN(2 * c->lent_poll_us, LENT_POLL_MAX_US);
    }
    g_mutex_unlock(&c->lock);
    ok = (!m || write_msg(c, qd, m, &why)) && reclaim_loans(c, &why);
    if (m)
      out_msg_free(m);
    g_mutex_lock(&c->lock);
  }
  rest = c->out;
  g_queue_init(&c->out);
  closing = c->closing;
  c->writer_gone = TRUE;
  g_mutex_unlock(&c->lock);
  while ((m = g_queue_pop_head(&rest)))
    out_msg_free(m);
  if (why && !closing) {
    /* The reader sees the shutdown and closes the connection. */
    g_warning("display socket: %s; dropping the connection", why);
    stats_add(qd, &qd->stats.dropped, 1);
    shutdown(c->fd, SHUT_RDWR);
  }
  /* What the display may still read from its end is out of our hands. */
  end_loans(c);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Requests and replies (device lock held) */

static void
expect_free(Expect *e)
{
  if (e->timeout) {
    g_source_destroy(e->timeout);
    g_source_unref(e->timeout);
  }
  g_free(e);
}

static void
answer_query(VgpuQemuDisplay *qd, VgpuQuery **query, const void *reply, gsize size)
{
  VgpuQuery *q = *query;

  if (!q)
    return;
  *query = NULL;
  vgpu_device_query_done(qd->dev, q, reply, size);
}

typedef struct {
  Conn *conn;
  Expect *expect;
} TimeoutData;

static void negotiated(VgpuQemuDisplay *qd, Conn *c, guint64 offered, gboolean replied);

static gboolean
expect_timeout_cb(gpointer data)
{
  TimeoutData *td = data;
  Conn *c = td->conn;
  VgpuQemuDisplay *qd;

  /* The Conn reference keeps @c valid; the Expect is valid while it is in
   * c->expects, which only changes under the device lock. */
  conn_lock(c);
  qd = c->qd;
  if (qd && g_queue_find(&c->expects, td->expect)) {
    Expect *e = td->expect;

    g_source_unref(e->timeout);
    e->timeout = NULL;
    e->expired = TRUE;
    stats_add(qd, &qd->stats.timeouts, 1);
    if (e->request == VHU_DISPLAY_GET_PROTOCOL_FEATURES) {
      g_warning("display socket: no answer to GET_PROTOCOL_FEATURES; assuming none");
      negotiated(qd, c, 0, FALSE);
    } else {
      g_message("display socket: no answer to request %u in time; using our own", e->request);
      answer_query(qd, &e->query, NULL, 0);
    }
  }
  conn_unlock(c);
  return G_SOURCE_REMOVE;
}

static void
timeout_data_free(gpointer data)
{
  TimeoutData *td = data;

  conn_unref(td->conn);
  g_free(td);
}

/* Sends a request expecting a reply. */
static void
send_request(VgpuQemuDisplay *qd, OutMsg *m, VgpuQuery *query)
{
  Conn *c = qd->conn;
  Expect *e = g_new0(Expect, 1);
  TimeoutData *td = g_new0(TimeoutData, 1);

  e->request = m->hdr.request;
  e->query = query;
  e->timeout = g_timeout_source_new(qd->options.reply_timeout_ms);
  td->conn = conn_ref(c);
  td->expect = e;
  g_source_set_callback(e->timeout, expect_timeout_cb, td, timeout_data_free);
  g_source_attach(e->timeout, c->context);
  g_queue_push_tail(&c->expects, e);
  send_msg(qd, m); /* may close the connection, which answers @query */
}

static void
send_edid_request(VgpuQemuDisplay *qd, VgpuQuery *query, guint scanout)
{
  VhuDisplayEdidRequest req = { .scanout_id = scanout };

  send_request(qd, out_msg_new(VHU_DISPLAY_GET_EDID, G_MAXUINT, &req, sizeof req), query);
}

static void
negotiated(VgpuQemuDisplay *qd, Conn *c, guint64 offered, gboolean replied)
{
  DeferredEdid *d;

  c->negotiated = TRUE;
  c->features = offered & OUR_FEATURES;
  g_mutex_lock(&qd->stats_lock);
  qd->stats.protocol_features = c->features;
  g_mutex_unlock(&qd->stats_lock);
  g_info("display socket: protocol features 0x%" G_GINT64_MODIFIER
         "x offered, 0x%" G_GINT64_MODIFIER "x used",
         offered, c->features);
  if (replied) {
    guint64 f = c->features;

    send_msg(qd, out_msg_new(VHU_DISPLAY_SET_PROTOCOL_FEATURES, G_MAXUINT, &f, sizeof f));
  }
  while (qd->conn == c && (d = g_queue_pop_head(&c->deferred))) {
    if (c->features & (1ull << VHU_DISPLAY_PF_EDID))
      send_edid_request(qd, d->query, d->scanout);
    else
      answer_query(qd, &d->query, NULL, 0);
    g_free(d);
  }
}

static void
handle_reply(VgpuQemuDisplay *qd, Conn *c, const MsgHeader *hdr, const guint8 *payload)
{
  Expect *e = NULL;

  if (!(hdr->flags & VHU_DISPLAY_FLAG_REPLY)) {
    g_warning("display socket: unexpected request %u from the display; ignored", hdr->request);
    return;
  }
  /* Replies come in request order; a request skipped over got none. */
  for (GList *l = c->expects.head; l; l = l->next) {
    if (((Expect *)l->data)->request == hdr->request) {
      e = l->data;
      break;
    }
  }
  if (!e) {
    g_warning("display socket: unexpected reply %u; ignored", hdr->request);
    return;
  }
  while (TRUE) {
    Expect *head = g_queue_pop_head(&c->expects);

    if (head == e)
      break;
    answer_query(qd, &head->query, NULL, 0);
    expect_free(head);
  }
  stats_add(qd, &qd->stats.replies, 1);
  if (!e->expired) {
    if (e->request == VHU_DISPLAY_GET_PROTOCOL_FEATURES) {
      guint64 offered = 0;

      if (hdr->size == sizeof offered)
        memcpy(&offered, payload, sizeof offered);
      else
        g_warning("display socket: GET_PROTOCOL_FEATURES reply of %u bytes", hdr->size);
      negotiated(qd, c, offered, TRUE);
    } else {
      answer_query(qd, &e->query, payload, hdr->size);
    }
  }
  expect_free(e);
}

static gboolean
read_cb(gint fd, GIOCondition condition, gpointer data)
{
  Conn *c = data;
  VgpuQemuDisplay *qd;
  gboolean keep = TRUE;

  conn_lock(c);
  qd = c->qd;
  if (!qd) {
    conn_unlock(c);
    return G_SOURCE_REMOVE;
  }
  while (keep) {
    gsize want = c->rx_got < sizeof c->rx_hdr ? sizeof c->rx_hdr - c->rx_got
                                              : sizeof c->rx_hdr + c->rx_hdr.size - c->rx_got;
    guint8 *dst = c->rx_got < sizeof c->rx_hdr ? (guint8 *)&c->rx_hdr + c->rx_got
                                               : c->rx_buf + (c->rx_got - sizeof c->rx_hdr);
    ssize_t r = want ? recv(fd, dst, want, MSG_DONTWAIT) : 0;

    if (want && r < 0 && errno == EINTR)
      continue;
    if (want && r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (want && r <= 0) {
      conn_close(qd, r == 0 ? NULL : g_strerror(errno));
      keep = FALSE;
      break;
    }
    c->rx_got += (gsize)r;
    if (c->rx_got == sizeof c->rx_hdr && c->rx_hdr.size > MAX_REPLY_SIZE) {
      conn_close(qd, "oversized message from the display");
      keep = FALSE;
      break;
    }
    if (c->rx_got >= sizeof c->rx_hdr && c->rx_got == sizeof c->rx_hdr + c->rx_hdr.size) {
      MsgHeader hdr = c->rx_hdr;

      c->rx_got = 0;
      handle_reply(qd, c, &hdr, c->rx_buf);
      if (qd->conn != c) {
        keep = FALSE; /* closed meanwhile */
        break;
      }
    }
  }
  conn_unlock(c);
  return keep ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

/* ------------------------------------------------------------------------ */
/* Connection lifetime (device lock held) */

static void
conn_close(VgpuQemuDisplay *qd, const char *why)
{
  Conn *c = qd->conn;
  Expect *e;
  DeferredEdid *d;

  if (!c)
    return;
  if (why) {
    g_warning("display socket: %s; connection dropped", why);
    stats_add(qd, &qd->stats.dropped, 1);
  } else {
    g_info("display socket closed");
  }
  qd->conn = NULL;
  g_mutex_lock(&qd->stats_lock);
  qd->stats.connected = FALSE;
  qd->stats.protocol_features = 0;
  g_mutex_unlock(&qd->stats_lock);

  /* Stop the writer first: shutdown wakes it from a blocked write. */
  g_mutex_lock(&c->lock);
  c->closing = TRUE;
  g_cond_signal(&c->cond);
  g_mutex_unlock(&c->lock);
  shutdown(c->fd, SHUT_RDWR);
  g_thread_join(c->writer);
  c->writer = NULL;

  c->qd = NULL;
  if (c->read_source) {
    g_source_destroy(c->read_source);
    g_source_unref(c->read_source);
    c->read_source = NULL;
  }
  /* Every query still waiting gets our own answer. */
  while ((e = g_queue_pop_head(&c->expects))) {
    answer_query(qd, &e->query, NULL, 0);
    expect_free(e);
  }
  while ((d = g_queue_pop_head(&c->deferred))) {
    answer_query(qd, &d->query, NULL, 0);
    g_free(d);
  }
  conn_unref(c);
}

static void
replay_scanout(VgpuQemuDisplay *qd, guint id)
{
  ScanoutState *s = &qd->scanouts[id];

  if (s->image) {
    Conn *c = qd->conn;
    VhuDisplayScanout so = { id, s->rect.width, s->rect.height };
    OutMsg *m;

    if (!c)
      return;
    c->sent_width[id] = s->rect.width;
    c->sent_height[id] = s->rect.height;
    send_msg(qd, out_msg_new(VHU_DISPLAY_SCANOUT, id, &so, sizeof so));
    if (!qd->conn)
      return;
    m = out_msg_new(VHU_DISPLAY_UPDATE, id, NULL, 0);
    m->body.update = (VhuDisplayUpdate){ id, 0, 0, s->rect.width, s->rect.height };
    m->body_len = sizeof m->body.update;
    m->hdr.size = (guint32)(sizeof m->body.update + (gsize)s->rect.width * s->rect.height * 4u);
    m->image = vgpu_image_ref(s->image);
    vgpu_image_begin_read(m->image);
    m->src_x = s->rect.x;
    m->src_y = s->rect.y;
    send_msg(qd, m);
  }
  if (s->cursor && qd->conn) {
    VhuDisplayCursorUpdate *cu = g_new0(VhuDisplayCursorUpdate, 1);
    OutMsg *m = out_msg_new(VHU_DISPLAY_CURSOR_UPDATE, id, NULL, 0);

    cu->pos = (VhuDisplayCursorPos){ id, s->cursor_x, s->cursor_y };
    cu->hot_x = s->hot_x;
    cu->hot_y = s->hot_y;
    memcpy(cu->data, s->cursor, sizeof cu->data);
    m->data = (guint8 *)cu;
    m->data_len = sizeof *cu;
    m->hdr.size = sizeof *cu;
    send_msg(qd, m);
    if (!s->cursor_visible) {
      VhuDisplayCursorPos pos = { id, s->cursor_x, s->cursor_y };

      send_msg(qd, out_msg_new(VHU_DISPLAY_CURSOR_POS_HIDE, id, &pos, sizeof pos));
    }
  }
}

gboolean
vgpu_qemu_display_set_socket(VgpuQemuDisplay *qd, int fd, GError **error)
{
  int sndbuf = SOCKET_BUFFER;
  struct stat st;
  Conn *c;

  if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "display socket: fd %d is not a socket", fd);
    close(fd);
    return FALSE;
  }
  conn_close(qd, NULL);
  /* Blocking writes with a deadline (see write_iov); reads never block. */
  g_unix_set_fd_nonblocking(fd, FALSE, NULL);
  {
    struct timeval tv
        = { qd->options.write_timeout_ms / 1000, (qd->options.write_timeout_ms % 1000) * 1000 };

    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  /* Fewer, longer writes: the writer sleeps and wakes about 40 times per
   * 8 MB frame with the default buffer. */
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

  c = g_new0(Conn, 1);
  c->refcount = 1;
  c->fd = fd;
  c->lent = g_ptr_array_new();
  if (pipe2(c->pipe, O_CLOEXEC) == 0) {
    (void)fcntl(c->pipe[1], F_SETPIPE_SZ, PIPE_BUFFER); /* fewer calls if it works */
  } else {
    g_info("display socket: no pipe (%s); pixels are copied", g_strerror(errno));
    c->pipe[0] = c->pipe[1] = -1;
  }
  c->qd = qd;
  c->options = qd->options;
  c->context = g_main_context_ref(qd->options.context);
  c->write_timeout_ms = qd->options.write_timeout_ms;
  g_mutex_init(&c->lock);
  g_cond_init(&c->cond);
  g_queue_init(&c->out);
  g_queue_init(&c->expects);
  g_queue_init(&c->deferred);
  c->writer = g_thread_new("vgpu-display", writer_main, c);
  c->read_source = g_unix_fd_source_new(fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
  g_source_set_callback(c->read_source, G_SOURCE_FUNC(read_cb), conn_ref(c), conn_unref);
  g_source_attach(c->read_source, c->context);
  qd->conn = c;
  g_mutex_lock(&qd->stats_lock);
  qd->stats.connections++;
  qd->stats.connected = TRUE;
  g_mutex_unlock(&qd->stats_lock);
  g_info("display socket: new connection (fd %d)", fd);

  send_request(qd, out_msg_new(VHU_DISPLAY_GET_PROTOCOL_FEATURES, G_MAXUINT, NULL, 0), NULL);
  return TRUE;
}

void
vgpu_qemu_display_replay(VgpuQemuDisplay *qd)
{
  /* The replay reads the images: pending transfers go into them first. */
  vgpu_device_sync_images(qd->dev);
  for (guint i = 0; i < VGPU_MAX_SCANOUTS && qd->conn; i++)
    replay_scanout(qd, i);
}

void
vgpu_qemu_display_close(VgpuQemuDisplay *qd)
{
  conn_close(qd, NULL);
}

/* ------------------------------------------------------------------------ */
/* Sink interface (device lock held) */

static void
sink_set_scanout(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect)
{
  VgpuQemuDisplay *qd = sink;
  ScanoutState *s = &qd->scanouts[id];
  Conn *c = qd->conn;
  VhuDisplayScanout so = { id, 0, 0 };

  g_clear_pointer(&s->image, vgpu_image_unref);
  if (image) {
    s->image = vgpu_image_ref(image);
    s->rect = *rect;
    so.width = rect->width;
    so.height = rect->height;
  } else {
    s->rect = (VgpuRect){ 0, 0, 0, 0 };
  }
  if (!c || (c->sent_width[id] == so.width && c->sent_height[id] == so.height && image))
    return;
  c->sent_width[id] = so.width;
  c->sent_height[id] = so.height;
  send_msg(qd, out_msg_new(VHU_DISPLAY_SCANOUT, id, &so, sizeof so));
}

/* An UPDATE message for scanout @id, announcing the scanout first if this
 * connection never saw it.  NULL when there is nothing to send. */
static OutMsg *
update_msg_new(VgpuQemuDisplay *qd, guint id, const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  Conn *c = qd->conn;
  OutMsg *m;

  if (!c || rect->width == 0 || rect->height == 0)
    return NULL;
  if (c->sent_width[id] == 0) {
    /* QEMU has no surface for a scanout it was never told about. */
    ScanoutState *s = &qd->scanouts[id];
    VhuDisplayScanout so = { id, s->rect.width, s->rect.height };

    c->sent_width[id] = s->rect.width;
    c->sent_height[id] = s->rect.height;
    send_msg(qd, out_msg_new(VHU_DISPLAY_SCANOUT, id, &so, sizeof so));
    if (!qd->conn)
      return NULL;
  }
  m = out_msg_new(VHU_DISPLAY_UPDATE, id, NULL, 0);
  m->body.update = (VhuDisplayUpdate){ id, dst_x, dst_y, rect->width, rect->height };
  m->body_len = sizeof m->body.update;
  m->hdr.size = (guint32)(sizeof m->body.update + (gsize)rect->width * rect->height * 4u);
  m->src_x = rect->x;
  m->src_y = rect->y;
  return m;
}

static void
sink_update(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
            guint32 dst_y)
{
  VgpuQemuDisplay *qd = sink;
  OutMsg *m = update_msg_new(qd, id, rect, dst_x, dst_y);

  if (!m)
    return;
  m->image = vgpu_image_ref(image);
  vgpu_image_begin_read(image);
  send_msg(qd, m);
}

static void
sink_update_guest(gpointer sink, guint id, VgpuImage *image, VgpuBacking *backing, guint64 offset,
                  const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  VgpuQemuDisplay *qd = sink;
  OutMsg *m = update_msg_new(qd, id, rect, dst_x, dst_y);

  if (!m)
    return;
  m->image = vgpu_image_ref(image);
  m->backing = vgpu_backing_ref(backing);
  vgpu_backing_begin_read(backing);
  m->offset = offset;
  send_msg(qd, m);
}

static void
sink_cursor_update(gpointer sink, guint id, const guint32 *pixels, guint32 hot_x, guint32 hot_y,
                   guint32 x, guint32 y)
{
  VgpuQemuDisplay *qd = sink;
  ScanoutState *s = &qd->scanouts[id];
  VhuDisplayCursorUpdate *cu;
  OutMsg *m;

  if (!s->cursor)
    s->cursor = g_new(guint32, VGPU_CURSOR_SIZE * VGPU_CURSOR_SIZE);
  memcpy(s->cursor, pixels, VGPU_CURSOR_SIZE * VGPU_CURSOR_SIZE * 4u);
  s->hot_x = hot_x;
  s->hot_y = hot_y;
  s->cursor_x = x;
  s->cursor_y = y;
  s->cursor_visible = TRUE;
  if (!qd->conn)
    return;
  cu = g_new0(VhuDisplayCursorUpdate, 1);
  cu->pos = (VhuDisplayCursorPos){ id, x, y };
  cu->hot_x = hot_x;
  cu->hot_y = hot_y;
  memcpy(cu->data, pixels, sizeof cu->data);
  m = out_msg_new(VHU_DISPLAY_CURSOR_UPDATE, id, NULL, 0);
  m->data = (guint8 *)cu;
  m->data_len = sizeof *cu;
  m->hdr.size = sizeof *cu;
  send_msg(qd, m);
}

static void
sink_cursor_move(gpointer sink, guint id, guint32 x, guint32 y, gboolean visible)
{
  VgpuQemuDisplay *qd = sink;
  ScanoutState *s = &qd->scanouts[id];
  VhuDisplayCursorPos pos = { id, x, y };

  s->cursor_x = x;
  s->cursor_y = y;
  s->cursor_visible = visible;
  if (!qd->conn)
    return;
  send_msg(qd, out_msg_new(visible ? VHU_DISPLAY_CURSOR_POS : VHU_DISPLAY_CURSOR_POS_HIDE, id, &pos,
                           sizeof pos));
}

static gboolean
sink_query_display_info(gpointer sink, VgpuQuery *query)
{
  VgpuQemuDisplay *qd = sink;

  if (!qd->conn || qd->conn->expects.length >= MAX_EXPECTED)
    return FALSE;
  send_request(qd, out_msg_new(VHU_DISPLAY_GET_DISPLAY_INFO, G_MAXUINT, NULL, 0), query);
  return TRUE;
}

static gboolean
sink_query_edid(gpointer sink, guint id, VgpuQuery *query)
{
  VgpuQemuDisplay *qd = sink;
  Conn *c = qd->conn;

  if (!c || c->expects.length >= MAX_EXPECTED)
    return FALSE;
  if (c->negotiated) {
    if (!(c->features & (1ull << VHU_DISPLAY_PF_EDID)))
      return FALSE;
    send_edid_request(qd, query, id);
  } else {
    DeferredEdid *d = g_new0(DeferredEdid, 1);

    d->query = query;
    d->scanout = id;
    g_queue_push_tail(&c->deferred, d);
  }
  return TRUE;
}

static const VgpuSinkIface sink_iface = {
  .set_scanout = sink_set_scanout,
  .update = sink_update,
  .cursor_update = sink_cursor_update,
  .cursor_move = sink_cursor_move,
  .query_display_info = sink_query_display_info,
  .query_edid = sink_query_edid,
  .update_guest = sink_update_guest,
};

/* ------------------------------------------------------------------------ */

VgpuQemuDisplay *
vgpu_qemu_display_new(VgpuDevice *dev, const VgpuQemuDisplayOptions *options)
{
  VgpuQemuDisplay *qd = g_new0(VgpuQemuDisplay, 1);

  g_return_val_if_fail(options->context && options->lock && options->unlock, NULL);
  qd->dev = dev;
  qd->options = *options;
  g_main_context_ref(qd->options.context);
  if (qd->options.reply_timeout_ms == 0)
    qd->options.reply_timeout_ms = DEFAULT_REPLY_TIMEOUT_MS;
  if (qd->options.write_timeout_ms == 0)
    qd->options.write_timeout_ms = DEFAULT_WRITE_TIMEOUT_MS;
  g_mutex_init(&qd->stats_lock);
  vgpu_device_add_sink(dev, &sink_iface, qd);
  return qd;
}

void
vgpu_qemu_display_free(VgpuQemuDisplay *qd)
{
  if (!qd)
    return;
  conn_close(qd, NULL);
  vgpu_device_remove_sink(qd->dev, qd);
  for (guint i = 0; i < VGPU_MAX_SCANOUTS; i++) {
    g_clear_pointer(&qd->scanouts[i].image, vgpu_image_unref);
    g_free(qd->scanouts[i].cursor);
  }
  g_main_context_unref(qd->options.context);
  g_mutex_clear(&qd->stats_lock);
  g_free(qd);
}

void
vgpu_qemu_display_get_stats(VgpuQemuDisplay *qd, VgpuQemuDisplayStats *stats)
{
  g_mutex_lock(&qd->stats_lock);
  *stats = qd->stats;
  g_mutex_unlock(&qd->stats_lock);
}
