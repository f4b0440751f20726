/* Tests of the QEMU display-socket client (gpu/vgpu-qemu-display.c) against a
 * scripted peer on a real socketpair: feature negotiation, replies matched to
 * requests, reply timeouts, a display that stops reading for seconds while the
 * guest keeps going, replay on a new socket, sockets of the wrong kind and a
 * misbehaving display.  Every wait is for an event (a response, a message, a
 * wake of the device when the display lets go of a resource), bounded by
 * WAIT_US; no verdict depends on how fast the machine is. */
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "gpu-test-util.h"
#include "test-util.h"
#include "vgpu-device.h"
#include "vgpu-edid.h"
#include "vgpu-qemu-display.h"
#include "vhu-display-proto.h"

#define GPA        0x100000ull
#define GUEST_SIZE (8u << 20)
#define WAIT_US    (5 * G_USEC_PER_SEC)

typedef struct {
  VhuElem elem;
  struct iovec out[1];
  struct iovec in[1];
  guint8 *req;
  guint8 resp[2048] __attribute__((aligned(8)));
} TElem;

typedef struct {
  guint32 request, flags, size;
} __attribute__((packed)) Hdr;

typedef struct {
  GMutex lock; /* the "device lock" */
  GCond cond;
  GMainContext *ctx;
  GMainLoop *loop;
  GThread *thread;
  VgpuDevice *dev;
  VgpuQemuDisplay *qd;
  VhuMemTable *mem;
  int memfd;
  guint8 *guest;
  GPtrArray *done;  /* completed responses (g_bytes) */
  GMutex wake_lock; /* wakes come from the writer thread */
  GCond wake_cond;
  gint wakes;
  int peer; /* our end of the display socket */
} Fixture;

static void
t_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  Fixture *f = data;
  TElem *t = (TElem *)elem;

  g_ptr_array_add(f->done, g_bytes_new(t->resp, len));
  g_cond_broadcast(&f->cond);
  g_free(t->req);
  g_free(t);
}

static void
t_discard(gpointer data, guint qidx, VhuElem *elem)
{
  TElem *t = (TElem *)elem;

  g_free(t->req);
  g_free(t);
}

static void
t_wake(gpointer data)
{
  Fixture *f = data;

  g_mutex_lock(&f->wake_lock);
  g_atomic_int_inc(&f->wakes);
  g_cond_broadcast(&f->wake_cond);
  g_mutex_unlock(&f->wake_lock);
}

static const VgpuDeviceOps ops = { t_complete, t_discard, t_wake };

static void
lock_cb(gpointer data)
{
  g_mutex_lock(data);
}

static void
unlock_cb(gpointer data)
{
  g_mutex_unlock(data);
}

static int
new_peer(Fixture *f)
{
  g_autoptr(GError) error = NULL;
  int sv[2];

  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  g_mutex_lock(&f->lock);
  g_assert_true(vgpu_qemu_display_set_socket(f->qd, sv[1], &error));
  g_mutex_unlock(&f->lock);
  g_assert_no_error(error);
  return sv[0];
}

static void
setup(Fixture *f, gconstpointer data)
{
  VgpuDeviceConfig cfg = { 1, 800, 600, 256u << 20, 0 };
  VgpuQemuDisplayOptions opts = { 0 };
  VhuMemRegionDesc r = { GPA, GUEST_SIZE, 0x7000000000ull, 0 };
  g_autoptr(VhuMemTable) empty = vhu_mem_table_new();
  g_autoptr(GError) error = NULL;

  g_mutex_init(&f->lock);
  g_cond_init(&f->cond);
  g_mutex_init(&f->wake_lock);
  g_cond_init(&f->wake_cond);
  f->done = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  f->memfd = memfd_create("guest", MFD_CLOEXEC);
  g_assert_cmpint(ftruncate(f->memfd, GUEST_SIZE), ==, 0);
  f->guest = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
  f->mem = vhu_mem_table_add(empty, &r, f->memfd, 8, &error);
  g_assert_no_error(error);
  f->ctx = g_main_context_new();
  f->loop = g_main_loop_new(f->ctx, FALSE);
  f->thread = tu_loop_thread_new("display-test", f->loop);
  f->dev = vgpu_device_new(&cfg, &ops, f);
  vgpu_device_set_features(f->dev, VGPU_DEVICE_FEATURES);
  opts.context = f->ctx;
  opts.lock = lock_cb;
  opts.unlock = unlock_cb;
  opts.lock_data = &f->lock;
  opts.reply_timeout_ms = 200;
  opts.write_timeout_ms = 300;
  g_mutex_lock(&f->lock);
  f->qd = vgpu_qemu_display_new(f->dev, &opts);
  g_mutex_unlock(&f->lock);
  f->peer = new_peer(f);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  tu_loop_thread_join(f->thread, f->loop);
  vgpu_qemu_display_free(f->qd);
  vgpu_device_free(f->dev);
  g_main_loop_unref(f->loop);
  g_main_context_unref(f->ctx);
  vhu_mem_table_unref(f->mem);
  munmap(f->guest, GUEST_SIZE);
  close(f->memfd);
  if (f->peer >= 0)
    close(f->peer);
  g_ptr_array_unref(f->done);
  g_mutex_clear(&f->lock);
  g_cond_clear(&f->cond);
  g_mutex_clear(&f->wake_lock);
  g_cond_clear(&f->wake_cond);
}

