/* test-guest-memory.c: a frontend that shrinks guest memory under the
 * gst-vhost-gpu daemon.
 *
 * The daemon runs as its own process behind a real socket; guest memory is
 * the frontend driver's memfds, truncated by the test at the worst moment
 * for each path that reads or writes guest memory: the rings, a backing
 * copied into the resource on the queue thread, a backing converted by the
 * display writer thread, a backing the kernel reads as the writer sends it
 * to the display socket.  Each time the daemon must survive (no SIGBUS),
 * answer with an error or mark the device NEEDS_RESET, and serve the next
 * frontend as if nothing had happened. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "gpu-test-frontend.h"
#include "test-daemon.h"
#include "test-util.h"
#include "vhu-display.h"
#include "vhu-guard.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (16u << 20)
#define EXTRA_GPA  0x40000000ull /* a second region, for backings */
#define EXTRA_SIZE (4u << 20)
#define WAIT_MS    5000

typedef struct {
  TuDaemon d;
  VhuFrontend *fe;
  VhuDisplayServer *ds;
} Fixture;

static const char *
daemon_binary(void)
{
  const char *env = g_getenv("GST_VHOST_GPU");

  return env ? env : GST_VHOST_GPU;
}

static void
daemon_start(TuDaemon *d)
{
  tu_daemon_start(d, daemon_binary(), "gst-vhost-gpu-mem-XXXXXX", "gpu.sock", NULL, WAIT_MS);
}

/* A frontend like QEMU 10 with @extra a second region for backings, a
 * display answering 640x480, the device started.  Without @event_idx the
 * driver kicks whatever the device wrote in the used ring. */
static void
session_start_full(Fixture *f, gboolean extra, gboolean event_idx)
{
  g_autoptr(GError) error = NULL;
  VhuDisplayConfig cfg = { 1, 640, 480, 0x3, FALSE };
  const guint sizes[2] = { 64, 16 };
  guint64 drv = BIT(VIRTIO_GPU_F_EDID) | BIT(VHU_F_RING_INDIRECT_DESC)
                | (event_idx ? BIT(VHU_F_RING_EVENT_IDX) : 0);

  f->fe = vhu_frontend_connect(f->d.path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
  if (extra)
    g_assert_true(vhu_frontend_add_region(f->fe, EXTRA_GPA, EXTRA_SIZE, &error));
  g_assert_no_error(error);
  f->ds = vhu_display_server_new(&cfg);
  g_assert_true(vhu_display_server_attach(f->ds, f->fe, &error));
  g_assert_true(vhu_frontend_start(f->fe, drv, sizes, 2, &error));
  g_assert_no_error(error);
}

static void
session_start(Fixture *f, gboolean extra)
{
  session_start_full(f, extra, TRUE);
}

static void
session_end(Fixture *f)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  g_clear_pointer(&f->ds, vhu_display_server_free);
}

#define CMD(fe, c) gpu_cmd((fe), &(c), sizeof(c), NULL, 0)

/* Queues @req with room for an answer and kicks, without waiting: the
 * answer may never come once guest memory is gone. */
static void
cmd_nowait(VhuFrontend *fe, const void *req, gsize len)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(fe, 0);
  guint64 gpa = vhu_frontend_alloc(fe, len + sizeof(struct virtio_gpu_resp_display_info), 64);
  VhuGuestBuf out = { gpa, (guint32)len };
  VhuGuestBuf in = { gpa + len, sizeof(struct virtio_gpu_resp_display_info) };

  g_assert_cmphex(gpa, !=, G_MAXUINT64);
  memcpy(vhu_frontend_gpa_to_ptr(fe, gpa, len), req, len);
  g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, NULL), >=, 0);
  vhu_driver_queue_kick(q);
}

/* The daemon noticed: the ring broke (one log line), the device status
 * says NEEDS_RESET, and the process still answers the frontend. */
static void
assert_needs_reset(Fixture *f)
{
  g_autoptr(GError) error = NULL;
  guint8 status = 0;

  g_assert_true(tu_daemon_wait_log(&f->d, "device needs reset", WAIT_MS));
  /* The status is set before the line is logged. */
  g_assert_true(vhu_frontend_get_status(f->fe, &status, &error));
  g_assert_no_error(error);
  g_assert_cmphex(status & VHU_STATUS_NEEDS_RESET, ==, VHU_STATUS_NEEDS_RESET);
  /* One line per ring that touched the lost memory (the cursor queue may or
   * may not have been popped since), never more. */
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "device needs reset"), >=, 1);
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "device needs reset"), <=, 2); /* control, cursor */
}

