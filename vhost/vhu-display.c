/* vhu-display.c: the frontend end of the vhost-user-gpu display socket.
 *
 * One thread per server runs a poll loop over the current connection and a
 * wake-up eventfd.  The thread alone reads, replies and closes the
 * connection; attach/detach/free hand it a new fd (or none) through the lock
 * and wait until it has switched, so no fd is ever used after close.  The
 * peer is a GPU backend under test: every size, id and rectangle it sends is
 * checked, a malformed message is counted in stats.errors, and a message that
 * leaves the stream unusable (oversized, truncated, stalled) drops the
 * connection. */
#include "vhu-display.h"

#include <errno.h>
#include <gio/gio.h>
#include <linux/virtio_gpu.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PAYLOAD     (64u << 20) /* a 4K UPDATE is 33 MB */
#define MAX_DIM         16384u
#define MAX_FB_BYTES    (256u << 20)
#define IO_TIMEOUT_MS   5000
#define MAX_FDS         8u
#define HDR_SIZE        12u
#define EDID_BLOCK_SIZE 128u

typedef struct __attribute__((packed)) {
  guint32 request;
  guint32 flags;
  guint32 size;
} DisplayHeader;

typedef struct {
  guint width, height; /* 0x0: disabled */
  guint32 *fb;
  gboolean cursor_set;
  gboolean cursor_visible;
  guint cursor_x, cursor_y;
  guint32 cursor[VHU_DISPLAY_CURSOR_SIZE * VHU_DISPLAY_CURSOR_SIZE];
  gboolean dmabuf;
  VhuDisplayDmabufScanout2 dmabuf_info;
  int dmabuf_fd; /* the scanout's dmabuf, mapped read-only at dmabuf_map; -1 */
  const guint8 *dmabuf_map;
  gsize dmabuf_size;
  int b, g, r; /* byte of blue, green and red in one of its pixels */
} Scanout;

struct _VhuDisplayServer {
  VhuDisplayConfig config;
  GThread *thread;
  int wake_fd;
  GMutex lock;
  GCond cond;
  /* Under lock. */
  gboolean quit;
  int pending_fd;
  guint64 generation, applied_generation;
  VhuDisplayStats stats;
  Scanout scanouts[VHU_DISPLAY_MAX_SCANOUTS];
  /* Display thread only. */
  int conn_fd;
  guint8 *buf;
  gsize buf_cap;
};

typedef struct {
  DisplayHeader hdr;
  const guint8 *payload;
  int fds[MAX_FDS];
  guint n_fds;
} DisplayMsg;

/* --- I/O (display thread) ------------------------------------------------ */

typedef enum {
  IO_OK,
  IO_EOF,   /* orderly close before a message */
  IO_ABORT, /* woken up: the connection is being replaced */
  IO_ERROR,
} IoResult;

static void
collect_fds(struct msghdr *mh, DisplayMsg *msg)
{
  for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
    gsize n;

    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (gsize i = 0; i < n; i++) {
      int fd;

      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (msg->n_fds < MAX_FDS)
        msg->fds[msg->n_fds++] = fd;
      else
        close(fd);
    }
  }
}

static void
close_msg_fds(DisplayMsg *msg)
{
  for (guint i = 0; i < msg->n_fds; i++)
    close(msg->fds[i]);
  msg->n_fds = 0;
}

/* Polls the connection and the wake-up fd.  IO_OK when @events is ready. */
static IoResult
wait_conn(VhuDisplayServer *ds, short events, gint64 deadline)
{
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = ds->conn_fd, .events = events },
      { .fd = ds->wake_fd, .events = POLLIN },
    };
    int timeout = -1;
    int r;

    if (deadline >= 0) {
      gint64 left = deadline - g_get_monotonic_time();

      if (left <= 0)
        return IO_ERROR;
      timeout = (int)MIN((left + 999) / 1000, G_MAXINT);
    }
    r = poll(pfd, 2, timeout);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return IO_ERROR;
    if (pfd[1].revents != 0)
      return IO_ABORT;
    if (pfd[0].revents != 0)
      return IO_OK;
  }
}

/* Reads exactly @len bytes.  The first byte of a message may take forever
 * (@deadline < 0 at a boundary); after it the rest must come in time. */