/* Waits until the device asked to be woken @n times in all. */
static void
wait_wakes(Fixture *f, gint n)
{
  gint64 end = g_get_monotonic_time() + WAIT_US;

  g_mutex_lock(&f->wake_lock);
  while (g_atomic_int_get(&f->wakes) < n)
    g_assert_true(g_cond_wait_until(&f->wake_cond, &f->wake_lock, end));
  g_mutex_unlock(&f->wake_lock);
}

/* Submits a request to queue @qidx under the device lock; returns submit's
 * result. */
static gboolean
submit_q(Fixture *f, guint qidx, const void *req, gsize len)
{
  TElem *t = g_new0(TElem, 1);
  gboolean taken;

  t->req = g_memdup2(req, len);
  t->out[0] = (struct iovec){ t->req, len };
  t->in[0] = (struct iovec){ t->resp, sizeof t->resp };
  t->elem.out_sg = t->out;
  t->elem.out_num = 1;
  t->elem.out_len = len;
  t->elem.in_sg = t->in;
  t->elem.in_num = 1;
  t->elem.in_len = sizeof t->resp;
  t->elem.mem = f->mem;
  g_mutex_lock(&f->lock);
  taken = vgpu_device_submit(f->dev, qidx, &t->elem);
  g_mutex_unlock(&f->lock);
  if (!taken) {
    g_free(t->req);
    g_free(t);
  }
  return taken;
}

static gboolean
submit(Fixture *f, const void *req, gsize len)
{
  return submit_q(f, VGPU_CTRL_QUEUE, req, len);
}

/* Waits until @n responses are done; returns the last one's header type. */
static guint32
wait_done(Fixture *f, guint n, const guint8 **resp)
{
  gint64 end = g_get_monotonic_time() + WAIT_US;
  guint32 type;
  GBytes *b;

  g_mutex_lock(&f->lock);
  while (f->done->len < n)
    g_assert_true(g_cond_wait_until(&f->cond, &f->lock, end));
  b = f->done->pdata[n - 1];
  g_mutex_unlock(&f->lock);
  if (resp)
    *resp = g_bytes_get_data(b, NULL);
  memcpy(&type, g_bytes_get_data(b, NULL), 4);
  return type;
}

