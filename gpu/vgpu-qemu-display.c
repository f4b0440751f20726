/* vgpu-qemu-display.c: QEMU vhost-user-gpu display socket client. */
#include "vgpu-qemu-display.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vgpu-udmabuf.h"
#include "vhu-display-proto.h"
#include "vhu-guard.h"

#define DEFAULT_REPLY_TIMEOUT_MS 1000u
#define DEFAULT_HOLD_MS          20u
#define MAX_REPLY_SIZE           4096u /* replies we expect are at most 1056 bytes */
#define MAX_QUEUED_MSGS          256u  /* above what coalescing lets through: a bug guard */
#define MAX_EXPECTED             64u   /* outstanding requests */
#define MAX_READS_PER_DISPATCH   32u
#define CONVERT_CHUNK            (256u * 1024u)
#define MAX_WRITE_IOV            1024u
#define SOCKET_BUFFER            (1024 * 1024) /* the kernel caps it at net.core.wmem_max */
#define RETRY_US                 2000          /* another sink reads the image: look again */
#define LOG_INTERVAL_US          (60 * G_USEC_PER_SEC)
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
    VhuDisplayDmabufScanout2 dmabuf;
  } body;
  gsize body_len;
  guint8 *data; /* owned payload: the cursor image, or an UPDATE's pixels once copied */
  gsize data_len;
  /* UPDATE without data: the pixels are read from @image at (src_x, src_y),
   * or from @backing (row h at offset + h * image->stride) in image->format. */
  VgpuImage *image;
  VgpuBacking *backing;
  guint32 src_x, src_y;
  guint64 offset;
  gint marked; /* atomic: holds a read mark on the backing, or on the image */
  int fd;      /* sent with the message (DMABUF_SCANOUT2), owned; -1: none */
} OutMsg;

typedef struct {
  guint32 request;
  guint scanout;    /* DMABUF_UPDATE: of which scanout */
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
  /* A guest-memory blob scanout: its pixels are these pages. */
  VgpuBacking *blob;
  guint64 blob_offset;
  /* The scanout's pages as a dmabuf (the blob's, else the image's memfd),
   * made on its first flush to a display taking dmabufs; -1: none yet. */
  int dmabuf_fd;
  gboolean dmabuf_failed; /* it cannot be one: pixels */
} ScanoutState;

struct _VgpuQemuDisplay {
  VgpuDevice *dev;
  VgpuQemuDisplayOptions options;
  Conn *conn;
  ScanoutState scanouts[VGPU_MAX_SCANOUTS];
  gint64 warn_last; /* rate limit of warnings about what the display sends */
  guint64 warn_suppressed;
  GMutex stats_lock; /* the writer threads update stats too */
  VgpuQemuDisplayStats stats;
  GMutex writers_lock;
  GCond writers_cond;
  guint writers;   /* writer threads still running (they use the stats) */
  gboolean dmabuf; /* scanouts go as dmabufs where the display can take them */
};

struct _Conn {
  gint refcount;
  int fd;
  VgpuQemuDisplay *qd;            /* device lock; NULL once closed */
  VgpuQemuDisplay *stats;         /* for the writer: valid until it has exited */
  VgpuQemuDisplayOptions options; /* the lock, usable after the client went */
  GMainContext *context;
  GSource *read_source;
  gint64 hold_us;

  /* Shared with the writer thread. */
  GMutex lock;
  GCond cond;
  GQueue out;      /* OutMsg; at most one UPDATE, and only when it can go at once */
  OutMsg *current; /* the message being written */
  VgpuRect damage[VGPU_MAX_SCANOUTS]; /* scanout coordinates: to be read when sent */
  guint n_damaged;
  guint next_damage;
  gboolean blocked; /* the writer waits for the display to read */
  gboolean closing;
  gboolean writer_gone; /* the writer failed and exited: nothing is written any more */

  /* Device lock: */
  GQueue expects;  /* Expect, in request order */
  GQueue deferred; /* DeferredEdid until features are known */
  gboolean negotiated;
  guint64 features;
  guint32 sent_width[VGPU_MAX_SCANOUTS], sent_height[VGPU_MAX_SCANOUTS];
  gboolean dmabuf_sent[VGPU_MAX_SCANOUTS];     /* the scanout's DMABUF_SCANOUT2 is out */
  gboolean dmabuf_inflight[VGPU_MAX_SCANOUTS]; /* a DMABUF_UPDATE awaits its reply */
  VgpuRect dmabuf_held[VGPU_MAX_SCANOUTS];     /* damage held until then (c->lock) */
  MsgHeader rx_hdr;
  gsize rx_got;
  guint8 rx_buf[MAX_REPLY_SIZE];
};

static void conn_close(VgpuQemuDisplay *qd, const char *why);

/* Callbacks on the context and the writer lock through the connection: the
 * client may be gone, which they find out with the lock held (c->qd NULL). */
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

/* A warning about the display's side of the protocol: the first, then one a
 * minute with the number suppressed meanwhile (device lock held). */
G_GNUC_PRINTF(2, 3)
static void
display_warning(VgpuQemuDisplay *qd, const char *format, ...)
{
  gint64 now = g_get_monotonic_time();
  g_autofree char *msg = NULL;
  va_list args;

  if (qd->warn_last != 0 && now - qd->warn_last < LOG_INTERVAL_US) {
    qd->warn_suppressed++;
    return;
  }
  va_start(args, format);
  msg = g_strdup_vprintf(format, args);
  va_end(args);
  if (qd->warn_suppressed)
    g_warning("display socket: %s (%" G_GUINT64_FORMAT " similar suppressed)", msg,
              qd->warn_suppressed);
  else
    g_warning("display socket: %s", msg);
  qd->warn_last = now;
  qd->warn_suppressed = 0;
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
  m->fd = -1;
  if (body_len)
    memcpy(&m->body, body, body_len);
  m->body_len = body_len;
  return m;
}