static IoResult
read_exact(VhuDisplayServer *ds, guint8 *buf, gsize len, DisplayMsg *msg, gint64 *deadline,
           gboolean at_boundary)
{
  gsize got = 0;

  while (got < len) {
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(16 * sizeof(int))];
    } control;
    struct iovec iov = { .iov_base = buf + got, .iov_len = len - got };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t r;

    mh.msg_control = control.buf;
    mh.msg_controllen = sizeof control.buf;
    r = recvmsg(ds->conn_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0) {
      IoResult w;

      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return at_boundary && got == 0 && errno == ECONNRESET ? IO_EOF : IO_ERROR;
      w = wait_conn(ds, POLLIN, *deadline);
      if (w != IO_OK)
        return w;
      continue;
    }
    collect_fds(&mh, msg);
    if (r == 0)
      return at_boundary && got == 0 ? IO_EOF : IO_ERROR;
    if (*deadline < 0)
      *deadline = g_get_monotonic_time() + (gint64)IO_TIMEOUT_MS * 1000;
    at_boundary = FALSE;
    got += (gsize)r;
  }
  return IO_OK;
}

static gboolean
send_reply(VhuDisplayServer *ds, guint32 request, const void *payload, gsize size)
{
  DisplayHeader hdr
      = { .request = request, .flags = VHU_DISPLAY_FLAG_REPLY, .size = (guint32)size };
  struct iovec iov[2] = {
    { .iov_base = &hdr, .iov_len = sizeof hdr },
    { .iov_base = (void *)payload, .iov_len = size },
  };
  gint64 deadline = g_get_monotonic_time() + (gint64)IO_TIMEOUT_MS * 1000;
  gsize skip = 0, total = sizeof hdr + size;

  while (skip < total) {
    struct iovec v[2];
    int n = 0;
    gsize off = skip;
    ssize_t w;

    for (int i = 0; i < 2; i++) {
      if (off >= iov[i].iov_len) {
        off -= iov[i].iov_len;
        continue;
      }
      v[n].iov_base = (guint8 *)iov[i].iov_base + off;
      v[n].iov_len = iov[i].iov_len - off;
      off = 0;
      n++;
    }
    w = sendmsg(ds->conn_fd, &(struct msghdr){ .msg_iov = v, .msg_iovlen = n },
                MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_conn(ds, POLLOUT, deadline) == IO_OK)
        continue;
      return FALSE;
    }
    skip += (gsize)w;
  }
  return TRUE;
}

/* --- message handlers (display thread, lock held) ------------------------ */

static void
count_error(VhuDisplayServer *ds, const char *what, guint32 request)
{
  ds->stats.errors++;
  g_message("display socket: %s (request %u)", what, request);
}

static Scanout *
scanout_for(VhuDisplayServer *ds, guint32 id)
{
  return id < ds->config.num_scanouts ? &ds->scanouts[id] : NULL;
}

static void
fill_display_info(VhuDisplayServer *ds, struct virtio_gpu_resp_display_info *info)
{
  memset(info, 0, sizeof *info);
  info->hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
  for (guint i = 0; i < ds->config.num_scanouts; i++) {
    info->pmodes[i].r.width = ds->config.width;
    info->pmodes[i].r.height = ds->config.height;
    info->pmodes[i].enabled = 1;
  }
}

static void
put_le16(guint8 *p, guint v)
{
  p[0] = v & 0xff;
  p[1] = (v >> 8) & 0xff;
}

/* An EDID 1.3 base block with one detailed timing for @w x @h at 60 Hz
 * (reduced blanking) and a monitor name. */