/* Submits a control request and waits for its OK_NODATA answer. */
static void
ctrl_ok(Fixture *f, const void *req, gsize len)
{
  guint n = f->done->len;

  g_assert_true(submit(f, req, len));
  g_assert_cmphex(wait_done(f, n + 1, NULL), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

#define CTRL_OK(f, cmd) ctrl_ok((f), &(cmd), sizeof(cmd))

/* Reads exactly @len bytes from the peer, failing after 5 s. */
static void
peer_read(int fd, void *buf, gsize len)
{
  gsize got = 0;

  while (got < len) {
    struct pollfd p = { fd, POLLIN, 0 };
    ssize_t r;

    g_assert_cmpint(poll(&p, 1, 5000), ==, 1);
    r = recv(fd, (guint8 *)buf + got, len - got, 0);
    g_assert_cmpint(r, >, 0);
    got += (gsize)r;
  }
}

/* Reads one message; returns its header, payload in *payload (g_free). */
static Hdr
peer_msg(int fd, guint8 **payload)
{
  Hdr h;
  guint8 *p;

  peer_read(fd, &h, sizeof h);
  g_assert_cmpuint(h.size, <=, 64u << 20);
  p = g_malloc(h.size + 1);
  peer_read(fd, p, h.size);
  if (payload)
    *payload = p;
  else
    g_free(p);
  return h;
}

static void
peer_reply(int fd, guint32 request, const void *payload, guint32 size)
{
  Hdr h = { request, VHU_DISPLAY_FLAG_REPLY, size };

  g_assert_cmpint(send(fd, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
  if (size)
    g_assert_cmpint(send(fd, payload, size, MSG_NOSIGNAL), ==, (gssize)size);
}

/* Answers GET_PROTOCOL_FEATURES with @offered. */
static void
answer_features(int fd, guint64 offered)
{
  Hdr h = peer_msg(fd, NULL);

  g_assert_cmpuint(h.request, ==, VHU_DISPLAY_GET_PROTOCOL_FEATURES);
  peer_reply(fd, h.request, &offered, sizeof offered);
}

static void
expect_set_features(int fd, guint64 offered)
{
  g_autofree guint8 *p = NULL;
  Hdr h = peer_msg(fd, &p);

  g_assert_cmpuint(h.request, ==, VHU_DISPLAY_SET_PROTOCOL_FEATURES);
  g_assert_cmpuint(h.size, ==, 8);
  g_assert_cmphex(*(guint64 *)(void *)p, ==, offered & 3);
}

static void
negotiate(int fd, guint64 offered)
{
  answer_features(fd, offered);
  expect_set_features(fd, offered);
}

/* The next message but SET_PROTOCOL_FEATURES, which may come at any point
 * after the features were answered (it is queued when the reply is read):
 * checked against @offered and counted in *@features_seen. */
static Hdr
peer_msg_skip_features(int fd, guint8 **payload, guint64 offered, guint *features_seen)
{
  while (TRUE) {
    guint8 *p = NULL;
    Hdr h = peer_msg(fd, &p);

    if (h.request != VHU_DISPLAY_SET_PROTOCOL_FEATURES) {
      if (payload)
        *payload = p;
      else
        g_free(p);
      return h;
    }
    g_assert_cmpuint(h.size, ==, 8);
    g_assert_cmphex(*(guint64 *)(void *)p, ==, offered & 3);
    (*features_seen)++;
    g_free(p);
  }
}

/* Checks the @w x @h X8R8G8B8 pixels at @px against pattern @seed at (@x0, @y0). */
static void
check_pattern(const guint8 *px, guint x0, guint y0, guint w, guint h, guint seed)
{
  for (guint y = 0; y < h; y++) {
    for (guint x = 0; x < w; x++) {
      guint32 v;
      guint8 r, g, b;

      memcpy(&v, px + ((gsize)y * w + x) * 4, 4);
      gpu_pattern(x0 + x, y0 + y, seed, &r, &g, &b);
      if ((v & 0xffffff) != ((guint32)r << 16 | (guint32)g << 8 | b))
        g_error("pattern %u pixel (%u,%u): %06x", seed, x0 + x, y0 + y, v & 0xffffff);
    }
  }
}

/* --- tests ----------------------------------------------------------------- */

static void
test_negotiation_and_replies(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_cmd_get_edid ge = gpu_get_edid(0);
  struct virtio_gpu_resp_display_info info = { .hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO };
  struct virtio_gpu_resp_edid edid = { .hdr.type = VIRTIO_GPU_RESP_OK_EDID, .size = 128 };
  const struct virtio_gpu_resp_display_info *got;
  const struct virtio_gpu_resp_edid *got_edid;
  VgpuQemuDisplayStats st;
  g_autofree guint8 *p = NULL;
  Hdr h;

  negotiate(f->peer, 0x7); /* a newer QEMU offering an unknown bit too */
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_cmphex(st.protocol_features, ==, 0x3);
  /* two requests in flight, answered in order */
  g_assert_true(submit(f, &di, sizeof di));
  g_assert_true(submit(f, &ge, sizeof ge));
  h = peer_msg(f->peer, NULL);
  g_assert_cmpuint(h.request, ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  h = peer_msg(f->peer, &p);
  g_assert_cmpuint(h.request, ==, VHU_DISPLAY_GET_EDID);
  g_assert_cmpuint(h.size, ==, 4);
  g_assert_cmpuint(*(guint32 *)(void *)p, ==, 0);
  info.pmodes[0] = (struct virtio_gpu_display_one){ { 0, 0, 1600, 900 }, 1, 0 };
  peer_reply(f->peer, VHU_DISPLAY_GET_DISPLAY_INFO, &info, sizeof info);
  vgpu_edid_generate(1600, 900, 7, edid.edid);
  peer_reply(f->peer, VHU_DISPLAY_GET_EDID, &edid, sizeof edid);
  g_assert_cmphex(wait_done(f, 1, (const guint8 **)&got), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(got->pmodes[0].r.width, ==, 1600);
  g_assert_cmphex(wait_done(f, 2, (const guint8 **)&got_edid), ==, VIRTIO_GPU_RESP_OK_EDID);
  gpu_check_edid(got_edid->edid, 1600, 900);
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_cmpuint(st.replies, ==, 3);
  g_assert_cmpuint(st.timeouts, ==, 0);
}

/* No reply: the request completes from the configuration after the reply
 * timeout; a late reply is matched and dropped. */
static void
test_reply_timeout(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resp_display_info info = { .hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO };
  const struct virtio_gpu_resp_display_info *got;
  VgpuQemuDisplayStats st;
  gint64 t0;

  negotiate(f->peer, 0);
  t0 = g_get_monotonic_time();
  g_assert_true(submit(f, &di, sizeof di));
  g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  g_assert_cmphex(wait_done(f, 1, (const guint8 **)&got), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpint(g_get_monotonic_time() - t0, >=, 180 * 1000);
  g_assert_cmpuint(got->pmodes[0].r.width, ==, 800);
  /* the late answer, then a fresh request answered properly */
  info.pmodes[0] = (struct virtio_gpu_display_one){ { 0, 0, 1024, 768 }, 1, 0 };
  peer_reply(f->peer, VHU_DISPLAY_GET_DISPLAY_INFO, &info, sizeof info);
  g_assert_true(submit(f, &di, sizeof di));
  g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  info.pmodes[0].r.width = 1280;
  peer_reply(f->peer, VHU_DISPLAY_GET_DISPLAY_INFO, &info, sizeof info);
  g_assert_cmphex(wait_done(f, 2, (const guint8 **)&got), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(got->pmodes[0].r.width, ==, 1280);
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_cmpuint(st.timeouts, ==, 1);
  /* QEMU 7.2 (no features): GET_EDID is never asked */
  {
    struct virtio_gpu_cmd_get_edid ge = gpu_get_edid(0);
    const struct virtio_gpu_resp_edid *e;

    g_assert_true(submit(f, &ge, sizeof ge));
    g_assert_cmphex(wait_done(f, 3, (const guint8 **)&e), ==, VIRTIO_GPU_RESP_OK_EDID);
    gpu_check_edid(e->edid, 800, 600);
  }
}

/* A new socket replaces the old one and gets the current scanout replayed;
 * converted formats arrive as X8R8G8B8 too. */
static void
test_replay(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(2, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, 8, 4);
  struct virtio_gpu_mem_entry e = { GPA, 8 * 4 * 4, 0 };
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 2, 2, 1, 5, 3);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(2, 0, 0, 8, 4, 0);
  gsize len;
  g_autofree guint8 *a = gpu_attach(2, &e, 1, 1, &len);
  int old = f->peer;

  for (guint p = 0; p < 32; p++)
    gpu_put_pixel(f->guest + p * 4, c.format, (guint8)p, 0x11, 0x22, 0x33);
  negotiate(f->peer, 3);
  CTRL_OK(f, c);
  ctrl_ok(f, a, len);
  CTRL_OK(f, t);
  CTRL_OK(f, s);
  g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_SCANOUT);

  f->peer = new_peer(f);
  g_mutex_lock(&f->lock);
  vgpu_qemu_display_replay(f->qd);
  g_mutex_unlock(&f->lock);
  /* the old socket is closed */
  {
    guint8 b;

    g_assert_cmpint(recv(old, &b, 1, 0), ==, 0);
    close(old);
  }
  answer_features(f->peer, 3);
  {
    g_autofree guint8 *p = NULL;
    guint features_seen = 0;
    Hdr h = peer_msg_skip_features(f->peer, &p, 3, &features_seen);
    VhuDisplayUpdate u;
    const guint32 *px;

    g_assert_cmpuint(h.request, ==, VHU_DISPLAY_SCANOUT);
    g_assert_cmpuint(((VhuDisplayScanout *)(void *)p)->width, ==, 5);
    g_clear_pointer(&p, g_free);
    h = peer_msg_skip_features(f->peer, &p, 3, &features_seen);
    g_assert_cmpuint(h.request, ==, VHU_DISPLAY_UPDATE);
    memcpy(&u, p, sizeof u);
    g_assert_cmpuint(u.width, ==, 5);
    g_assert_cmpuint(u.height, ==, 3);
    g_assert_cmpuint(h.size, ==, sizeof u + 5 * 3 * 4);
    px = (const guint32 *)(void *)(p + sizeof u);
    /* pixel (0,0) of the update is (2,1) of the resource: index 10 */
    g_assert_cmphex(px[0] & 0xffffff, ==, 0x0a1122);
    g_assert_cmphex(px[5 * 2 + 4] & 0xffffff, ==, (guint32)(3 * 8 + 6) << 16 | 0x1122);
    if (!features_seen)
      expect_set_features(f->peer, 3);
  }
}

/* Pixels flushed right after their transfer are sent from guest memory:
 * whole rows and partial ones, from a backing in two pieces that split a
 * row, for a format sent as it is and for one converted on the way. */
static void
test_guest_pixels(Fixture *f, gconstpointer data)
{
  const guint32 formats[] = { VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM };
  const guint w = 100, h = 60, stride = w * 4, split = stride * 25 + 6;
  const guint64 gpa2 = GPA + (1u << 20); /* not adjacent: two pieces */
  struct virtio_gpu_mem_entry e[2] = { { GPA, split, 0 }, { gpa2, stride * h - split, 0 } };
  const VgpuRect rects[] = { { 0, 0, w, h }, { 3, 20, 50, 11 } };
  VgpuDeviceStats st, before;
  gsize len;
  g_autofree guint8 *a = NULL;

  negotiate(f->peer, 3);
  for (guint i = 0; i < G_N_ELEMENTS(formats); i++) {
    guint32 id = 1 + i;
    struct virtio_gpu_resource_create_2d c = gpu_create_2d(id, formats[i], w, h);
    struct virtio_gpu_set_scanout s = gpu_set_scanout(0, id, 0, 0, w, h);
    struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(id, 0, 0, w, h, 0);

    for (guint y = 0; y < h; y++) {
      for (guint x = 0; x < w; x++) {
        guint8 px[4], r, g, b;

        gpu_pattern(x, y, i, &r, &g, &b);
        gpu_put_pixel(px, formats[i], r, g, b, 0xff);
        for (guint j = 0, off = (y * w + x) * 4; j < 4; j++, off++)
          *(off < split ? f->guest + off : f->guest + (1u << 20) + (off - split)) = px[j];
      }
    }
    g_free(a);
    a = gpu_attach(id, e, 2, 2, &len);
    CTRL_OK(f, c);
    ctrl_ok(f, a, len);
    CTRL_OK(f, t);
    CTRL_OK(f, s);
    if (i == 0)
      g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_SCANOUT);
    {
      /* A first flush, by whichever path, and its wake: the writer is idle
       * after that, so the flushes below find it so (one that finds it busy
       * is read later, from the image).  The transfer makes the pixels
       * pending again in case that flush copied them into the image. */
      struct virtio_gpu_resource_flush all = gpu_flush(id, 0, 0, w, h);
      gint wakes = g_atomic_int_get(&f->wakes);

      CTRL_OK(f, all);
      g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_UPDATE);
      wait_wakes(f, wakes + 1);
      CTRL_OK(f, t);
      g_mutex_lock(&f->lock);
      vgpu_device_get_stats(f->dev, &before);
      g_mutex_unlock(&f->lock);
    }
    for (guint k = 0; k < G_N_ELEMENTS(rects); k++) {
      const VgpuRect *r = &rects[k];
      struct virtio_gpu_resource_flush fl = gpu_flush(id, r->x, r->y, r->width, r->height);
      g_autofree guint8 *p = NULL;
      gint wakes = g_atomic_int_get(&f->wakes);
      VhuDisplayUpdate u;
      Hdr hdr;

      CTRL_OK(f, fl);
      hdr = peer_msg(f->peer, &p);
      /* The next flush goes straight from guest memory too once the writer
       * let go of this one (it wakes the device then). */
      wait_wakes(f, wakes + 1);
      g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_UPDATE);
      memcpy(&u, p, sizeof u);
      /* the first flush after SET_SCANOUT is the whole scanout */
      g_assert_cmpuint(u.width, ==, r->width);
      g_assert_cmpuint(u.height, ==, r->height);
      g_assert_cmpuint(hdr.size, ==, sizeof u + r->width * r->height * 4);
      for (guint y = 0; y < r->height; y++) {
        for (guint x = 0; x < r->width; x++) {
          guint32 px;
          guint8 cr, cg, cb;

          memcpy(&px, p + sizeof u + (y * r->width + x) * 4, 4);
          gpu_pattern(r->x + x, r->y + y, i, &cr, &cg, &cb);
          if ((px & 0xffffff) != ((guint32)cr << 16 | (guint32)cg << 8 | cb))
            g_error("format %u rect %u pixel (%u,%u): %06x", i, k, x, y, px);
        }
      }
    }
    g_mutex_lock(&f->lock);
    vgpu_device_get_stats(f->dev, &st);
    g_mutex_unlock(&f->lock);
    g_assert_cmpuint(st.guest_updates - before.guest_updates, ==, G_N_ELEMENTS(rects));
    g_assert_cmpuint(st.materializations, ==, before.materializations);
  }
}

/* Paints pattern @seed into the guest backing of a @w-wide @format resource
 * at GPA, rectangle (@x0, @y0, @rw, @rh). */
static void
paint(Fixture *f, guint32 format, guint w, guint x0, guint y0, guint rw, guint rh, guint seed)
{
  for (guint y = y0; y < y0 + rh; y++) {
    for (guint x = x0; x < x0 + rw; x++) {
      guint8 r, g, b;

      gpu_pattern(x, y, seed, &r, &g, &b);
      gpu_put_pixel(f->guest + ((gsize)y * w + x) * 4, format, r, g, b, 0xff);
    }
  }
}

/* Creates resource @id (@w x @h @format, pattern @seed) with its backing at
 * GPA, transferred and shown on scanout 0. */
static void
show_guest_resource_fmt(Fixture *f, guint32 id, guint32 format, guint w, guint h, guint seed)
{
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(id, format, w, h);
  struct virtio_gpu_mem_entry e = { GPA, w * h * 4, 0 };
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, id, 0, 0, w, h);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(id, 0, 0, w, h, 0);
  gsize len;
  g_autofree guint8 *a = gpu_attach(id, &e, 1, 1, &len);

  paint(f, format, w, 0, 0, w, h, seed);
  CTRL_OK(f, c);
  ctrl_ok(f, a, len);
  CTRL_OK(f, s);
  CTRL_OK(f, t);
}

static void
show_guest_resource(Fixture *f, guint32 id, guint w, guint h, guint seed)
{
  show_guest_resource_fmt(f, id, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, seed);
}

/* Transfers and flushes (@x, @y, @w, @h) of resource 1 (@rw wide) as @mode
 * makes the device show it: straight from guest memory, or from the image
 * (two transfers, the second materialises the first, the flush the second). */
typedef enum { FROM_GUEST, FROM_IMAGE } ShowMode;

static void
transfer_flush(Fixture *f, ShowMode mode, guint rw, guint x, guint y, guint w, guint h,
               guint32 fence_id)
{
  struct virtio_gpu_resource_flush fl = gpu_flush(1, x, y, w, h);
  guint n;

  if (mode == FROM_IMAGE && h >= 2) {
    struct virtio_gpu_transfer_to_host_2d t1 = gpu_transfer(1, x, y, w, h / 2, (y * rw + x) * 4);
    struct virtio_gpu_transfer_to_host_2d t2
        = gpu_transfer(1, x, y + h / 2, w, h - h / 2, ((y + h / 2) * rw + x) * 4);

    CTRL_OK(f, t1);
    CTRL_OK(f, t2);
  } else {
    struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, x, y, w, h, (y * rw + x) * 4);

    CTRL_OK(f, t);
  }
  if (!fence_id) {
    CTRL_OK(f, fl);
    return;
  }
  /* fenced: completes (in order) with its fence */
  {
    const struct virtio_gpu_ctrl_hdr *r;

    fl.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
    fl.hdr.fence_id = fence_id;
    n = f->done->len;
    g_assert_true(submit(f, &fl, sizeof fl));
    g_assert_cmphex(wait_done(f, n + 1, (const guint8 **)&r), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_true(r->flags & VIRTIO_GPU_FLAG_FENCE);
    g_assert_cmpuint(r->fence_id, ==, fence_id);
  }
}

typedef struct {
  guint32 format;
  ShowMode mode;
} StallCase;

static const StallCase stall_guest = { VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, FROM_GUEST };
static const StallCase stall_image = { VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, FROM_IMAGE };
static const StallCase stall_converted = { VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, FROM_GUEST };

/* A display that stops reading in the middle of a 4 MiB UPDATE (twice what
 * the socket buffer holds) for at least two seconds: the guest's transfers,
 * flushes, fenced flushes and cursor moves keep completing, none is held
 * back, the connection stays, and once the display reads again it gets the
 * frame it was sent, then the cursor's last position and one UPDATE with the
 * current picture, pixels exact. */
static void
test_stalled_display(Fixture *f, gconstpointer data)
{
  const StallCase *sc = data;
  const guint w = 1024, h = 1024, seed0 = 1, final_seed = 99;
  struct virtio_gpu_update_cursor mv = gpu_cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 0, 0, 0, 0, 0);
  VgpuQemuDisplayStats st;
  VgpuDeviceStats ds;
  g_autofree guint8 *p = NULL;
  guint rounds = 0, features_seen = 0;
  gint64 t0;
  gint wakes;
  Hdr hdr;

  negotiate(f->peer, 3);
  show_guest_resource_fmt(f, 1, sc->format, w, h, seed0);
  wakes = g_atomic_int_get(&f->wakes);
  transfer_flush(f, sc->mode, w, 0, 0, w, h, 0);
  /* The writer lets go of the resource (copying the rest of the frame) once
   * the display has taken nothing for the hold time. */
  wait_wakes(f, wakes + 1);

  t0 = g_get_monotonic_time();
  while (rounds < 100 || g_get_monotonic_time() - t0 < 2 * G_USEC_PER_SEC) {
    guint x = (rounds * 37) % (w - 64), y = (rounds * 53) % (h - 64);
    guint n = f->done->len;

    paint(f, sc->format, w, x, y, 64, 64, 100 + rounds);
    transfer_flush(f, sc->mode, w, x, y, 64, 64, rounds % 10 == 9 ? rounds + 1 : 0);
    mv.pos.x = rounds;
    mv.pos.y = 2 * rounds;
    g_assert_true(submit_q(f, VGPU_CURSOR_QUEUE, &mv, sizeof mv));
    wait_done(f, n + 2, NULL);
    rounds++;
  }
  paint(f, sc->format, w, 0, 0, w, h, final_seed);
  transfer_flush(f, sc->mode, w, 0, 0, w, h, 0);

  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_true(st.connected);
  g_assert_cmpuint(st.dropped, ==, 0);
  g_assert_cmpuint(st.updates, ==, 0);
  g_assert_cmpuint(st.coalesced, >=, rounds);
  g_assert_cmpuint(st.copied, ==, 1);
  g_mutex_lock(&f->lock);
  vgpu_device_get_stats(f->dev, &ds);
  g_mutex_unlock(&f->lock);
  g_assert_cmpuint(ds.stalls, ==, 0);

  /* The display reads again: the frame it was being sent, as flushed. */
  wakes = g_atomic_int_get(&f->wakes);
  g_assert_cmpuint(peer_msg_skip_features(f->peer, NULL, 3, &features_seen).request, ==,
                   VHU_DISPLAY_SCANOUT);
  hdr = peer_msg_skip_features(f->peer, &p, 3, &features_seen);
  g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_UPDATE);
  g_assert_cmpuint(hdr.size, ==, 20 + w * h * 4);
  check_pattern(p + 20, 0, 0, w, h, seed0);
  g_clear_pointer(&p, g_free);
  /* the cursor where the guest left it */
  hdr = peer_msg_skip_features(f->peer, &p, 3, &features_seen);
  g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_CURSOR_POS_HIDE);
  g_assert_cmpuint(((VhuDisplayCursorPos *)(void *)p)->x, ==, rounds - 1);
  g_assert_cmpuint(((VhuDisplayCursorPos *)(void *)p)->y, ==, 2 * (rounds - 1));
  g_clear_pointer(&p, g_free);
  /* every flush made meanwhile, in one UPDATE of the current picture */
  hdr = peer_msg_skip_features(f->peer, &p, 3, &features_seen);
  g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_UPDATE);
  g_assert_cmpuint(hdr.size, ==, 20 + w * h * 4);
  check_pattern(p + 20, 0, 0, w, h, final_seed);
  g_clear_pointer(&p, g_free);
  g_assert_cmpuint(features_seen, ==, 0); /* negotiate() read it */

  /* and the display keeps up again: a flush goes out as it comes (once the
   * writer let go of the image it read the current picture from) */
  wait_wakes(f, wakes + 1);
  paint(f, sc->format, w, 10, 20, 30, 40, 7);
  transfer_flush(f, sc->mode, w, 10, 20, 30, 40, 0);
  hdr = peer_msg(f->peer, &p);
  g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_UPDATE);
  g_assert_cmpuint(hdr.size, ==, 20 + 30 * 40 * 4);
  check_pattern(p + 20, 10, 20, 30, 40, 7);
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_true(st.connected);
  g_assert_cmpuint(st.connections, ==, 1);
  g_assert_cmpuint(st.dropped, ==, 0);
}