/* Ends the read mark of @m, once, from whichever thread gets there first
 * (the writer, or conn_close under the device lock).  The references stay:
 * what the writer still reads stays mapped. */
static void
out_msg_unmark(OutMsg *m)
{
  if (!g_atomic_int_compare_and_exchange(&m->marked, TRUE, FALSE))
    return;
  if (m->backing)
    vgpu_backing_end_read(m->backing);
  else
    vgpu_image_end_read(m->image);
}

static void
out_msg_free(OutMsg *m)
{
  out_msg_unmark(m);
  g_clear_pointer(&m->backing, vgpu_backing_unref);
  g_clear_pointer(&m->image, vgpu_image_unref);
  if (m->fd >= 0)
    close(m->fd);
  g_free(m->data);
  g_free(m);
}

static void
free_queue(GQueue *q)
{
  OutMsg *m;

  while ((m = g_queue_pop_head(q)))
    out_msg_free(m);
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
  g_assert(g_queue_is_empty(&c->out) && c->current == NULL);
  if (c->fd >= 0)
    close(c->fd);
  g_main_context_unref(c->context);
  g_mutex_clear(&c->lock);
  g_cond_clear(&c->cond);
  g_free(c);
}

static gboolean
is_update(const OutMsg *m)
{
  return m->hdr.request == VHU_DISPLAY_UPDATE;
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

/* Moves the queued messages of scanout @id whose request is in @kinds to
 * @dropped (c->lock held). */
static void
take_queued(Conn *c, guint id, const guint32 *kinds, GQueue *dropped)
{
  GList *l = c->out.head;

  while (l) {
    GList *next = l->next;
    OutMsg *m = l->data;

    for (const guint32 *k = kinds; *k && m->scanout == id; k++) {
      if (m->hdr.request == *k) {
        g_queue_delete_link(&c->out, l);
        g_queue_push_tail(dropped, m);
        break;
      }
    }
    l = next;
  }
}

/* Scanout @id changed at @r (scanout coordinates); the writer reads the
 * pixels when it gets to them (c->lock held). */
static gboolean
add_damage(Conn *c, guint id, const VgpuRect *r)
{
  VgpuRect *d = &c->damage[id];
  gboolean merged = d->width != 0 && d->height != 0;

  if (!merged)
    c->n_damaged++;
  vgpu_rect_union(d, r, d);
  g_cond_signal(&c->cond);
  return merged;
}

static void
clear_damage(Conn *c, guint id)
{
  if (c->damage[id].width && c->damage[id].height)
    c->n_damaged--;
  c->damage[id] = (VgpuRect){ 0, 0, 0, 0 };
}

/* Turns the queued UPDATE, which reads a resource, into damage: the writer
 * is about to wait for the display and must not keep the resource from the
 * guest meanwhile (c->lock held; frees into @dropped). */
static void
queued_updates_to_damage(Conn *c, GQueue *dropped)
{
  GList *l = c->out.head;
  guint merged = 0;

  while (l) {
    GList *next = l->next;
    OutMsg *m = l->data;

    if (is_update(m)) {
      VgpuRect r
          = { m->body.update.x, m->body.update.y, m->body.update.width, m->body.update.height };

      merged += add_damage(c, m->scanout, &r);
      g_queue_delete_link(&c->out, l);
      g_queue_push_tail(dropped, m);
    }
    l = next;
  }
  if (merged)
    stats_add(c->stats, &c->stats->stats.coalesced, merged);
}

/* Queues @m for the writer (device lock held).  A SCANOUT supersedes what
 * is queued for its scanout, a cursor image the queued cursor messages of
 * its scanout, a position the queued position: the queue stays short
 * however far behind the display is.  FALSE past the bound (a bug). */
static gboolean
conn_push(Conn *c, OutMsg *m)
{
  static const guint32 scanout_kinds[] = { VHU_DISPLAY_SCANOUT, VHU_DISPLAY_UPDATE, 0 };
  static const guint32 cursor_kinds[]
      = { VHU_DISPLAY_CURSOR_UPDATE, VHU_DISPLAY_CURSOR_POS, VHU_DISPLAY_CURSOR_POS_HIDE, 0 };
  static const guint32 pos_kinds[] = { VHU_DISPLAY_CURSOR_POS, VHU_DISPLAY_CURSOR_POS_HIDE, 0 };
  static const guint32 pos_barrier[] = { VHU_DISPLAY_CURSOR_UPDATE, 0 };
  GQueue dropped = G_QUEUE_INIT;
  gboolean ok = TRUE;
  OutMsg *old;

  g_mutex_lock(&c->lock);
  switch (m->hdr.request) {
    case VHU_DISPLAY_SCANOUT:
      take_queued(c, m->scanout, scanout_kinds, &dropped);
      clear_damage(c, m->scanout);
      break;
    case VHU_DISPLAY_CURSOR_UPDATE:
      take_queued(c, m->scanout, cursor_kinds, &dropped);
      break;
    case VHU_DISPLAY_CURSOR_POS:
    case VHU_DISPLAY_CURSOR_POS_HIDE:
      if ((old = last_for_scanout(c, m->scanout, pos_kinds, pos_barrier))) {
        old->hdr.request = m->hdr.request;
        old->body.pos = m->body.pos;
        g_queue_push_tail(&dropped, g_steal_pointer(&m));
      }
      break;
    default:
      break;
  }
  if (!m) {
    /* merged */
  } else if (c->writer_gone || c->closing) {
    g_queue_push_tail(&dropped, m); /* the read watch sees the shutdown and closes */
  } else if (c->out.length >= MAX_QUEUED_MSGS) {
    g_queue_push_tail(&dropped, m);
    ok = FALSE;
  } else {
    g_queue_push_tail(&c->out, m);
    g_cond_signal(&c->cond);
  }
  g_mutex_unlock(&c->lock);
  free_queue(&dropped);
  return ok;
}

/* Queues on the current connection. */
static void
send_msg(VgpuQemuDisplay *qd, OutMsg *m)
{
  if (!qd->conn) {
    out_msg_free(m);
    return;
  }
  if (!conn_push(qd->conn, m))
    conn_close(qd, "too many queued messages");
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

static gsize
update_row_bytes(const OutMsg *m)
{
  return (gsize)m->body.update.width * 4u;
}

/* Rows [@y0, height) of UPDATE @m as X8R8G8B8 into @dst (stride: the row). */
static void
copy_rows(const OutMsg *m, guint32 y0, guint8 *dst)
{
  const VhuDisplayUpdate *u = &m->body.update;
  const VgpuImage *img = m->image;
  gsize row = update_row_bytes(m);
  guint32 n = u->height - y0;

  if (!m->backing && !vgpu_format_is_xrgb(img->format)) {
    vgpu_format_convert(img->format, img->data, img->width, img->height, img->stride, m->src_x,
                        m->src_y + y0, u->width, n, PIXMAN_x8r8g8b8, dst, (guint)row);
  } else if (!m->backing) {
    for (guint32 h = 0; h < n; h++)
      memcpy(dst + (gsize)h * row,
             img->data + (gsize)(m->src_y + y0 + h) * img->stride + (gsize)m->src_x * 4u, row);
  } else if (vgpu_format_is_xrgb(img->format)) {
    for (guint32 h = 0; h < n; h++)
      vgpu_backing_read(m->backing, m->offset + (guint64)(y0 + h) * img->stride,
                        dst + (gsize)h * row, row);
  } else {
    /* Guest rows are gathered a bounded chunk at a time, then converted. */
    guint chunk = (guint)MAX(1u, CONVERT_CHUNK / row);
    g_autofree guint8 *gathered = g_malloc((gsize)MIN(chunk, n) * row);

    for (guint32 y = 0; y < n; y += chunk) {
      guint k = MIN(chunk, n - y);

      for (guint h = 0; h < k; h++)
        vgpu_backing_read(m->backing, m->offset + (guint64)(y0 + y + h) * img->stride,
                          gathered + (gsize)h * row, row);
      vgpu_format_convert(img->format, gathered, u->width, k, (guint)row, 0, 0, u->width, k,
                          PIXMAN_x8r8g8b8, dst + (gsize)y * row, (guint)row);
    }
  }
}

/* The iovecs of message @m, skipping its first @sent bytes. */
static void
build_iov(OutMsg *m, gsize sent, GArray *iov)
{
  const VhuDisplayUpdate *u = &m->body.update;
  struct iovec pieces[3] = { { &m->hdr, sizeof m->hdr }, { &m->body, m->body_len } };
  guint n_pieces = 2;

  g_array_set_size(iov, 0);
  if (m->data)
    pieces[n_pieces++] = (struct iovec){ m->data, m->data_len };
  for (guint i = 0; i < n_pieces; i++) {
    struct iovec v = pieces[i];

    if (sent >= v.iov_len) {
      sent -= v.iov_len;
      continue;
    }
    v.iov_base = (guint8 *)v.iov_base + sent;
    v.iov_len -= sent;
    sent = 0;
    g_array_append_val(iov, v);
  }
  if (is_update(m) && !m->data) {
    /* X8R8G8B8-compatible pixels where they are (sent == 0 here). */
    const VgpuImage *img = m->image;
    gsize row = update_row_bytes(m);

    if (m->backing && row == img->stride) {
      vgpu_backing_append_iov(m->backing, m->offset, row * u->height, iov);
    } else if (m->backing) {
      for (guint32 h = 0; h < u->height; h++)
        vgpu_backing_append_iov(m->backing, m->offset + (guint64)h * img->stride, row, iov);
    } else {
      guint8 *src = img->data + (gsize)m->src_y * img->stride + (gsize)m->src_x * 4u;

      for (guint32 h = 0; h < u->height; h++) {
        struct iovec v = { src + (gsize)h * img->stride, row };

        if (row == img->stride) {
          v.iov_len = row * u->height; /* whole rows: one piece */
          h = u->height;
        }
        g_array_append_val(iov, v);
      }
    }
  }
}

/* The rest of UPDATE @m, from its first unsent row on, goes into a buffer of
 * its own and the resource is released: the display may take its time.
 * Zeroes instead of pixels when @lost (the frontend took the guest memory
 * away): the stream stays in step.  Returns the bytes of the message now
 * before m->data (its new start). */
static gsize
copy_rest(OutMsg *m, gsize sent, gboolean lost)
{
  gsize head = sizeof m->hdr + m->body_len, row = update_row_bytes(m);
  guint32 y0 = (guint32)((sent > head ? sent - head : 0) / row);

  m->data_len = (gsize)(m->body.update.height - y0) * row;
  m->data = lost ? g_malloc0(m->data_len) : g_malloc(m->data_len);
  if (!lost)
    copy_rows(m, y0, m->data);
  out_msg_unmark(m); /* the references stay until the message is freed */
  return head + (gsize)y0 * row;
}

/* Converts all pixels of UPDATE @m into a buffer of its own.  The mark stays
 * until the message is written or the hold time is over, as for the other
 * formats: whoever sees the mark end (a wake of the device) sees the writer
 * done with the message. */
static void
convert_all(OutMsg *m)
{
  m->data_len = (gsize)m->body.update.height * update_row_bytes(m);
  m->data = g_malloc(m->data_len);
  copy_rows(m, 0, m->data);
}

/* Waits until the socket takes more, until @deadline (-1: no limit).  A
 * writer about to wait without limit first turns the queued UPDATE into
 * damage so that it does not keep its resource from the guest. */
static void
wait_writable(Conn *c, gint64 deadline)
{
  GQueue dropped = G_QUEUE_INIT;
  struct pollfd p = { c->fd, POLLOUT, 0 };
  int timeout = -1;

  g_mutex_lock(&c->lock);
  c->blocked = TRUE;
  if (deadline < 0)
    queued_updates_to_damage(c, &dropped);
  g_mutex_unlock(&c->lock);
  free_queue(&dropped);
  if (deadline >= 0)
    timeout = (int)MAX(1, (deadline - g_get_monotonic_time() + 999) / 1000);
  /* POLLHUP (conn_close shut the socket down) ends the wait too; the next
   * write reports it. */
  (void)poll(&p, 1, timeout);
}

/* Writes all of @m.  Pixels are sent from where they are while the display
 * takes them; a display that takes nothing for hold_us while a resource is
 * read gets the rest from a copy, and then as slowly as it likes. */
static gboolean
write_msg(Conn *c, OutMsg *m, const char **why)
{
  g_autoptr(GArray) arr = g_array_new(FALSE, FALSE, sizeof(struct iovec));
  gsize head = sizeof m->hdr + m->body_len, total = sizeof m->hdr + m->hdr.size, sent = 0;
  gint64 deadline = g_get_monotonic_time() + c->hold_us;
  struct iovec *iov;
  guint n;

  if (is_update(m) && !vgpu_format_is_xrgb(m->image->format))
    convert_all(m);
  build_iov(m, 0, arr);
  iov = (struct iovec *)(void *)arr->data;
  n = arr->len;
  while (sent < total) {
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = MIN(n, MAX_WRITE_IOV) };
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(sizeof(int))];
    } control;
    ssize_t r;

    if (m->fd >= 0) {
      /* With the first byte that goes: the fd then belongs to the display. */
      struct cmsghdr *cm;

      memset(&control, 0, sizeof control);
      mh.msg_control = control.buf;
      mh.msg_controllen = sizeof control.buf;
      cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cm), &m->fd, sizeof(int));
    }
    r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    int err = r < 0 ? errno : 0;
    gboolean marked = g_atomic_int_get(&m->marked), lost = FALSE;
    gsize base;

    if (r > 0) {
      sent += (gsize)r;
      iov_advance(&iov, &n, (gsize)r);
      if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
      }
      continue;
    }
    if (err == EINTR)
      continue;
    if ((err == EAGAIN || err == EWOULDBLOCK) && marked && g_get_monotonic_time() >= deadline) {
      stats_add(c->stats, &c->stats->stats.copied, 1);
      if (m->data) {
        out_msg_unmark(m); /* converted: the copy exists already */
        continue;
      }
    } else if (err == EAGAIN || err == EWOULDBLOCK) {
      wait_writable(c, marked ? deadline : -1);
      continue;
    } else if (err == EFAULT && is_update(m) && !m->data) {
      /* Retires the truncated region (vhu-guard.h), so the rings report it. */
      vhu_guard_probe_iov(iov, (guint)mh.msg_iovlen);
      g_warning("display socket: the guest memory of an update went away; sending black");
      lost = TRUE;
    } else {
      /* A display that went away is no error: the read watch closes. */
      *why = err == EPIPE || err == ECONNRESET ? NULL : r < 0 ? g_strerror(err) : "no progress";
      return FALSE;
    }
    /* The rest from the first unsent row on, in a buffer of our own. */
    base = copy_rest(m, sent, lost);
    build_iov(m, sent <= head ? sent : head + (sent - base), arr);
    iov = (struct iovec *)(void *)arr->data;
    n = arr->len;
  }
  return TRUE;
}