static void
make_edid(guint8 *e, guint w, guint h)
{
  static const guint8 header[8] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0 };
  static const guint8 srgb[10] = { 0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54 };
  const guint hblank = 160, vblank = 30, hso = 48, hsw = 32, vso = 3, vsw = 5;
  guint8 *d = e + 54;
  guint64 clock;
  guint8 sum = 0;

  w = MIN(w, 4095u);
  h = MIN(h, 4095u);
  memset(e, 0, EDID_BLOCK_SIZE);
  memcpy(e, header, sizeof header);
  /* Manufacturer "GVH": three 5-bit letters, big endian. */
  e[8] = (guint8)((('G' - '@') << 2) | (('V' - '@') >> 3));
  e[9] = (guint8)((('V' - '@') << 5) | ('H' - '@'));
  put_le16(e + 10, 1);
  e[16] = 1;  /* week */
  e[17] = 34; /* 2024 */
  e[18] = 1;
  e[19] = 3;
  e[20] = 0x80; /* digital input */
  e[21] = 30;
  e[22] = 20;
  e[23] = 120;  /* gamma 2.2 */
  e[24] = 0x0a; /* RGB, first detailed timing is preferred */
  memcpy(e + 25, srgb, sizeof srgb);
  for (guint i = 38; i < 54; i++)
    e[i] = 1; /* standard timings unused */

  clock = ((guint64)(w + hblank) * (h + vblank) * 60 + 5000) / 10000;
  put_le16(d, (guint)MIN(clock, (guint64)0xffff));
  d[2] = w & 0xff;
  d[3] = hblank & 0xff;
  d[4] = (guint8)(((w >> 8) << 4) | (hblank >> 8));
  d[5] = h & 0xff;
  d[6] = vblank & 0xff;
  d[7] = (guint8)(((h >> 8) << 4) | (vblank >> 8));
  d[8] = hso;
  d[9] = hsw;
  d[10] = (guint8)((vso << 4) | vsw);
  d[11] = 0;
  d[12] = 0x2c; /* 300 mm */
  d[13] = 0xc8; /* 200 mm */
  d[14] = 0x10;
  d[17] = 0x1e; /* digital separate sync, +hsync */

  d = e + 72; /* monitor name */
  d[3] = 0xfc;
  memcpy(d + 5, "gst-vhost\n   ", 13);
  e[90 + 3] = 0x10; /* dummy descriptors */
  e[108 + 3] = 0x10;
  for (guint i = 0; i < EDID_BLOCK_SIZE - 1; i++)
    sum += e[i];
  e[127] = (guint8)(0x100 - sum);
}

/* Replies are built under the lock and sent after it is released. */
typedef struct {
  gboolean send;
  guint32 request;
  gsize size;
  union {
    guint64 u64;
    struct virtio_gpu_resp_display_info info;
    struct virtio_gpu_resp_edid edid;
  } u;
} Reply;

static void
handle_edid(VhuDisplayServer *ds, const DisplayMsg *msg, Reply *reply)
{
  VhuDisplayEdidRequest req;

  ds->stats.edid_requests++;
  if (msg->hdr.size != sizeof req) {
    count_error(ds, "GET_EDID with a bad size", msg->hdr.request);
    return;
  }
  memcpy(&req, msg->payload, sizeof req);
  memset(&reply->u.edid, 0, sizeof reply->u.edid);
  if (scanout_for(ds, req.scanout_id) == NULL) {
    count_error(ds, "GET_EDID for an invalid scanout", msg->hdr.request);
    if (!ds->config.answer_invalid_edid)
      return; /* QEMU does not answer either */
    reply->u.edid.hdr.type = VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
  } else {
    reply->u.edid.hdr.type = VIRTIO_GPU_RESP_OK_EDID;
    reply->u.edid.size = EDID_BLOCK_SIZE;
    make_edid(reply->u.edid.edid, ds->config.width, ds->config.height);
  }
  reply->send = TRUE;
  reply->size = sizeof reply->u.edid;
}

static void
dmabuf_unmap(Scanout *so)
{
  if (so->dmabuf_map)
    munmap((void *)so->dmabuf_map, so->dmabuf_size);
  if (so->dmabuf_fd >= 0)
    close(so->dmabuf_fd);
  so->dmabuf_map = NULL;
  so->dmabuf_fd = -1;
  so->dmabuf = FALSE;
}

static void
handle_scanout(VhuDisplayServer *ds, const DisplayMsg *msg)
{
  VhuDisplayScanout s;
  Scanout *so;

  ds->stats.scanouts++;
  if (msg->hdr.size != sizeof s) {
    count_error(ds, "SCANOUT with a bad size", msg->hdr.request);
    return;
  }
  memcpy(&s, msg->payload, sizeof s);
  so = scanout_for(ds, s.scanout_id);
  if (so == NULL) {
    count_error(ds, "SCANOUT for an invalid scanout", msg->hdr.request);
    return;
  }
  dmabuf_unmap(so);
  g_clear_pointer(&so->fb, g_free);
  so->width = so->height = 0;
  if (s.width == 0 || s.height == 0)
    return; /* disabled */
  if (s.width > MAX_DIM || s.height > MAX_DIM || (guint64)s.width * s.height * 4 > MAX_FB_BYTES) {
    count_error(ds, "SCANOUT too large", msg->hdr.request);
    return;
  }
  so->fb = g_try_malloc0((gsize)s.width * s.height * 4);
  if (so->fb == NULL) {
    count_error(ds, "no memory for a framebuffer", msg->hdr.request);
    return;
  }
  so->width = s.width;
  so->height = s.height;
}