typedef struct {
  guint32 id, format, w, h;
  guint64 gpa;
} Res;

static void
paint(guint8 *p, const Res *r, guint seed)
{
  for (guint y = 0; y < r->h; y++) {
    for (guint x = 0; x < r->w; x++) {
      guint8 cr, cg, cb;

      gpu_pattern(x, y, seed, &cr, &cg, &cb);
      gpu_put_pixel(p + ((gsize)y * r->w + x) * 4, r->format, cr, cg, cb, 0xff);
    }
  }
}

/* A painted resource with its backing at @gpa, shown on scanout 0. */
static void
res_setup(VhuFrontend *fe, const Res *r, guint seed)
{
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(r->id, r->format, r->w, r->h);
  struct virtio_gpu_mem_entry e = { r->gpa, r->w * r->h * 4, 0 };
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, r->id, 0, 0, r->w, r->h);
  g_autofree guint8 *a = NULL;
  gsize len;

  paint(vhu_frontend_gpa_to_ptr(fe, r->gpa, (gsize)r->w * r->h * 4), r, seed);
  a = gpu_attach(r->id, &e, 1, 1, &len);
  g_assert_cmphex(CMD(fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(fe, a, len, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

static void
transfer(VhuFrontend *fe, const Res *r)
{
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(r->id, 0, 0, r->w, r->h, 0);

  g_assert_cmphex(CMD(fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

/* Scanout 0 shows @r's pattern @seed, or black when @seed is -1. */
static void
check_frame(VhuDisplayServer *ds, const Res *r, int seed)
{
  guint fw = 0, fh = 0;
  g_autofree guint32 *fb = vhu_display_server_get_frame(ds, 0, &fw, &fh);

  g_assert_nonnull(fb);
  g_assert_cmpuint(fw, ==, r->w);
  g_assert_cmpuint(fh, ==, r->h);
  for (guint y = 0; y < r->h; y++) {
    for (guint x = 0; x < r->w; x++) {
      guint8 cr = 0, cg = 0, cb = 0;

      if (seed >= 0)
        gpu_pattern(x, y, (guint)seed, &cr, &cg, &cb);
      if ((fb[y * r->w + x] & 0xffffff) != ((guint32)cr << 16 | (guint32)cg << 8 | cb))
        g_error("pixel (%u,%u) is %08x, expected %02x%02x%02x", x, y, fb[y * r->w + x], cr, cg, cb);
    }
  }
}

/* The next frontend gets a working device: a frame drawn from fresh guest
 * memory reaches its display. */
static void
next_frontend_served(Fixture *f)
{
  Res r = { 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 96, 64, 0 };
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, r.w, r.h);
  VhuDisplayStats st;

  session_end(f);
  session_start(f, FALSE);
  r.gpa = vhu_frontend_alloc(f->fe, (gsize)r.w * r.h * 4, 4096);
  res_setup(f->fe, &r, 3);
  transfer(f->fe, &r);
  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_true(vhu_display_server_wait_updates(f->ds, st.updates + 1, WAIT_MS));
  check_frame(f->ds, &r, 3);
  session_end(f);
}

static void
truncate_region(VhuFrontend *fe, guint64 gpa)
{
  int fd = vhu_frontend_get_region_fd(fe, gpa);

  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, 0), ==, 0);
}

/* --- tests ----------------------------------------------------------------- */

/* The region holding the rings is truncated after SET_MEM_TABLE, then the
 * driver kicks: the daemon's first look at the avail ring reads zeros and
 * the queue breaks.  The test's own view of that memory is guarded too (it
 * plays the driver, which writes the avail index as it kicks); without
 * EVENT_IDX it kicks even though it reads zeros where the device's
 * avail_event was. */
static void
test_rings(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resp_display_info info;
  VhuGuard *own;

  daemon_start(&f->d);
  session_start_full(f, FALSE, FALSE);
  g_assert_cmphex(gpu_cmd(f->fe, &di, sizeof di, &info, sizeof info), ==,
                  VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  own = vhu_guard_add(vhu_frontend_gpa_to_ptr(f->fe, GUEST_GPA, GUEST_SIZE), GUEST_SIZE);
  truncate_region(f->fe, GUEST_GPA);
  cmd_nowait(f->fe, &di, sizeof di);
  g_assert_true(vhu_guard_is_retired(own));
  assert_needs_reset(f);
  vhu_guard_remove(own);
  next_frontend_served(f);
  tu_daemon_stop(&f->d, WAIT_MS);
}

/* A backing copied into the resource on the queue thread
 * (DETACH_BACKING after a transfer makes the device copy the pending
 * pixels out of guest memory) after its region was truncated. */
static void
test_backing_copy(void)
{
  Fixture fx = { 0 }, *f = &fx;
  Res r = { 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 128, 96, EXTRA_GPA };
  struct virtio_gpu_resource_detach_backing det = gpu_detach(1);

  daemon_start(&f->d);
  session_start(f, TRUE);
  res_setup(f->fe, &r, 1);
  transfer(f->fe, &r);
  truncate_region(f->fe, EXTRA_GPA);
  cmd_nowait(f->fe, &det, sizeof det);
  assert_needs_reset(f);
  next_frontend_served(f);
  tu_daemon_stop(&f->d, WAIT_MS);
}

/* A backing the display writer thread reads and converts (a format the
 * display does not take as it is) after its region was truncated: the
 * display gets black, the next request finds the memory damaged. */
static void
test_backing_display_read(void)
{
  Fixture fx = { 0 }, *f = &fx;
  Res r = { 1, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM, 128, 96, EXTRA_GPA };
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, r.w, r.h);
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  VhuDisplayStats st;

  daemon_start(&f->d);
  session_start(f, TRUE);
  res_setup(f->fe, &r, 2);
  transfer(f->fe, &r);
  truncate_region(f->fe, EXTRA_GPA);
  vhu_display_server_get_stats(f->ds, &st);
  cmd_nowait(f->fe, &fl, sizeof fl);
  g_assert_true(vhu_display_server_wait_updates(f->ds, st.updates + 1, WAIT_MS));
  check_frame(f->ds, &r, -1);
  cmd_nowait(f->fe, &di, sizeof di);
  assert_needs_reset(f);
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "dropping the connection"), ==, 0);
  next_frontend_served(f);
  tu_daemon_stop(&f->d, WAIT_MS);
}

/* A backing the display writer sends straight from guest memory (sendmsg:
 * the kernel reads the pages) after its region was truncated: the kernel
 * reports EFAULT, not SIGBUS; the writer probes the pages, which retires
 * the region, and sends black.  The display keeps its connection. */
static void
test_backing_sent(void)
{
  Fixture fx = { 0 }, *f = &fx;
  Res r = { 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 128, 96, EXTRA_GPA };
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, r.w, r.h);
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  VhuDisplayStats st;

  daemon_start(&f->d);
  session_start(f, TRUE);
  res_setup(f->fe, &r, 4);
  transfer(f->fe, &r);
  truncate_region(f->fe, EXTRA_GPA);
  vhu_display_server_get_stats(f->ds, &st);
  cmd_nowait(f->fe, &fl, sizeof fl);
  g_assert_true(vhu_display_server_wait_updates(f->ds, st.updates + 1, WAIT_MS));
  check_frame(f->ds, &r, -1);
  cmd_nowait(f->fe, &di, sizeof di);
  assert_needs_reset(f);
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "dropping the connection"), ==, 0);
  next_frontend_served(f);
  tu_daemon_stop(&f->d, WAIT_MS);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  if (!g_file_test(daemon_binary(), G_FILE_TEST_IS_EXECUTABLE)) {
    g_printerr("gst-vhost-gpu not built: %s\n", daemon_binary());
    return 77;
  }
  g_test_add_func("/gpu/guest-memory/rings", test_rings);
  g_test_add_func("/gpu/guest-memory/backing-copy", test_backing_copy);
  g_test_add_func("/gpu/guest-memory/backing-display-read", test_backing_display_read);
  g_test_add_func("/gpu/guest-memory/backing-sent", test_backing_sent);
  return g_test_run();
}