/* The next message to write: queued ones first, then an UPDATE for the
 * damage of a scanout, read from its image as it is now (device lock taken
 * for that).  NULL when the connection closes. */
static OutMsg *damage_msg(Conn *c, gboolean *retry);

static OutMsg *
next_msg(Conn *c)
{
  gboolean retry = FALSE;
  OutMsg *m = NULL;

  g_mutex_lock(&c->lock);
  c->blocked = FALSE;
  while (!c->closing) {
    if ((m = g_queue_pop_head(&c->out)))
      break;
    if (c->n_damaged && !retry) {
      g_mutex_unlock(&c->lock);
      m = damage_msg(c, &retry);
      g_mutex_lock(&c->lock);
      if (m)
        break;
      continue;
    }
    if (retry)
      g_cond_wait_until(&c->cond, &c->lock, g_get_monotonic_time() + RETRY_US);
    else
      g_cond_wait(&c->cond, &c->lock);
    retry = FALSE;
  }
  if (m && c->closing) {
    g_mutex_unlock(&c->lock);
    out_msg_free(m);
    return NULL;
  }
  c->current = m;
  g_mutex_unlock(&c->lock);
  return m;
}

static void
writer_exit(VgpuQemuDisplay *qd)
{
  g_mutex_lock(&qd->writers_lock);
  qd->writers--;
  g_cond_broadcast(&qd->writers_cond);
  g_mutex_unlock(&qd->writers_lock);
}