static void
handle_update(VhuDisplayServer *ds, const DisplayMsg *msg)
{
  VhuDisplayUpdate u;
  Scanout *so;
  guint32 x_end, y_end;
  guint64 bytes;

  ds->stats.updates++;
  g_cond_broadcast(&ds->cond);
  if (msg->hdr.size < sizeof u) {
    count_error(ds, "UPDATE shorter than its header", msg->hdr.request);
    return;
  }
  memcpy(&u, msg->payload, sizeof u);
  so = scanout_for(ds, u.scanout_id);
  if (!g_uint64_checked_mul(&bytes, u.width, u.height) || !g_uint64_checked_mul(&bytes, bytes, 4))
    bytes = G_MAXUINT64;
  if (so == NULL || so->fb == NULL) {
    count_error(ds, "UPDATE for a disabled or invalid scanout", msg->hdr.request);
    return;
  }
  if (!g_uint_checked_add(&x_end, u.x, u.width) || !g_uint_checked_add(&y_end, u.y, u.height)
      || x_end > so->width || y_end > so->height) {
    count_error(ds, "UPDATE rectangle outside the scanout", msg->hdr.request);
    return;
  }
  if (bytes != msg->hdr.size - sizeof u) {
    count_error(ds, "UPDATE payload does not match its rectangle", msg->hdr.request);
    return;
  }
  for (guint row = 0; row < u.height; row++)
    memcpy(so->fb + (gsize)(u.y + row) * so->width + u.x,
           msg->payload + sizeof u + (gsize)row * u.width * 4, (gsize)u.width * 4);
  ds->stats.update_bytes += bytes;
}

static void
handle_cursor(VhuDisplayServer *ds, const DisplayMsg *msg)
{
  VhuDisplayCursorPos pos;
  Scanout *so;
  gboolean update = msg->hdr.request == VHU_DISPLAY_CURSOR_UPDATE;
  gsize want = update ? sizeof(VhuDisplayCursorUpdate) : sizeof pos;

  if (update)
    ds->stats.cursor_updates++;
  else
    ds->stats.cursor_moves++;
  if (msg->hdr.size != want) {
    count_error(ds, "cursor message with a bad size", msg->hdr.request);
    return;
  }
  memcpy(&pos, msg->payload, sizeof pos);
  so = scanout_for(ds, pos.scanout_id);
  if (so == NULL) {
    count_error(ds, "cursor message for an invalid scanout", msg->hdr.request);
    return;
  }
  so->cursor_set = TRUE;
  so->cursor_x = pos.x;
  so->cursor_y = pos.y;
  so->cursor_visible = msg->hdr.request != VHU_DISPLAY_CURSOR_POS_HIDE;
  if (update)
    memcpy(so->cursor, msg->payload + offsetof(VhuDisplayCursorUpdate, data), sizeof so->cursor);
}

/* Where blue, green and red are in a pixel of @fourcc; FALSE if unknown. */
static gboolean
fourcc_layout(gint32 fourcc, Scanout *so)
{
  static const struct {
    gint32 fourcc;
    int b, g, r;
  } layouts[] = {
    { VHU_DISPLAY_FOURCC_XRGB8888, 0, 1, 2 }, { VHU_DISPLAY_FOURCC_ARGB8888, 0, 1, 2 },
    { VHU_DISPLAY_FOURCC_BGRX8888, 3, 2, 1 }, { VHU_DISPLAY_FOURCC_BGRA8888, 3, 2, 1 },
    { VHU_DISPLAY_FOURCC_XBGR8888, 2, 1, 0 }, { VHU_DISPLAY_FOURCC_ABGR8888, 2, 1, 0 },
    { VHU_DISPLAY_FOURCC_RGBX8888, 1, 2, 3 }, { VHU_DISPLAY_FOURCC_RGBA8888, 1, 2, 3 },
  };

  for (guint i = 0; i < G_N_ELEMENTS(layouts); i++) {
    if (layouts[i].fourcc == fourcc) {
      so->b = layouts[i].b;
      so->g = layouts[i].g;
      so->r = layouts[i].r;
      return TRUE;
    }
  }
  return FALSE;
}