/* Guest memory is never lent to the socket: once the writer let go of it
 * (the device's wake), DETACH_BACKING is answered at once although the
 * display has read nothing, and what the display reads later is what was
 * flushed, not what the guest wrote there after getting it back.  A display
 * that shuts its end in the middle of an update costs the connection, not
 * the process (SIGPIPE). */
static void
test_guest_memory_released(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 64, 32);
  struct virtio_gpu_resource_detach_backing d = gpu_detach(1);
  VgpuQemuDisplayStats st;
  g_autofree guint8 *p = NULL;
  gint wakes;
  Hdr hdr;

  negotiate(f->peer, 3);
  show_guest_resource(f, 1, 64, 32, 1);
  g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_SCANOUT);
  wakes = g_atomic_int_get(&f->wakes);
  CTRL_OK(f, fl);
  wait_wakes(f, wakes + 1); /* written: the read mark ended */
  CTRL_OK(f, d);
  paint(f, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 0, 0, 64, 32, 2);
  hdr = peer_msg(f->peer, &p);
  g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_UPDATE);
  check_pattern(p + 20, 0, 0, 64, 32, 1);
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_cmpuint(st.updates, ==, 1);

  /* A display that stops taking data in the middle of a 4 MiB update. */
  show_guest_resource(f, 2, 1024, 1024, 2);
  fl = gpu_flush(2, 0, 0, 1024, 1024);
  for (guint round = 0; round < 16; round++) {
    VhuDisplayUpdate u;

    close(f->peer);
    f->peer = new_peer(f);
    negotiate(f->peer, 3);
    wakes = g_atomic_int_get(&f->wakes);
    CTRL_OK(f, fl);
    g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_SCANOUT);
    peer_read(f->peer, &hdr, sizeof hdr);
    peer_read(f->peer, &u, sizeof u);
    g_assert_cmpuint(hdr.request, ==, VHU_DISPLAY_UPDATE);
    g_assert_cmpuint(u.width, ==, 1024);
    g_assert_cmpint(shutdown(f->peer, SHUT_RD), ==, 0);
    wait_wakes(f, wakes + 1); /* the writer gave up the update, or copied it */
  }
  d = gpu_detach(2);
  CTRL_OK(f, d);
}