static gpointer
writer_main(gpointer data)
{
  Conn *c = data;
  VgpuQemuDisplay *qd = c->stats;
  const char *why = NULL;
  GQueue rest = G_QUEUE_INIT;
  gboolean closing, ok = TRUE;
  OutMsg *m;

  while (ok && (m = next_msg(c))) {
    ok = write_msg(c, m, &why);
    if (ok) {
      stats_add(qd, &qd->stats.messages, 1);
      if (is_update(m)) {
        stats_add(qd, &qd->stats.updates, 1);
        stats_add(qd, &qd->stats.update_bytes, m->hdr.size - m->body_len);
      } else if (m->hdr.request == VHU_DISPLAY_DMABUF_UPDATE) {
        stats_add(qd, &qd->stats.dmabuf_updates, 1);
      } else if (m->hdr.request == VHU_DISPLAY_DMABUF_SCANOUT2) {
        stats_add(qd, &qd->stats.dmabuf_scanouts, 1);
      }
    }
    g_mutex_lock(&c->lock);
    c->current = NULL;
    c->blocked = FALSE; /* before the mark ends: who sees the wake sees a free writer */
    g_mutex_unlock(&c->lock);
    out_msg_free(m);
  }
  g_mutex_lock(&c->lock);
  rest = c->out;
  g_queue_init(&c->out);
  for (guint i = 0; i < VGPU_MAX_SCANOUTS; i++)
    clear_damage(c, i);
  closing = c->closing;
  c->writer_gone = TRUE;
  g_mutex_unlock(&c->lock);
  free_queue(&rest);
  if (!ok && !closing) {
    /* The read watch sees the shutdown and closes the connection. */
    if (why) {
      g_warning("display socket: %s; dropping the connection", why);
      stats_add(qd, &qd->stats.dropped, 1);
    }
    shutdown(c->fd, SHUT_RDWR);
  }
  conn_unref(c);
  writer_exit(qd);
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

/* The display is done with scanout @id's last DMABUF_UPDATE (replied, or
 * not in time): the damage held meanwhile goes to the writer. */
static void
dmabuf_done(Conn *c, guint id)
{
  VgpuRect held;

  if (!c->dmabuf_inflight[id])
    return;
  c->dmabuf_inflight[id] = FALSE;
  g_mutex_lock(&c->lock);
  held = c->dmabuf_held[id];
  c->dmabuf_held[id] = (VgpuRect){ 0, 0, 0, 0 };
  if (held.width && held.height && !c->closing && !c->writer_gone)
    add_damage(c, id, &held);
  g_mutex_unlock(&c->lock);
}

static gboolean expect_timeout_cb(gpointer data);
static void timeout_data_free(gpointer data);

/* Waits for a reply to @request, answering @query with it (device lock). */
static Expect *
expect_push(VgpuQemuDisplay *qd, Conn *c, guint32 request, VgpuQuery *query)
{
  Expect *e = g_new0(Expect, 1);
  TimeoutData *td = g_new0(TimeoutData, 1);

  e->request = request;
  e->query = query;
  e->timeout = g_timeout_source_new(qd->options.reply_timeout_ms);
  td->conn = conn_ref(c);
  td->expect = e;
  g_source_set_callback(e->timeout, expect_timeout_cb, td, timeout_data_free);
  g_source_attach(e->timeout, c->context);
  g_queue_push_tail(&c->expects, e);
  return e;
}

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
    } else if (e->request == VHU_DISPLAY_DMABUF_UPDATE) {
      display_warning(qd, "no answer to DMABUF_UPDATE in time; sending the next one");
      dmabuf_done(c, e->scanout);
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
  expect_push(qd, qd->conn, m->hdr.request, query);
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
    display_warning(qd, "unexpected request %u from the display; ignored", hdr->request);
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
    display_warning(qd, "unexpected reply %u; ignored", hdr->request);
    return;
  }
  while (TRUE) {
    Expect *head = g_queue_pop_head(&c->expects);

    if (head == e)
      break;
    if (head->request == VHU_DISPLAY_DMABUF_UPDATE)
      dmabuf_done(c, head->scanout);
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
        display_warning(qd, "GET_PROTOCOL_FEATURES reply of %u bytes", hdr->size);
      negotiated(qd, c, offered, TRUE);
    } else if (e->request == VHU_DISPLAY_DMABUF_UPDATE) {
      dmabuf_done(c, e->scanout);
    } else {
      answer_query(qd, &e->query, payload, hdr->size);
    }
  }
  expect_free(e);
}