/* Checks what a DMABUF_SCANOUT says against its fd, and maps it: the
 * framebuffer becomes its region, filled by DMABUF_UPDATEs. */
static const char *
dmabuf_map(Scanout *so, const VhuDisplayDmabufScanout *d, int fd)
{
  guint64 need, x_end, y_end;
  off_t size = lseek(fd, 0, SEEK_END);
  void *map;

  if (d->fd_width == 0 || d->fd_height == 0 || d->fd_width > MAX_DIM || d->fd_height > MAX_DIM
      || d->fd_stride / 4 < d->fd_width || d->width == 0 || d->height == 0)
    return "DMABUF_SCANOUT with a bad geometry";
  x_end = (guint64)d->x + d->width;
  y_end = (guint64)d->y + d->height;
  need = (guint64)d->fd_stride * d->fd_height;
  if (x_end > d->fd_width || y_end > d->fd_height)
    return "DMABUF_SCANOUT region outside its buffer";
  if ((guint64)d->width * d->height * 4 > MAX_FB_BYTES || need > MAX_FB_BYTES)
    return "DMABUF_SCANOUT too large";
  if (!fourcc_layout(d->fd_drm_fourcc, so))
    return "DMABUF_SCANOUT with an unknown fourcc";
  if (size < 0 || (guint64)size < need)
    return "DMABUF_SCANOUT buffer smaller than its geometry";
  map = mmap(NULL, (gsize)need, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED)
    return "DMABUF_SCANOUT buffer cannot be mapped";
  so->fb = g_try_malloc0((gsize)d->width * d->height * 4);
  if (so->fb == NULL) {
    munmap(map, (gsize)need);
    return "no memory for a framebuffer";
  }
  so->dmabuf_map = map;
  so->dmabuf_size = (gsize)need;
  so->width = d->width;
  so->height = d->height;
  return NULL;
}

static void
handle_dmabuf_scanout(VhuDisplayServer *ds, DisplayMsg *msg)
{
  gboolean v2 = msg->hdr.request == VHU_DISPLAY_DMABUF_SCANOUT2;
  gsize want = v2 ? sizeof(VhuDisplayDmabufScanout2) : sizeof(VhuDisplayDmabufScanout);
  VhuDisplayDmabufScanout2 info = { 0 };
  const char *bad;
  Scanout *so;

  ds->stats.dmabuf_scanouts++;
  if (msg->hdr.size != want || msg->n_fds > 1) {
    count_error(ds, "DMABUF_SCANOUT with a bad size or fd count", msg->hdr.request);
    return;
  }
  memcpy(&info, msg->payload, want);
  so = scanout_for(ds, info.dmabuf.scanout_id);
  if (so == NULL) {
    count_error(ds, "DMABUF_SCANOUT for an invalid scanout", msg->hdr.request);
    return;
  }
  dmabuf_unmap(so);
  g_clear_pointer(&so->fb, g_free);
  so->width = so->height = 0;
  so->dmabuf_info = info;
  if (msg->n_fds == 0)
    return; /* disabled */
  if (v2 && info.modifier != VHU_DISPLAY_MODIFIER_LINEAR) {
    count_error(ds, "DMABUF_SCANOUT2 with a modifier we cannot read", msg->hdr.request);
    return;
  }
  if ((bad = dmabuf_map(so, &info.dmabuf, msg->fds[0]))) {
    count_error(ds, bad, msg->hdr.request);
    return;
  }
  /* Ours now: it stays open while it is shown. */
  so->dmabuf_fd = msg->fds[0];
  msg->n_fds = 0;
  so->dmabuf = TRUE;
}