/* GPU_SET_SOCKET with anything but a connected stream socket is refused with
 * a clear error, and the connection in use stays. */
static void
test_not_stream_socket(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resp_display_info info = { .hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO };
  const struct virtio_gpu_resp_display_info *got;
  const int types[] = { SOCK_DGRAM, SOCK_SEQPACKET };
  VgpuQemuDisplayStats st;
  int fds[2];

  negotiate(f->peer, 3);
  for (guint i = 0; i < G_N_ELEMENTS(types) + 2; i++) {
    g_autoptr(GError) error = NULL;
    gboolean ok;
    int keep = -1;

    if (i < G_N_ELEMENTS(types)) {
      g_assert_cmpint(socketpair(AF_UNIX, types[i] | SOCK_CLOEXEC, 0, fds), ==, 0);
      keep = fds[0];
    } else if (i == G_N_ELEMENTS(types)) {
      g_assert_cmpint(pipe2(fds, O_CLOEXEC), ==, 0);
      keep = fds[0];
      fds[0] = fds[1];
    } else {
      fds[0] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      g_assert_cmpint(fds[0], >=, 0);
      struct sockaddr_un any = { .sun_family = AF_UNIX };

      /* bound to an abstract address of the kernel's choice */
      g_assert_cmpint(bind(fds[0], (struct sockaddr *)&any, sizeof(sa_family_t)), ==, 0);
      g_assert_cmpint(listen(fds[0], 1), ==, 0);
    }
    g_mutex_lock(&f->lock);
    ok = vgpu_qemu_display_set_socket(f->qd, i < G_N_ELEMENTS(types) ? fds[1] : fds[0], &error);
    g_mutex_unlock(&f->lock);
    g_assert_false(ok);
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
    g_assert_nonnull(strstr(error->message, i == G_N_ELEMENTS(types) ? "not a socket" : "stream"));
    if (keep >= 0)
      close(keep);
  }
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_true(st.connected);
  g_assert_cmpuint(st.connections, ==, 1);
  /* the display in use still answers */
  g_assert_true(submit(f, &di, sizeof di));
  g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  info.pmodes[0] = (struct virtio_gpu_display_one){ { 0, 0, 1234, 567 }, 1, 0 };
  peer_reply(f->peer, VHU_DISPLAY_GET_DISPLAY_INFO, &info, sizeof info);
  g_assert_cmphex(wait_done(f, 1, (const guint8 **)&got), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(got->pmodes[0].r.width, ==, 1234);
}

static void
count_unexpected(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  if (strstr(message, "unexpected"))
    g_atomic_int_inc((gint *)data);
  else
    g_log_default_handler(domain, level, message, NULL);
}

/* A display sending garbage: unknown replies and requests are ignored (a
 * flood of them with one warning), an oversized message drops the
 * connection; the device keeps working. */
static void
test_bad_display(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  VgpuQemuDisplayStats st;
  gint unexpected = 0;
  guint handler;
  Hdr h;
  guint8 b;

  handler = g_log_set_handler("vgpu", G_LOG_LEVEL_WARNING, count_unexpected, &unexpected);
  negotiate(f->peer, 3);
  for (guint i = 0; i < 2000; i++) {
    peer_reply(f->peer, VHU_DISPLAY_GET_EDID, NULL, 0); /* nobody asked */
    h = (Hdr){ VHU_DISPLAY_SCANOUT, 0, 0 };             /* not a reply */
    g_assert_cmpint(send(f->peer, &h, sizeof h, 0), ==, sizeof h);
  }
  g_assert_true(submit(f, &di, sizeof di));
  g_assert_cmpuint(peer_msg(f->peer, NULL).request, ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  /* a reply too short for display info: the device uses its own */
  peer_reply(f->peer, VHU_DISPLAY_GET_DISPLAY_INFO, "xx", 2);
  g_assert_cmphex(wait_done(f, 1, NULL), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  /* the flood was read (the reply behind it was), with one warning */
  g_assert_cmpint(g_atomic_int_get(&unexpected), ==, 1);
  g_log_remove_handler("vgpu", handler);
  h = (Hdr){ VHU_DISPLAY_GET_DISPLAY_INFO, VHU_DISPLAY_FLAG_REPLY, 1u << 30 };
  g_assert_cmpint(send(f->peer, &h, sizeof h, 0), ==, sizeof h);
  g_assert_cmpint(recv(f->peer, &b, 1, 0), ==, 0); /* dropped */
  vgpu_qemu_display_get_stats(f->qd, &st);
  g_assert_false(st.connected);
  g_assert_cmpuint(st.dropped, ==, 1);
  /* without a display, the configuration answers at once */
  g_assert_true(submit(f, &di, sizeof di));
  g_assert_cmphex(wait_done(f, 2, NULL), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  /* Display and guest errors are warnings by design; criticals stay fatal. */
  g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
#define ADD(name, fn) g_test_add("/gpu/qemu-display/" name, Fixture, NULL, setup, fn, teardown)
  ADD("negotiation-and-replies", test_negotiation_and_replies);
  ADD("reply-timeout", test_reply_timeout);
  ADD("replay", test_replay);
  ADD("guest-pixels", test_guest_pixels);
  ADD("guest-memory-released", test_guest_memory_released);
  ADD("not-stream-socket", test_not_stream_socket);
  g_test_add("/gpu/qemu-display/stalled-display/guest", Fixture, &stall_guest, setup,
             test_stalled_display, teardown);
  g_test_add("/gpu/qemu-display/stalled-display/image", Fixture, &stall_image, setup,
             test_stalled_display, teardown);
  g_test_add("/gpu/qemu-display/stalled-display/converted", Fixture, &stall_converted, setup,
             test_stalled_display, teardown);
  ADD("bad-display", test_bad_display);
  return g_test_run();
}