/* Reads what the display sent, a bounded number of reads per dispatch: a
 * display flooding its socket cannot keep the device lock (or the context)
 * to itself. */
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
  for (guint i = 0; keep && i < MAX_READS_PER_DISPATCH; i++) {
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
      conn_close(qd, r == 0 || errno == ECONNRESET ? NULL : g_strerror(errno));
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
      if (qd->conn != c)
        keep = FALSE; /* closed meanwhile */
    }
  }
  conn_unlock(c);
  return keep ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

/* ------------------------------------------------------------------------ */
/* Connection lifetime (device lock held) */

/* Never waits for the writer: it finds the connection closing (or its
 * socket shut down) and exits on its own.  The read marks it holds end here,
 * so that nothing of the device is held once this returns. */
static void
conn_close(VgpuQemuDisplay *qd, const char *why)
{
  Conn *c = qd->conn;
  GQueue rest;
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

  g_mutex_lock(&c->lock);
  c->closing = TRUE;
  rest = c->out;
  g_queue_init(&c->out);
  for (guint i = 0; i < VGPU_MAX_SCANOUTS; i++)
    clear_damage(c, i);
  if (c->current)
    out_msg_unmark(c->current);
  g_cond_signal(&c->cond);
  g_mutex_unlock(&c->lock);
  free_queue(&rest);
  shutdown(c->fd, SHUT_RDWR); /* wakes a writer waiting for the display */

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

/* An UPDATE of @rect (scanout coordinates) of scanout @id, read from
 * @image at (@src_x, @src_y), marked as read (c->lock or device lock held).
 * The caller sets the pixel source. */
static OutMsg *
update_msg_new(guint id, const VgpuRect *rect, VgpuImage *image, guint32 src_x, guint32 src_y)
{
  OutMsg *m = out_msg_new(VHU_DISPLAY_UPDATE, id, NULL, 0);

  m->body.update = (VhuDisplayUpdate){ id, rect->x, rect->y, rect->width, rect->height };
  m->body_len = sizeof m->body.update;
  m->hdr.size = (guint32)(sizeof m->body.update + (gsize)rect->width * rect->height * 4u);
  m->image = vgpu_image_ref(image);
  m->src_x = src_x;
  m->src_y = src_y;
  return m;
}

/* TRUE when scanout @id goes to this display as a dmabuf (device lock):
 * the client was asked to, the display negotiated DMABUF2, udmabuf exists
 * and the scanout's pages could be exported (tried once per scanout). */
static gboolean
dmabuf_wanted(VgpuQemuDisplay *qd, Conn *c, guint id)
{
  return qd->dmabuf && c->negotiated && (c->features & (1ull << VHU_DISPLAY_PF_DMABUF2))
         && !qd->scanouts[id].dmabuf_failed && vgpu_udmabuf_available();
}

static gboolean
scanout_dmabuf(VgpuQemuDisplay *qd, Conn *c, guint id)
{
  ScanoutState *s = &qd->scanouts[id];
  g_autoptr(GError) error = NULL;

  if (!dmabuf_wanted(qd, c, id))
    return FALSE;
  if (s->dmabuf_fd >= 0)
    return TRUE;
  /* Once per scanout (SET_SCANOUT), under the device lock: pinning the
   * pages is the one cost, then flushes are a 32-byte message. */
  if (s->blob)
    s->dmabuf_fd = vgpu_udmabuf_from_backing(s->blob, s->blob_offset,
                                             (guint64)s->image->stride * s->image->height, &error);
  else
    s->dmabuf_fd = vgpu_udmabuf_from_image(s->image, &error);
  if (s->dmabuf_fd < 0) {
    g_info("display socket: scanout %u is not a dmabuf (%s); sending pixels", id, error->message);
    s->dmabuf_failed = TRUE;
    return FALSE;
  }
  return TRUE;
}

/* The next dmabuf message of scanout @id for damage @r (device lock):
 * DMABUF_SCANOUT2 first (the damage stays for the update), then one
 * DMABUF_UPDATE at a time, the next one's damage held until the display
 * replied (QEMU replies once its window shows the buffer).  NULL: nothing
 * to send now (*retry: look again soon). */
static OutMsg *
dmabuf_msg(VgpuQemuDisplay *qd, Conn *c, guint id, const VgpuRect *r, gboolean *retry)
{
  ScanoutState *s = &qd->scanouts[id];
  VhuDisplayUpdate u = { id, r->x, r->y, r->width, r->height };
  OutMsg *m;

  if (!c->dmabuf_sent[id]) {
    VhuDisplayDmabufScanout2 d = {
      .dmabuf
      = { id, s->rect.x, s->rect.y, s->rect.width, s->rect.height, s->image->width,
          s->image->height, s->image->stride, 0, vgpu_format_to_drm_fourcc(s->image->format) },
      .modifier = VHU_DISPLAY_MODIFIER_LINEAR,
    };

    m = out_msg_new(VHU_DISPLAY_DMABUF_SCANOUT2, id, &d, sizeof d);
    m->fd = fcntl(s->dmabuf_fd, F_DUPFD_CLOEXEC, 3);
    if (m->fd < 0) {
      g_info("display socket: dmabuf of scanout %u: %s; sending pixels", id, g_strerror(errno));
      s->dmabuf_failed = TRUE;
      out_msg_free(m);
      m = NULL;
    } else {
      c->dmabuf_sent[id] = TRUE;
    }
    g_mutex_lock(&c->lock);
    add_damage(c, id, r);
    g_mutex_unlock(&c->lock);
    return m;
  }
  if (c->dmabuf_inflight[id]) {
    g_mutex_lock(&c->lock);
    vgpu_rect_union(&c->dmabuf_held[id], r, &c->dmabuf_held[id]);
    g_mutex_unlock(&c->lock);
    stats_add(qd, &qd->stats.coalesced, 1);
    return NULL;
  }
  if (!s->blob) {
    /* The display reads the image: pending transfers go in first. */
    vgpu_device_sync_images(qd->dev);
    if (vgpu_image_is_busy(s->image)) {
      g_mutex_lock(&c->lock);
      add_damage(c, id, r);
      g_mutex_unlock(&c->lock);
      *retry = TRUE;
      return NULL;
    }
  }
  m = out_msg_new(VHU_DISPLAY_DMABUF_UPDATE, id, &u, sizeof u);
  expect_push(qd, c, VHU_DISPLAY_DMABUF_UPDATE, NULL)->scanout = id;
  c->dmabuf_inflight[id] = TRUE;
  return m;
}

static OutMsg *
damage_msg(Conn *c, gboolean *retry)
{
  VgpuQemuDisplay *qd;
  OutMsg *m = NULL;
  ScanoutState *s;
  VgpuRect r, area;
  guint id;

  conn_lock(c);
  qd = c->qd;
  g_mutex_lock(&c->lock);
  if (!qd || c->closing || c->n_damaged == 0) {
    g_mutex_unlock(&c->lock);
    conn_unlock(c);
    return NULL;
  }
  /* Round robin: a scanout that changes all the time does not starve the others. */
  for (id = c->next_damage % VGPU_MAX_SCANOUTS; c->damage[id].width == 0;
       id = (id + 1) % VGPU_MAX_SCANOUTS)
    ;
  r = c->damage[id];
  clear_damage(c, id);
  c->next_damage = id + 1;
  g_mutex_unlock(&c->lock);

  s = &qd->scanouts[id];
  area = (VgpuRect){ 0, 0, s->rect.width, s->rect.height };
  if (s->image && vgpu_rect_intersect(&r, &area, &r) && scanout_dmabuf(qd, c, id)) {
    m = dmabuf_msg(qd, c, id, &r, retry);
  } else if (s->image && vgpu_rect_intersect(&r, &area, &r)) {
    /* Pending transfers go into the images first; one another sink still
     * reads is left as it is, and may miss them. */
    vgpu_device_sync_images(qd->dev);
    if (!vgpu_image_is_busy(s->image)) {
      m = update_msg_new(id, &r, s->image, s->rect.x + r.x, s->rect.y + r.y);
      vgpu_image_begin_read(m->image);
      m->marked = TRUE;
    } else {
      /* Look again when that sink may have let go. */
      g_mutex_lock(&c->lock);
      add_damage(c, id, &r);
      g_mutex_unlock(&c->lock);
      *retry = TRUE;
    }
  }
  conn_unlock(c);
  return m;
}

/* The scanout's geometry and full damage, and its cursor, on the current
 * connection. */
static void
replay_scanout(VgpuQemuDisplay *qd, guint id)
{
  ScanoutState *s = &qd->scanouts[id];

  if (s->image) {
    Conn *c = qd->conn;
    VhuDisplayScanout so = { id, s->rect.width, s->rect.height };
    VgpuRect all = { 0, 0, s->rect.width, s->rect.height };

    c->sent_width[id] = s->rect.width;
    c->sent_height[id] = s->rect.height;
    send_msg(qd, out_msg_new(VHU_DISPLAY_SCANOUT, id, &so, sizeof so));
    if (!qd->conn)
      return;
    g_mutex_lock(&c->lock);
    if (!c->closing && !c->writer_gone)
      add_damage(c, id, &all);
    g_mutex_unlock(&c->lock);
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

/* A connected stream socket, or FALSE with @error. */
static gboolean
check_socket(int fd, GError **error)
{
  int type = 0, listening = 0;
  socklen_t len = sizeof type;

  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
    int err = errno;

    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "display socket: fd %d: %s", fd,
                err == ENOTSOCK ? "not a socket" : g_strerror(err));
    return FALSE;
  }
  len = sizeof listening;
  if (type != SOCK_STREAM
      || (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "display socket: fd %d is not a connected stream socket (%s)", fd,
                type != SOCK_STREAM ? "wrong socket type" : "listening");
    return FALSE;
  }
  return TRUE;
}

gboolean
vgpu_qemu_display_set_socket(VgpuQemuDisplay *qd, int fd, GError **error)
{
  int sndbuf = SOCKET_BUFFER;
  Conn *c;

  if (!check_socket(fd, error)) {
    close(fd);
    return FALSE;
  }
  conn_close(qd, NULL);
  /* Fewer, longer writes: the writer sleeps and wakes about 40 times per
   * 8 MB frame with the default buffer.  Writes never block (MSG_DONTWAIT,
   * see write_msg): the file status flags, shared with the sender of the
   * fd, stay as they are. */
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

  c = g_new0(Conn, 1);
  c->refcount = 2; /* ours, the writer's */
  c->fd = fd;
  c->qd = qd;
  c->stats = qd;
  c->options = qd->options;
  c->context = g_main_context_ref(qd->options.context);
  c->hold_us = (gint64)qd->options.write_timeout_ms * 1000;
  g_mutex_init(&c->lock);
  g_cond_init(&c->cond);
  g_queue_init(&c->out);
  g_queue_init(&c->expects);
  g_queue_init(&c->deferred);
  g_mutex_lock(&qd->writers_lock);
  qd->writers++;
  g_mutex_unlock(&qd->writers_lock);
  g_thread_unref(g_thread_new("vgpu-display", writer_main, c));
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
  for (guint i = 0; i < VGPU_MAX_SCANOUTS && qd->conn; i++)
    replay_scanout(qd, i);
}

void
vgpu_qemu_display_close(VgpuQemuDisplay *qd)
{
  conn_close(qd, NULL);
}

void
vgpu_qemu_display_wait_writers(VgpuQemuDisplay *qd)
{
  g_mutex_lock(&qd->writers_lock);
  while (qd->writers > 0)
    g_cond_wait(&qd->writers_cond, &qd->writers_lock);
  g_mutex_unlock(&qd->writers_lock);
}

/* ------------------------------------------------------------------------ */
/* Sink interface (device lock held) */

/* The scanout shows something else: its dmabuf (the display keeps its own
 * fd of it as long as it shows it) and blob go. */
static void
scanout_reset_dmabuf(ScanoutState *s)
{
  if (s->dmabuf_fd >= 0)
    close(s->dmabuf_fd);
  s->dmabuf_fd = -1;
  s->dmabuf_failed = FALSE;
  g_clear_pointer(&s->blob, vgpu_backing_unref);
}

static void
sink_set_scanout(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect)
{
  VgpuQemuDisplay *qd = sink;
  ScanoutState *s = &qd->scanouts[id];
  Conn *c = qd->conn;
  VhuDisplayScanout so = { id, 0, 0 };

  g_clear_pointer(&s->image, vgpu_image_unref);
  scanout_reset_dmabuf(s);
  if (c && c->dmabuf_sent[id]) {
    c->dmabuf_sent[id] = FALSE;
    if (!image) {
      /* No fd: the display drops its dmabuf (SCANOUT 0x0 may not). */
      VhuDisplayDmabufScanout2 off = { .dmabuf = { .scanout_id = id } };

      send_msg(qd, out_msg_new(VHU_DISPLAY_DMABUF_SCANOUT, id, &off, sizeof off.dmabuf));
      if (!(c = qd->conn))
        return;
    }
  }
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

static void
sink_scanout_blob(gpointer sink, guint id, VgpuBacking *backing, guint64 offset, guint32 stride)
{
  VgpuQemuDisplay *qd = sink;
  ScanoutState *s = &qd->scanouts[id];

  guint64 head = (guint64)s->rect.y * stride + (guint64)s->rect.x * 4u;

  scanout_reset_dmabuf(s);
  if (qd->conn)
    qd->conn->dmabuf_sent[id] = FALSE;
  /* @offset is the scanout rectangle's first pixel; the dmabuf starts at
   * the image's. */
  if (s->image && stride == s->image->stride && offset >= head) {
    s->blob = vgpu_backing_ref(backing);
    s->blob_offset = offset - head;
  }
}

/* Hands a flush of scanout @id at (@dst_x, @dst_y) to the writer: as a
 * message that reads its pixels where they are when the writer is idle, as
 * damage otherwise (the writer reads the newest pixels
 * when it gets there, merged with later flushes).  @backing: the pixels are
 * in guest memory at @offset. */
static void
queue_update(VgpuQemuDisplay *qd, guint id, VgpuImage *image, VgpuBacking *backing, guint64 offset,
             const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  Conn *c = qd->conn;
  VgpuRect dst = { dst_x, dst_y, rect->width, rect->height };
  gboolean direct = TRUE, merged = FALSE;

  if (!c || rect->width == 0 || rect->height == 0)
    return;
  if (c->sent_width[id] == 0) {
    /* QEMU has no surface for a scanout it was never told about. */
    ScanoutState *s = &qd->scanouts[id];
    VhuDisplayScanout so = { id, s->rect.width, s->rect.height };

    c->sent_width[id] = s->rect.width;
    c->sent_height[id] = s->rect.height;
    send_msg(qd, out_msg_new(VHU_DISPLAY_SCANOUT, id, &so, sizeof so));
    if (!qd->conn)
      return;
  }
  g_mutex_lock(&c->lock);
  if (c->closing || c->writer_gone) {
    g_mutex_unlock(&c->lock);
    return;
  }
  /* Only to an idle writer: one busy with a message may block on it at any
   * moment, and this one would then keep its resource until it turns it
   * into damage. */
  if (c->current || c->blocked || c->n_damaged || dmabuf_wanted(qd, c, id))
    direct = FALSE;
  for (GList *l = c->out.head; l && direct; l = l->next)
    direct = !is_update(l->data);
  if (direct) {
    OutMsg *m = update_msg_new(id, &dst, image, rect->x, rect->y);

    if (backing) {
      m->backing = vgpu_backing_ref(backing);
      m->offset = offset;
      vgpu_backing_begin_read(backing);
    } else {
      vgpu_image_begin_read(image);
    }
    m->marked = TRUE;
    g_queue_push_tail(&c->out, m);
    g_cond_signal(&c->cond);
  } else {
    merged = add_damage(c, id, &dst);
  }
  g_mutex_unlock(&c->lock);
  if (merged)
    stats_add(qd, &qd->stats.coalesced, 1);
}

static void
sink_update(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
            guint32 dst_y)
{
  queue_update(sink, id, image, NULL, 0, rect, dst_x, dst_y);
}

static void
sink_update_guest(gpointer sink, guint id, VgpuImage *image, VgpuBacking *backing, guint64 offset,
                  const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  queue_update(sink, id, image, backing, offset, rect, dst_x, dst_y);
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

  if (!c || c->expects.length + c->deferred.length >= MAX_EXPECTED)
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
  .scanout_blob = sink_scanout_blob,
};

/* ------------------------------------------------------------------------ */

VgpuQemuDisplay *
vgpu_qemu_display_new(VgpuDevice *dev, const VgpuQemuDisplayOptions *options)
{
  VgpuQemuDisplay *qd;

  g_return_val_if_fail(options->context && options->lock && options->unlock, NULL);
  qd = g_new0(VgpuQemuDisplay, 1);
  qd->dev = dev;
  qd->options = *options;
  g_main_context_ref(qd->options.context);
  if (qd->options.reply_timeout_ms == 0)
    qd->options.reply_timeout_ms = DEFAULT_REPLY_TIMEOUT_MS;
  if (qd->options.write_timeout_ms == 0)
    qd->options.write_timeout_ms = DEFAULT_HOLD_MS;
  g_mutex_init(&qd->stats_lock);
  g_mutex_init(&qd->writers_lock);
  g_cond_init(&qd->writers_cond);
  for (guint i = 0; i < VGPU_MAX_SCANOUTS; i++)
    qd->scanouts[i].dmabuf_fd = -1;
  vgpu_device_add_sink(dev, &sink_iface, qd);
  return qd;
}

void
vgpu_qemu_display_free(VgpuQemuDisplay *qd)
{
  if (!qd)
    return;
  if (qd->conn) {
    qd->options.lock(qd->options.lock_data);
    conn_close(qd, NULL);
    qd->options.unlock(qd->options.lock_data);
  }
  vgpu_qemu_display_wait_writers(qd);
  vgpu_device_remove_sink(qd->dev, qd);
  for (guint i = 0; i < VGPU_MAX_SCANOUTS; i++) {
    g_clear_pointer(&qd->scanouts[i].image, vgpu_image_unref);
    scanout_reset_dmabuf(&qd->scanouts[i]);
    g_free(qd->scanouts[i].cursor);
  }
  g_main_context_unref(qd->options.context);
  g_mutex_clear(&qd->stats_lock);
  g_mutex_clear(&qd->writers_lock);
  g_cond_clear(&qd->writers_cond);
  g_free(qd);
}

void
vgpu_qemu_display_set_dmabuf(VgpuQemuDisplay *qd, gboolean dmabuf)
{
  qd->dmabuf = dmabuf;
}

void
vgpu_qemu_display_get_stats(VgpuQemuDisplay *qd, VgpuQemuDisplayStats *stats)
{
  g_mutex_lock(&qd->stats_lock);
  *stats = qd->stats;
  g_mutex_unlock(&qd->stats_lock);
}