/* Copies the updated rectangle out of the dmabuf into the framebuffer. */
static void
handle_dmabuf_update(VhuDisplayServer *ds, const DisplayMsg *msg)
{
  VhuDisplayUpdate u;
  const VhuDisplayDmabufScanout *d;
  guint64 x_end, y_end;
  Scanout *so;

  ds->stats.dmabuf_updates++;
  g_cond_broadcast(&ds->cond);
  if (msg->hdr.size != sizeof u) {
    count_error(ds, "DMABUF_UPDATE with a bad size", msg->hdr.request);
    return;
  }
  memcpy(&u, msg->payload, sizeof u);
  so = scanout_for(ds, u.scanout_id);
  if (so == NULL) {
    count_error(ds, "DMABUF_UPDATE for an invalid scanout", msg->hdr.request);
    return;
  }
  if (!so->dmabuf)
    return; /* nothing shown: QEMU answers all the same */
  x_end = (guint64)u.x + u.width;
  y_end = (guint64)u.y + u.height;
  if (x_end > so->width || y_end > so->height) {
    count_error(ds, "DMABUF_UPDATE rectangle outside the scanout", msg->hdr.request);
    return;
  }
  d = &so->dmabuf_info.dmabuf;
  for (guint y = u.y; y < y_end; y++) {
    const guint8 *row = so->dmabuf_map + (gsize)(d->y + y) * d->fd_stride + (gsize)d->x * 4;
    guint32 *dst = so->fb + (gsize)y * so->width;

    for (guint x = u.x; x < x_end; x++) {
      const guint8 *p = row + (gsize)x * 4;

      dst[x] = 0xff000000u | (guint32)p[so->r] << 16 | (guint32)p[so->g] << 8 | p[so->b];
    }
  }
}

/* Handles one message; fills @reply when one is due. */
static void
dispatch(VhuDisplayServer *ds, DisplayMsg *msg, Reply *reply)
{
  reply->request = msg->hdr.request;
  ds->stats.messages++;
  switch (msg->hdr.request) {
    case VHU_DISPLAY_GET_PROTOCOL_FEATURES:
      ds->stats.protocol_features_requests++;
      reply->u.u64 = ds->config.protocol_features;
      reply->size = sizeof reply->u.u64;
      reply->send = TRUE;
      break;
    case VHU_DISPLAY_SET_PROTOCOL_FEATURES:
      if (msg->hdr.size != sizeof(guint64)) {
        count_error(ds, "SET_PROTOCOL_FEATURES with a bad size", msg->hdr.request);
        break;
      }
      memcpy(&ds->stats.negotiated_features, msg->payload, sizeof(guint64));
      ds->stats.set_protocol_features++;
      if (ds->stats.negotiated_features & ~ds->config.protocol_features)
        count_error(ds, "SET_PROTOCOL_FEATURES with bits we did not offer", msg->hdr.request);
      break;
    case VHU_DISPLAY_GET_DISPLAY_INFO:
      ds->stats.display_info_requests++;
      fill_display_info(ds, &reply->u.info);
      reply->size = sizeof reply->u.info;
      reply->send = TRUE;
      break;
    case VHU_DISPLAY_GET_EDID:
      handle_edid(ds, msg, reply);
      break;
    case VHU_DISPLAY_SCANOUT:
      handle_scanout(ds, msg);
      break;
    case VHU_DISPLAY_UPDATE:
      handle_update(ds, msg);
      break;
    case VHU_DISPLAY_CURSOR_POS:
    case VHU_DISPLAY_CURSOR_POS_HIDE:
    case VHU_DISPLAY_CURSOR_UPDATE:
      handle_cursor(ds, msg);
      break;
    case VHU_DISPLAY_DMABUF_SCANOUT:
    case VHU_DISPLAY_DMABUF_SCANOUT2:
      handle_dmabuf_scanout(ds, msg);
      break;
    case VHU_DISPLAY_DMABUF_UPDATE:
      /* Answered once the picture is in the framebuffer, as QEMU answers
       * once its window shows it. */
      handle_dmabuf_update(ds, msg);
      reply->size = 0;
      reply->send = TRUE;
      break;
    default:
      count_error(ds, "unknown request", msg->hdr.request);
      break;
  }
}

/* --- the thread ---------------------------------------------------------- */

static void
drop_connection(VhuDisplayServer *ds)
{
  if (ds->conn_fd >= 0)
    close(ds->conn_fd);
  ds->conn_fd = -1;
}

/* Reads and handles one message.  IO_EOF or IO_ERROR: the connection must go. */
static IoResult
serve_one(VhuDisplayServer *ds)
{
  DisplayMsg msg = { .n_fds = 0 };
  gint64 deadline = -1;
  Reply reply = { .send = FALSE };
  IoResult r;

  r = read_exact(ds, (guint8 *)&msg.hdr, sizeof msg.hdr, &msg, &deadline, TRUE);
  if (r == IO_OK && msg.hdr.size > MAX_PAYLOAD)
    r = IO_ERROR;
  if (r == IO_OK && msg.hdr.size > ds->buf_cap) {
    guint8 *nb = g_try_realloc(ds->buf, msg.hdr.size);

    if (nb == NULL)
      r = IO_ERROR;
    else {
      ds->buf = nb;
      ds->buf_cap = msg.hdr.size;
    }
  }
  if (r == IO_OK && msg.hdr.size > 0)
    r = read_exact(ds, ds->buf, msg.hdr.size, &msg, &deadline, FALSE);
  if (r == IO_OK) {
    msg.payload = ds->buf;
    g_mutex_lock(&ds->lock);
    dispatch(ds, &msg, &reply);
    g_mutex_unlock(&ds->lock);
  } else if (r == IO_ERROR) {
    g_mutex_lock(&ds->lock);
    count_error(ds, "oversized, truncated or stalled message; dropping the connection",
                msg.hdr.request);
    g_mutex_unlock(&ds->lock);
  }
  close_msg_fds(&msg);
  if (r == IO_OK && reply.send && !send_reply(ds, reply.request, &reply.u, reply.size)) {
    g_message("display socket: cannot send a reply; dropping the connection");
    return IO_ERROR;
  }
  return r;
}

static gpointer
display_thread(gpointer data)
{
  VhuDisplayServer *ds = data;

  for (;;) {
    struct pollfd pfd[2];
    int n = 1;

    g_mutex_lock(&ds->lock);
    if (ds->quit) {
      g_mutex_unlock(&ds->lock);
      break;
    }
    if (ds->applied_generation != ds->generation) {
      drop_connection(ds);
      ds->conn_fd = ds->pending_fd;
      ds->pending_fd = -1;
      ds->applied_generation = ds->generation;
      g_cond_broadcast(&ds->cond);
    }
    g_mutex_unlock(&ds->lock);

    pfd[0] = (struct pollfd){ .fd = ds->wake_fd, .events = POLLIN };
    if (ds->conn_fd >= 0)
      pfd[n++] = (struct pollfd){ .fd = ds->conn_fd, .events = POLLIN };
    if (poll(pfd, n, -1) < 0)
      continue;
    if (pfd[0].revents != 0) {
      guint64 v;

      if (read(ds->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN)
        g_warning("display server: wake-up eventfd: %s", g_strerror(errno));
      continue;
    }
    if (n == 2 && pfd[1].revents != 0) {
      IoResult r = serve_one(ds);

      if (r == IO_EOF || r == IO_ERROR)
        drop_connection(ds);
    }
  }
  drop_connection(ds);
  return NULL;
}

static void
wake(VhuDisplayServer *ds)
{
  guint64 one = 1;

  if (write(ds->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
    g_warning("display server: wake-up eventfd: %s", g_strerror(errno));
}

/* Makes the thread drop its connection and take @fd (or none), and waits
 * until it has. */
static void
hand_over(VhuDisplayServer *ds, int fd)
{
  guint64 gen;

  g_mutex_lock(&ds->lock);
  if (ds->pending_fd >= 0)
    close(ds->pending_fd);
  ds->pending_fd = fd;
  gen = ++ds->generation;
  if (fd >= 0)
    ds->stats.negotiated_features = 0; /* a new connection negotiates afresh */
  wake(ds);
  while (ds->applied_generation < gen)
    g_cond_wait(&ds->cond, &ds->lock);
  g_mutex_unlock(&ds->lock);
}

/* --- public API ---------------------------------------------------------- */

VhuDisplayServer *
vhu_display_server_new(const VhuDisplayConfig *config)
{
  VhuDisplayServer *ds;

  g_return_val_if_fail(
      config->num_scanouts >= 1 && config->num_scanouts <= VHU_DISPLAY_MAX_SCANOUTS, NULL);
  ds = g_new0(VhuDisplayServer, 1);
  ds->config = *config;
  ds->pending_fd = -1;
  ds->conn_fd = -1;
  for (guint i = 0; i < VHU_DISPLAY_MAX_SCANOUTS; i++)
    ds->scanouts[i].dmabuf_fd = -1;
  g_mutex_init(&ds->lock);
  g_cond_init(&ds->cond);
  ds->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (ds->wake_fd < 0)
    g_error("display server: eventfd: %s", g_strerror(errno));
  ds->thread = g_thread_new("vhu-display", display_thread, ds);
  return ds;
}

void
vhu_display_server_free(VhuDisplayServer *ds)
{
  if (ds == NULL)
    return;
  g_mutex_lock(&ds->lock);
  ds->quit = TRUE;
  wake(ds);
  g_mutex_unlock(&ds->lock);
  g_thread_join(ds->thread);
  if (ds->pending_fd >= 0)
    close(ds->pending_fd);
  close(ds->wake_fd);
  for (guint i = 0; i < VHU_DISPLAY_MAX_SCANOUTS; i++) {
    dmabuf_unmap(&ds->scanouts[i]);
    g_free(ds->scanouts[i].fb);
  }
  g_free(ds->buf);
  g_mutex_clear(&ds->lock);
  g_cond_clear(&ds->cond);
  g_free(ds);
}

gboolean
vhu_display_server_attach(VhuDisplayServer *ds, VhuFrontend *fe, GError **error)
{
  int sv[2];
  gboolean ok;

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    int errsv = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "socketpair: %s",
                g_strerror(errsv));
    return FALSE;
  }
  /* Serve our end before the backend can talk on the other one. */
  hand_over(ds, sv[0]);
  ok = vhu_frontend_send(fe, VHU_GPU_SET_SOCKET, 0, NULL, 0, &sv[1], 1, error);
  close(sv[1]);
  if (!ok)
    hand_over(ds, -1);
  return ok;
}

void
vhu_display_server_detach(VhuDisplayServer *ds)
{
  hand_over(ds, -1);
}

void
vhu_display_server_get_stats(VhuDisplayServer *ds, VhuDisplayStats *stats)
{
  g_mutex_lock(&ds->lock);
  *stats = ds->stats;
  g_mutex_unlock(&ds->lock);
}

gboolean
vhu_display_server_wait_updates(VhuDisplayServer *ds, guint64 n, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)MAX(timeout_ms, 0) * 1000;
  gboolean ok;

  g_mutex_lock(&ds->lock);
  while (ds->stats.updates + ds->stats.dmabuf_updates < n) {
    if (!g_cond_wait_until(&ds->cond, &ds->lock, end))
      break;
  }
  ok = ds->stats.updates + ds->stats.dmabuf_updates >= n;
  g_mutex_unlock(&ds->lock);
  return ok;
}

static gboolean
frame_is(const VhuDisplayServer *ds, guint id, const guint32 *pixels, guint width, guint height)
{
  const Scanout *so = &ds->scanouts[id];

  return so->fb != NULL && so->width == width && so->height == height
         && memcmp(so->fb, pixels, (gsize)width * height * 4) == 0;
}

gboolean
vhu_display_server_wait_frame(VhuDisplayServer *ds, guint id, const guint32 *pixels, guint width,
                              guint height, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)MAX(timeout_ms, 0) * 1000;
  gboolean ok;

  g_return_val_if_fail(id < ds->config.num_scanouts, FALSE);
  g_mutex_lock(&ds->lock);
  while (!(ok = frame_is(ds, id, pixels, width, height)))
    if (!g_cond_wait_until(&ds->cond, &ds->lock, end))
      break;
  g_mutex_unlock(&ds->lock);
  return ok;
}

guint32 *
vhu_display_server_get_frame(VhuDisplayServer *ds, guint id, guint *width, guint *height)
{
  guint32 *copy = NULL;

  g_mutex_lock(&ds->lock);
  if (id < ds->config.num_scanouts && ds->scanouts[id].fb != NULL) {
    Scanout *so = &ds->scanouts[id];

    copy = g_memdup2(so->fb, (gsize)so->width * so->height * 4);
    if (width != NULL)
      *width = so->width;
    if (height != NULL)
      *height = so->height;
  }
  g_mutex_unlock(&ds->lock);
  return copy;
}

gboolean
vhu_display_server_get_cursor(VhuDisplayServer *ds, guint id, guint *x, guint *y, gboolean *visible,
                              guint32 *image_64x64)
{
  gboolean ok = FALSE;

  g_mutex_lock(&ds->lock);
  if (id < ds->config.num_scanouts && ds->scanouts[id].cursor_set) {
    Scanout *so = &ds->scanouts[id];

    if (x != NULL)
      *x = so->cursor_x;
    if (y != NULL)
      *y = so->cursor_y;
    if (visible != NULL)
      *visible = so->cursor_visible;
    if (image_64x64 != NULL)
      memcpy(image_64x64, so->cursor, sizeof so->cursor);
    ok = TRUE;
  }
  g_mutex_unlock(&ds->lock);
  return ok;
}
