/* Integration tests: the gst-vhost-gpu daemon as a separate process, driven
 * through the project's vhost-user frontend (vhu-frontend.h) over a real
 * socket, with the project's display server (vhu-display.h) playing QEMU's
 * display end.  Guest memory is memfd shared memory. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gpu-test-frontend.h"
#include "test-daemon.h"
#include "test-util.h"
#include "vhu-display.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (32u << 20)
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

/* Starts the daemon on a socket in a fresh directory with @extra appended
 * (NULL-terminated) and waits until it listens. */
static void
daemon_start_v(TuDaemon *d, const char *const *extra)
{
  tu_daemon_start(d, daemon_binary(), "gst-vhost-gpu-XXXXXX", "gpu.sock", extra, WAIT_MS);
}

#define daemon_start(d, ...)                                                                       \
  G_STMT_START                                                                                     \
  {                                                                                                \
    const char *const extra_[] = { __VA_ARGS__, NULL };                                            \
    daemon_start_v((d), extra_);                                                                   \
  }                                                                                                \
  G_STMT_END

/* --- frontend -------------------------------------------------------------- */

static VhuFrontend *
frontend_connect(TuDaemon *d)
{
  g_autoptr(GError) error = NULL;
  VhuFrontend *fe = vhu_frontend_connect(d->path, &error);

  g_assert_no_error(error);
  return fe;
}

static void
frontend_init(VhuFrontend *fe)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_no_error(error);
}

static void
frontend_start(VhuFrontend *fe)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  guint64 drv = BIT(VIRTIO_GPU_F_EDID) | BIT(VIRTIO_GPU_F_RESOURCE_UUID)
                | BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX);

  g_assert_true(vhu_frontend_start(fe, drv, sizes, 2, &error));
  g_assert_no_error(error);
}

static VhuDisplayServer *
display_attach(VhuFrontend *fe, guint scanouts, guint w, guint h, guint64 features)
{
  VhuDisplayConfig cfg = { scanouts, w, h, features, FALSE };
  g_autoptr(GError) error = NULL;
  VhuDisplayServer *ds = vhu_display_server_new(&cfg);

  g_assert_true(vhu_display_server_attach(ds, fe, &error));
  g_assert_no_error(error);
  return ds;
}

/* Hands the daemon a display socket whose other end the test holds, for a
 * display that never answers or stops reading; returns that end. */
static int
display_attach_raw(VhuFrontend *fe)
{
  g_autoptr(GError) error = NULL;
  int sv[2];

  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  g_assert_true(vhu_frontend_request(fe, VHU_GPU_SET_SOCKET, NULL, 0, &sv[1], 1, &error));
  g_assert_no_error(error);
  close(sv[1]);
  return sv[0];
}

/* TuDaemon with default options, a display server like QEMU 10 answering a
 * 1024x768 mode, started like QEMU does at DRIVER_OK. */
static void
setup(Fixture *f, gconstpointer data)
{
  daemon_start(&f->d, NULL);
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  f->ds = display_attach(f->fe, 1, 1024, 768, 0x3);
  frontend_start(f->fe);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  g_clear_pointer(&f->ds, vhu_display_server_free);
  tu_daemon_stop(&f->d, WAIT_MS);
}

#define CMD(fe, c) gpu_cmd((fe), &(c), sizeof(c), NULL, 0)

static void
cursor_cmd(VhuFrontend *fe, const struct virtio_gpu_update_cursor *c)
{
  g_autoptr(GError) error = NULL;

  g_assert_cmpint(
      vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 1), c, sizeof *c, NULL, 0, &error), ==,
      0);
  g_assert_no_error(error);
}

typedef struct {
  guint32 id, format, w, h;
  guint64 gpa;
  guint8 *pixels; /* the backing, in guest memory */
} Res;

static Res
res_create(VhuFrontend *fe, guint32 id, guint32 format, guint32 w, guint32 h)
{
  Res r = { id, format, w, h, 0, NULL };
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(id, format, w, h);
  struct virtio_gpu_mem_entry e;
  g_autofree guint8 *req = NULL;
  gsize len;

  r.gpa = vhu_frontend_alloc(fe, (gsize)w * h * 4, 4096);
  g_assert_cmphex(r.gpa, !=, G_MAXUINT64);
  r.pixels = vhu_frontend_gpa_to_ptr(fe, r.gpa, (gsize)w * h * 4);
  e = (struct virtio_gpu_mem_entry){ r.gpa, w * h * 4, 0 };
  req = gpu_attach(id, &e, 1, 1, &len);
  g_assert_cmphex(CMD(fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(fe, req, len, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  return r;
}

static void
res_paint(Res *r, guint seed)
{
  for (guint y = 0; y < r->h; y++) {
    for (guint x = 0; x < r->w; x++) {
      guint8 cr, cg, cb;

      gpu_pattern(x, y, seed, &cr, &cg, &cb);
      gpu_put_pixel(r->pixels + ((gsize)y * r->w + x) * 4, r->format, cr, cg, cb, 0x80);
    }
  }
}

/* Transfer and flush @rect, then wait for the display to have it. */
static void
res_show(VhuFrontend *fe, VhuDisplayServer *ds, Res *r, guint x, guint y, guint w, guint h)
{
  struct virtio_gpu_transfer_to_host_2d t
      = gpu_transfer(r->id, x, y, w, h, ((guint64)y * r->w + x) * 4);
  struct virtio_gpu_resource_flush fl = gpu_flush(r->id, x, y, w, h);
  VhuDisplayStats st;

  vhu_display_server_get_stats(ds, &st);
  g_assert_cmphex(CMD(fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_true(vhu_display_server_wait_updates(ds, st.updates + 1, WAIT_MS));
}

/* The display's scanout @id shows @r's pattern @seed (rectangle at sx, sy). */
static void
check_frame(VhuDisplayServer *ds, guint id, Res *r, guint seed, guint sx, guint sy, guint w,
            guint h)
{
  guint fw = 0, fh = 0;
  g_autofree guint32 *fb = vhu_display_server_get_frame(ds, id, &fw, &fh);

  g_assert_nonnull(fb);
  g_assert_cmpuint(fw, ==, w);
  g_assert_cmpuint(fh, ==, h);
  for (guint y = 0; y < h; y++) {
    for (guint x = 0; x < w; x++) {
      guint8 cr, cg, cb;

      gpu_pattern(sx + x, sy + y, seed, &cr, &cg, &cb);
      if ((fb[y * w + x] & 0xffffff) != ((guint32)cr << 16 | (guint32)cg << 8 | cb))
        g_error("format %u: pixel (%u,%u) is %08x, expected %02x%02x%02x", r->format, x, y,
                fb[y * w + x], cr, cg, cb);
    }
  }
}

/* --- tests ----------------------------------------------------------------- */

static void
test_capabilities(void)
{
  g_autofree char *out = NULL, *help = NULL;
  g_autoptr(GError) error = NULL;
  int status;
  const char *argv[] = { daemon_binary(), "--print-capabilities", NULL };

  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, NULL,
                             &status, &error));
  g_assert_no_error(error);
  g_assert_true(g_spawn_check_wait_status(status, NULL));
  g_assert_nonnull(strstr(out, "\"type\": \"gpu\""));
  g_assert_nonnull(strstr(out, "\"features\": ["));
  /* only what we support: virgl exactly when built with it (--virgl exists) */
  argv[1] = "--help";
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &help, NULL,
                             &status, &error));
  g_assert_cmpint(strstr(out, "\"virgl\"") != NULL, ==, strstr(help, "--virgl") != NULL);
}

/* The installed descriptor names the daemon; the man page documents every
 * option --help lists. */
static void
test_descriptor_and_man_page(void)
{
  const char *build = g_getenv("GST_VHOST_BUILD_ROOT");
  const char *src = g_getenv("GST_VHOST_SOURCE_ROOT");
  g_autofree char *json_path = NULL, *man_path = NULL;
  g_autofree char *json = NULL, *man = NULL, *help = NULL;
  g_autoptr(GRegex) re = g_regex_new("--([a-z-]+)", 0, 0, NULL);
  g_autoptr(GMatchInfo) mi = NULL;
  const char *argv[] = { daemon_binary(), "--help", NULL };
  guint n = 0;

  if (!build || !src) {
    g_test_skip("GST_VHOST_BUILD_ROOT/GST_VHOST_SOURCE_ROOT not set (run through meson test)");
    return;
  }
  json_path = g_build_filename(build, "data", "50-gst-vhost-gpu.json", NULL);
  g_assert_true(g_file_get_contents(json_path, &json, NULL, NULL));
  g_assert_nonnull(strstr(json, "\"type\": \"gpu\""));
  g_assert_nonnull(strstr(json, "\"binary\": \"/"));
  g_assert_nonnull(strstr(json, "/gst-vhost-gpu\""));
  man_path = g_build_filename(src, "docs", "gst-vhost-gpu.1", NULL);
  g_assert_true(g_file_get_contents(man_path, &man, NULL, NULL));
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &help, NULL,
                             NULL, NULL));
  g_regex_match(re, help, 0, &mi);
  while (g_match_info_matches(mi)) {
    g_autofree char *name = g_match_info_fetch(mi, 1);
    g_auto(GStrv) parts = g_strsplit(name, "-", -1);
    g_autofree char *joined = g_strjoinv("\\-", parts);
    /* roff writes --max-hostmem as \-\-max\-hostmem */
    g_autofree char *roff = g_strdup_printf("\\-\\-%s", joined);

    if (!strstr(man, roff))
      g_error("option --%s is not in the man page", name);
    n++;
    g_match_info_next(mi, NULL);
  }
  g_assert_cmpuint(n, >=, 9);
}

static void
run_expect(int want, const char *const *args)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autofree char *err = NULL;
  g_autoptr(GError) error = NULL;
  int status;

  g_ptr_array_add(argv, (gpointer)daemon_binary());
  for (; *args; args++)
    g_ptr_array_add(argv, (gpointer)*args);
  g_ptr_array_add(argv, NULL);
  g_assert_true(g_spawn_sync(NULL, (char **)argv->pdata, NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                             NULL, NULL, &err, &status, &error));
  g_assert_no_error(error);
  g_assert_true(WIFEXITED(status));
  if (WEXITSTATUS(status) != want)
    g_error("%s: exit %d, expected %d (%s)", ((char **)argv->pdata)[1], WEXITSTATUS(status), want,
            err);
  g_assert_cmpstr(err, !=, ""); /* a real message */
}

#define EXPECT(want, ...)                                                                          \
  G_STMT_START                                                                                     \
  {                                                                                                \
    const char *const a_[] = { __VA_ARGS__, NULL };                                                \
    run_expect((want), a_);                                                                        \
  }                                                                                                \
  G_STMT_END

static void
test_bad_options(void)
{
  g_autofree char *dir = tu_make_tmpdir("gst-vhost-gpu-XXXXXX");
  g_autofree char *file = g_build_filename(dir, "file", NULL);
  g_autofree char *nodir = g_build_filename(dir, "none", "gpu.sock", NULL);

  g_assert_true(g_file_set_contents(file, "x", 1, NULL));
  EXPECT(2, "--width", "800");
  EXPECT(2, "--socket-path", "/tmp/x", "--fd", "3");
  EXPECT(2, "--socket-path", "/tmp/x", "--scanouts", "0");
  EXPECT(2, "--socket-path", "/tmp/x", "--scanouts", "17");
  EXPECT(2, "--socket-path", "/tmp/x", "--width", "8");
  EXPECT(2, "--socket-path", "/tmp/x", "--height", "5000");
  EXPECT(2, "--socket-path", "/tmp/x", "--max-hostmem", "12Q");
  EXPECT(2, "--socket-path", "/tmp/x", "--max-hostmem", "99999999999999999999");
  EXPECT(2, "--socket-path", "/tmp/x", "--max-hostmem", "1K");
  EXPECT(2, "--socket-path", "/tmp/x", "--no-such-option");
  EXPECT(2, "--fd", "abc");
  EXPECT(2, "--socket-path", "");
  EXPECT(2, "--socket-path", "/tmp/x", "extra");
  EXPECT(1, "--socket-path", nodir);
  EXPECT(1, "--socket-path", file);
  EXPECT(1, "--fd", "987");
  g_unlink(file);
  g_rmdir(dir);
}

/* GET_DISPLAY_INFO and GET_EDID are asked of the display (QEMU 10). */
static void
test_display_info(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_cmd_get_edid ge = gpu_get_edid(0);
  struct virtio_gpu_resp_display_info info;
  struct virtio_gpu_resp_edid edid;
  VhuDisplayStats st;

  g_assert_cmphex(gpu_cmd(f->fe, &di, sizeof di, &info, sizeof info), ==,
                  VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(info.pmodes[0].r.width, ==, 1024);
  g_assert_cmpuint(info.pmodes[0].r.height, ==, 768);
  g_assert_cmphex(gpu_cmd(f->fe, &ge, sizeof ge, &edid, sizeof edid), ==, VIRTIO_GPU_RESP_OK_EDID);
  g_assert_cmpuint(edid.size, ==, 128);
  gpu_check_edid(edid.edid, 1024, 768);
  /* an invalid id is answered by us, never forwarded (QEMU would not reply) */
  ge = gpu_get_edid(1);
  g_assert_cmphex(gpu_cmd(f->fe, &ge, sizeof ge, &edid, sizeof edid), ==,
                  VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmpuint(st.protocol_features_requests, ==, 1);
  g_assert_cmpuint(st.set_protocol_features, ==, 1);
  g_assert_cmphex(st.negotiated_features, ==, 0x3);
  g_assert_cmpuint(st.display_info_requests, ==, 1);
  g_assert_cmpuint(st.edid_requests, ==, 1);
  g_assert_cmpuint(st.errors, ==, 0);
}

/* A display like QEMU 7.2 offers no protocol features: no GET_EDID is sent,
 * the EDID is ours for the configured mode. */
static void
test_display_info_qemu72(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_cmd_get_edid ge = gpu_get_edid(0);
  struct virtio_gpu_resp_display_info info;
  struct virtio_gpu_resp_edid edid;
  VhuDisplayStats st;

  daemon_start(&f->d, "--width", "800", "--height", "600");
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  f->ds = display_attach(f->fe, 1, 1024, 768, 0);
  frontend_start(f->fe);
  g_assert_cmphex(gpu_cmd(f->fe, &ge, sizeof ge, &edid, sizeof edid), ==, VIRTIO_GPU_RESP_OK_EDID);
  gpu_check_edid(edid.edid, 800, 600);
  g_assert_cmphex(gpu_cmd(f->fe, &di, sizeof di, &info, sizeof info), ==,
                  VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(info.pmodes[0].r.width, ==, 1024);
  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmpuint(st.edid_requests, ==, 0);
  g_assert_cmphex(st.negotiated_features, ==, 0);
  g_assert_cmpuint(st.errors, ==, 0);
  teardown(f, NULL);
}

/* create/attach/transfer/set_scanout/flush: the display shows the pixels. */
static void
test_draw(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 320, 200);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 320, 200);
  VhuDisplayStats st;

  res_paint(&r, 1);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &r, 0, 0, 320, 200);
  check_frame(f->ds, 0, &r, 1, 0, 0, 320, 200);
  /* a partial update: only that rectangle changes */
  res_paint(&r, 2);
  res_show(f->fe, f->ds, &r, 100, 50, 30, 20);
  {
    guint w, h;
    g_autofree guint32 *fb = vhu_display_server_get_frame(f->ds, 0, &w, &h);

    for (guint y = 0; y < h; y++) {
      for (guint x = 0; x < w; x++) {
        gboolean in = x >= 100 && x < 130 && y >= 50 && y < 70;
        guint8 cr, cg, cb;

        gpu_pattern(x, y, in ? 2 : 1, &cr, &cg, &cb);
        g_assert_cmphex(fb[y * w + x] & 0xffffff, ==, (guint32)cr << 16 | cg << 8 | cb);
      }
    }
  }
  /* a scanout showing part of a bigger resource */
  s = gpu_set_scanout(0, 1, 20, 10, 200, 150);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_paint(&r, 3);
  res_show(f->fe, f->ds, &r, 0, 0, 320, 200);
  check_frame(f->ds, 0, &r, 3, 20, 10, 200, 150);
  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmpuint(st.errors, ==, 0);
}

/* --qemu-dmabuf reaches the display: with udmabuf the scanout goes as a
 * dmabuf, without it the daemon says so once and sends pixels; the picture
 * is right either way.  Without the option nothing goes as a dmabuf. */
static void
qemu_dmabuf_draw(gboolean on)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 320, 200);
  gboolean udmabuf = g_file_test("/dev/udmabuf", G_FILE_TEST_EXISTS);
  VhuDisplayStats st;
  Res r;

  if (on)
    daemon_start(&f->d, "--qemu-dmabuf");
  else
    daemon_start(&f->d, NULL);
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  f->ds
      = display_attach(f->fe, 1, 1024, 768, BIT(VHU_DISPLAY_PF_EDID) | BIT(VHU_DISPLAY_PF_DMABUF2));
  frontend_start(f->fe);
  r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 320, 200);
  res_paint(&r, 1);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &r, 0, 0, 320, 200);
  check_frame(f->ds, 0, &r, 1, 0, 0, 320, 200);
  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmpuint(st.errors, ==, 0);
  g_assert_cmpuint(st.dmabuf_scanouts > 0, ==, on && udmabuf);
  g_assert_cmpuint(st.dmabuf_updates > 0, ==, on && udmabuf);
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "qemu-dmabuf: no /dev/udmabuf"), ==,
                   on && !udmabuf ? 1 : 0);
  teardown(f, NULL);
}

static void
test_qemu_dmabuf(void)
{
  qemu_dmabuf_draw(TRUE);
  qemu_dmabuf_draw(FALSE);
}

/* All eight formats arrive as the same X8R8G8B8 colours. */
static void
test_formats(Fixture *f, gconstpointer data)
{
  for (guint i = 0; i < G_N_ELEMENTS(gpu_all_formats); i++) {
    Res r = res_create(f->fe, 10 + i, gpu_all_formats[i], 97, 61);
    struct virtio_gpu_set_scanout s = gpu_set_scanout(0, r.id, 0, 0, r.w, r.h);

    res_paint(&r, i);
    g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
    res_show(f->fe, f->ds, &r, 0, 0, r.w, r.h);
    check_frame(f->ds, 0, &r, i, 0, 0, r.w, r.h);
    /* partial rectangles too (row by row for X8R8G8B8-like formats,
     * converted in chunks otherwise) */
    res_paint(&r, i + 100);
    res_show(f->fe, f->ds, &r, 3, 5, 40, 30);
    {
      guint w, h;
      g_autofree guint32 *fb = vhu_display_server_get_frame(f->ds, 0, &w, &h);
      guint8 cr, cg, cb;

      gpu_pattern(3, 5, i + 100, &cr, &cg, &cb);
      g_assert_cmphex(fb[5 * w + 3] & 0xffffff, ==, (guint32)cr << 16 | cg << 8 | cb);
      gpu_pattern(42, 34, i + 100, &cr, &cg, &cb);
      g_assert_cmphex(fb[34 * w + 42] & 0xffffff, ==, (guint32)cr << 16 | cg << 8 | cb);
      gpu_pattern(43, 34, i, &cr, &cg, &cb);
      g_assert_cmphex(fb[34 * w + 43] & 0xffffff, ==, (guint32)cr << 16 | cg << 8 | cb);
    }
  }
}

static void
test_cursor(Fixture *f, gconstpointer data)
{
  Res cur = res_create(f->fe, 2, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, 64, 64);
  Res fb = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(2, 0, 0, 64, 64, 0);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 64, 64);
  struct virtio_gpu_update_cursor c;
  guint32 image[64 * 64];
  guint x, y;
  gboolean visible;

  for (guint p = 0; p < 64 * 64; p++)
    gpu_put_pixel(cur.pixels + p * 4, cur.format, (guint8)p, 0x40, 0x80, (guint8)(p * 3));
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 10, 20, 2, 1, 2);
  cursor_cmd(f->fe, &c);
  c = gpu_cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 30, 40, 2, 0, 0);
  cursor_cmd(f->fe, &c);
  /* display messages keep their order: once this update arrived, so did
   * the cursor messages queued before it */
  res_show(f->fe, f->ds, &fb, 0, 0, 64, 64);
  g_assert_true(vhu_display_server_get_cursor(f->ds, 0, &x, &y, &visible, image));
  g_assert_cmpuint(x, ==, 30);
  g_assert_cmpuint(y, ==, 40);
  g_assert_true(visible);
  for (guint p = 0; p < 64 * 64; p += 63)
    g_assert_cmphex(image[p], ==, (guint32)(guint8)(p * 3) << 24 | (guint8)p << 16 | 0x4080);
  /* hide */
  c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 30, 40, 0, 0, 0);
  cursor_cmd(f->fe, &c);
  res_show(f->fe, f->ds, &fb, 0, 0, 1, 1);
  g_assert_true(vhu_display_server_get_cursor(f->ds, 0, &x, &y, &visible, image));
  g_assert_false(visible);
}

/* Next used element; fails after WAIT_MS. */
static void
wait_used(VhuDriverQueue *q, gpointer *token, guint32 *len)
{
  gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;

  while (!vhu_driver_queue_get_used(q, token, len)) {
    gint64 left = (end - g_get_monotonic_time()) / 1000;

    g_assert_cmpint(left, >, 0);
    vhu_driver_queue_wait(q, (int)left);
  }
}

/* A display that never answers: GET_DISPLAY_INFO and GET_EDID complete after
 * the timeout with the configured mode, and the queue keeps serving other
 * requests meanwhile. */
static void
test_display_silent(void)
{
  Fixture fx = { 0 }, *f = &fx;
  VhuDriverQueue *q;
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8);
  guint64 req_gpa, resp_gpa;
  int peer;
  gint64 t0;
  gpointer token;
  guint32 len;
  guint8 hdr[12];

  daemon_start(&f->d, "--width", "800", "--height", "600");
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  peer = display_attach_raw(f->fe);
  frontend_start(f->fe);

  q = vhu_frontend_get_queue(f->fe, 0);
  req_gpa = vhu_frontend_alloc(f->fe, 4096, 64);
  resp_gpa = vhu_frontend_alloc(f->fe, 4096, 64);
  memcpy(vhu_frontend_gpa_to_ptr(f->fe, req_gpa, sizeof di), &di, sizeof di);
  memcpy(vhu_frontend_gpa_to_ptr(f->fe, req_gpa + 512, sizeof c), &c, sizeof c);
  t0 = g_get_monotonic_time();
  {
    VhuGuestBuf out = { req_gpa, sizeof di }, in = { resp_gpa, 1024 };

    g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, GINT_TO_POINTER(1)), >=, 0);
    out = (VhuGuestBuf){ req_gpa + 512, sizeof c };
    in = (VhuGuestBuf){ resp_gpa + 2048, 64 };
    g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, GINT_TO_POINTER(2)), >=, 0);
  }
  vhu_driver_queue_kick(q);
  /* the create completes first, at once */
  wait_used(q, &token, &len);
  g_assert_cmpint(GPOINTER_TO_INT(token), ==, 2);
  g_assert_cmpint(g_get_monotonic_time() - t0, <, 900 * 1000);
  /* the display info when the daemon gave up waiting */
  wait_used(q, &token, &len);
  g_assert_cmpint(GPOINTER_TO_INT(token), ==, 1);
  g_assert_cmpint(g_get_monotonic_time() - t0, >=, 900 * 1000);
  {
    const struct virtio_gpu_resp_display_info *info
        = vhu_frontend_gpa_to_ptr(f->fe, resp_gpa, sizeof *info);

    g_assert_cmpuint(len, ==, sizeof *info);
    g_assert_cmphex(info->hdr.type, ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
    g_assert_cmpuint(info->pmodes[0].r.width, ==, 800);
    g_assert_cmpuint(info->pmodes[0].r.height, ==, 600);
  }
  /* it did ask: GET_PROTOCOL_FEATURES first, then GET_DISPLAY_INFO */
  g_assert_cmpint(recv(peer, hdr, sizeof hdr, MSG_WAITALL), ==, 12);
  g_assert_cmpuint(hdr[0], ==, VHU_DISPLAY_GET_PROTOCOL_FEATURES);
  g_assert_cmpint(recv(peer, hdr, sizeof hdr, MSG_WAITALL), ==, 12);
  g_assert_cmpuint(hdr[0], ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  /* GET_EDID: the features never came, so the EDID is ours */
  {
    struct virtio_gpu_cmd_get_edid ge = gpu_get_edid(0);
    struct virtio_gpu_resp_edid edid;

    g_assert_cmphex(gpu_cmd(f->fe, &ge, sizeof ge, &edid, sizeof edid), ==,
                    VIRTIO_GPU_RESP_OK_EDID);
    gpu_check_edid(edid.edid, 800, 600);
  }
  close(peer);
  teardown(f, NULL);
}

/* VM pause while a display query is held: the frontend stops the rings
 * (SET_VRING_ENABLE(0) + GET_VRING_BASE) before the display answered.  By
 * the time GET_VRING_BASE answers, the query is answered from the configured
 * mode and the fenced request queued behind it completed too, in order; the
 * base counts both.  Before, both were counted but answered into the
 * stopped ring and lost (the guest times such a request out after 5 s). */
static void
test_stop_answers_held(void)
{
  Fixture fx = { 0 }, *f = &fx;
  g_autoptr(GError) error = NULL;
  VhuDriverQueue *q;
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resource_create_2d fenced
      = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8);
  struct virtio_gpu_resource_create_2d plain
      = gpu_create_2d(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8);
  struct timeval tv = { WAIT_MS / 1000, 0 };
  VhuVringState st = { .index = 0, .num = 0 };
  gsize st_size = sizeof st;
  guint64 req_gpa, resp_gpa;
  int peer;
  gint64 t0;
  gpointer token;
  guint32 len;
  guint8 hdr[12];

  daemon_start(&f->d, "--width", "800", "--height", "600");
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  peer = display_attach_raw(f->fe);
  g_assert_cmpint(setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), ==, 0);
  frontend_start(f->fe);

  q = vhu_frontend_get_queue(f->fe, 0);
  req_gpa = vhu_frontend_alloc(f->fe, 4096, 64);
  resp_gpa = vhu_frontend_alloc(f->fe, 4096, 64);
  fenced.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  fenced.hdr.fence_id = 7;
  memcpy(vhu_frontend_gpa_to_ptr(f->fe, req_gpa, sizeof di), &di, sizeof di);
  memcpy(vhu_frontend_gpa_to_ptr(f->fe, req_gpa + 512, sizeof fenced), &fenced, sizeof fenced);
  memcpy(vhu_frontend_gpa_to_ptr(f->fe, req_gpa + 1024, sizeof plain), &plain, sizeof plain);
  memset(vhu_frontend_gpa_to_ptr(f->fe, resp_gpa, 4096), 0, 4096);
  t0 = g_get_monotonic_time();
  {
    VhuGuestBuf out = { req_gpa, sizeof di }, in = { resp_gpa, 1024 };

    g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, GINT_TO_POINTER(1)), >=, 0);
    out = (VhuGuestBuf){ req_gpa + 512, sizeof fenced };
    in = (VhuGuestBuf){ resp_gpa + 2048, 64 };
    g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, GINT_TO_POINTER(2)), >=, 0);
    out = (VhuGuestBuf){ req_gpa + 1024, sizeof plain };
    in = (VhuGuestBuf){ resp_gpa + 3072, 64 };
    g_assert_cmpint(vhu_driver_queue_add(q, &out, 1, &in, 1, FALSE, GINT_TO_POINTER(3)), >=, 0);
  }
  vhu_driver_queue_kick(q);
  /* the unfenced request completes at once: all three were popped */
  wait_used(q, &token, &len);
  g_assert_cmpint(GPOINTER_TO_INT(token), ==, 3);
  /* and the query is held at the display */
  g_assert_cmpint(recv(peer, hdr, sizeof hdr, MSG_WAITALL), ==, 12);
  g_assert_cmpuint(hdr[0], ==, VHU_DISPLAY_GET_PROTOCOL_FEATURES);
  g_assert_cmpint(recv(peer, hdr, sizeof hdr, MSG_WAITALL), ==, 12);
  g_assert_cmpuint(hdr[0], ==, VHU_DISPLAY_GET_DISPLAY_INFO);
  g_assert_false(vhu_driver_queue_get_used(q, &token, &len));
  if (g_get_monotonic_time() - t0 >= 800 * 1000) {
    /* the daemon's 1 s reply timeout may have answered it already */
    g_test_skip("too slow to stop before the display reply timeout");
    close(peer);
    teardown(f, NULL);
    return;
  }

  g_assert_true(vhu_frontend_stop(f->fe, &error));
  g_assert_no_error(error);
  /* no waiting: the answers were in the used ring when GET_VRING_BASE came */
  g_assert_true(vhu_driver_queue_get_used(q, &token, &len));
  g_assert_cmpint(GPOINTER_TO_INT(token), ==, 1);
  {
    const struct virtio_gpu_resp_display_info *info
        = vhu_frontend_gpa_to_ptr(f->fe, resp_gpa, sizeof *info);

    g_assert_cmpuint(len, ==, sizeof *info);
    g_assert_cmphex(info->hdr.type, ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
    g_assert_cmpuint(info->pmodes[0].r.width, ==, 800);
    g_assert_cmpuint(info->pmodes[0].r.height, ==, 600);
    g_assert_cmpuint(info->pmodes[0].enabled, ==, 1);
  }
  g_assert_true(vhu_driver_queue_get_used(q, &token, &len));
  g_assert_cmpint(GPOINTER_TO_INT(token), ==, 2);
  {
    const struct virtio_gpu_ctrl_hdr *resp
        = vhu_frontend_gpa_to_ptr(f->fe, resp_gpa + 2048, sizeof *resp);

    g_assert_cmpuint(len, ==, sizeof *resp);
    g_assert_cmphex(resp->type, ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(resp->flags & VIRTIO_GPU_FLAG_FENCE, !=, 0);
    g_assert_cmpuint(resp->fence_id, ==, 7);
  }
  g_assert_false(vhu_driver_queue_get_used(q, &token, &len));
  /* the base the frontend got (asked again: the ring stays where it
   * stopped) counts all three */
  g_assert_true(vhu_frontend_send(f->fe, VHU_GET_VRING_BASE, 0, &st, sizeof st, NULL, 0, &error));
  g_assert_no_error(error);
  g_assert_true(
      vhu_frontend_recv_reply(f->fe, VHU_GET_VRING_BASE, &st, &st_size, NULL, NULL, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(st_size, ==, sizeof st);
  g_assert_cmpuint(st.index, ==, 0);
  g_assert_cmpuint(st.num, ==, 3);
  close(peer);
  teardown(f, NULL);
}

/* A display that stops reading while an 8 MB UPDATE is on its way: the
 * vhost-user control path (which QEMU may be blocked on, holding its main
 * loop) and the cursor queue still answer at once, and SIGTERM still ends
 * the daemon promptly. */
static void
test_display_not_reading(void)
{
  Fixture fx = { 0 }, *f = &fx;
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 1920, 1080);
  struct virtio_gpu_update_cursor c = gpu_cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 1, 2, 0, 0, 0);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 1920, 1080, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 1920, 1080);
  struct virtio_gpu_config cfg;
  Res r;
  int peer;
  gint64 t0;

  daemon_start(&f->d, NULL);
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  peer = display_attach_raw(f->fe);
  frontend_start(f->fe);
  r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 1920, 1080);
  res_paint(&r, 1);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* the UPDATE now fills the socket buffer and its writer waits */
  t0 = g_get_monotonic_time();
  for (guint i = 0; i < 20; i++) {
    g_assert_true(vhu_frontend_get_config(f->fe, 0, &cfg, sizeof cfg, &error));
    g_assert_no_error(error);
    cursor_cmd(f->fe, &c);
  }
  g_assert_cmpint(g_get_monotonic_time() - t0, <, 500 * 1000);
  g_assert_cmpuint(cfg.num_scanouts, ==, 1);
  close(peer);
  teardown(f, NULL);
}

/* Guest reboot: the device stops, QEMU sends a new display socket, the
 * driver restarts its rings from 0.  The old resources are gone and updates
 * flow to the new socket. */
static void
test_reboot(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(VhuDisplayServer) ds2 = NULL;
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 160, 100);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 160, 100);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 1, 1);
  VhuDisplayStats st1, st1b;

  res_paint(&r, 1);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &r, 0, 0, 160, 100);
  check_frame(f->ds, 0, &r, 1, 0, 0, 160, 100);

  for (guint boot = 0; boot < 3; boot++) {
    g_assert_true(vhu_frontend_stop(f->fe, &error));
    g_assert_no_error(error);
    vhu_display_server_get_stats(f->ds, &st1);
    g_clear_pointer(&ds2, vhu_display_server_free);
    ds2 = display_attach(f->fe, 1, 1024, 768, 0x3);
    frontend_start(f->fe);
    g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
    r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 200, 120);
    res_paint(&r, 10 + boot);
    s = gpu_set_scanout(0, 1, 0, 0, 200, 120);
    g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
    res_show(f->fe, ds2, &r, 0, 0, 200, 120);
    check_frame(ds2, 0, &r, 10 + boot, 0, 0, 200, 120);
    vhu_display_server_get_stats(f->ds, &st1b);
    g_assert_cmpuint(st1b.updates, ==, st1.updates); /* nothing to the old one */
  }
}

/* Frontend reconnect: disconnect, connect again: a fresh device. */
static void
test_reconnect(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 64, 64);

  res_paint(&r, 1);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &r, 0, 0, 64, 64);
  for (guint i = 0; i < 3; i++) {
    struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 1, 1);
    struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    struct virtio_gpu_resp_display_info info;

    g_clear_pointer(&f->fe, vhu_frontend_free);
    g_clear_pointer(&f->ds, vhu_display_server_free);
    f->fe = frontend_connect(&f->d);
    frontend_init(f->fe);
    f->ds = display_attach(f->fe, 1, 640 + i, 480, 0x3);
    frontend_start(f->fe);
    g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
    g_assert_cmphex(gpu_cmd(f->fe, &di, sizeof di, &info, sizeof info), ==,
                    VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
    g_assert_cmpuint(info.pmodes[0].r.width, ==, 640 + i);
    r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
    res_paint(&r, 5 + i);
    g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
    res_show(f->fe, f->ds, &r, 0, 0, 64, 64);
    check_frame(f->ds, 0, &r, 5 + i, 0, 0, 64, 64);
  }
}

/* Hostile requests through the real ring: each gets an error, the daemon
 * logs a bounded number of lines and keeps serving. */
static void
test_hostile(Fixture *f, gconstpointer data)
{
  g_autoptr(GRand) rand = g_rand_new_with_seed(42);
  Res r;
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 64, 64);
  guint8 req[96], resp[64];

  for (guint i = 0; i < 3000; i++) {
    guint32 type = VIRTIO_GPU_CMD_GET_DISPLAY_INFO + g_rand_int_range(rand, 1, 11);
    gsize len = (gsize)g_rand_int_range(rand, 1, sizeof req + 1);

    for (guint b = 0; b < sizeof req; b++)
      req[b] = (guint8)g_rand_int(rand);
    memcpy(req, &type, 4);
    memset(req + 4, 0, 4); /* no fences */
    gpu_cmd(f->fe, req, len, resp, sizeof resp);
  }
  {
    struct virtio_gpu_mem_entry e = { 0xdead0000000ull, 4096, 0 };
    g_autofree guint8 *a = NULL;
    struct virtio_gpu_resource_create_2d c
        = gpu_create_2d(99, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16384, 16384);
    gsize len;

    g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
    c = gpu_create_2d(99, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
    g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
    a = gpu_attach(99, &e, 1, 1, &len);
    for (guint i = 0; i < 100; i++)
      g_assert_cmphex(gpu_cmd(f->fe, a, len, NULL, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  }
  r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
  res_paint(&r, 7);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &r, 0, 0, 64, 64);
  check_frame(f->ds, 0, &r, 7, 0, 0, 64, 64);
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "guest:"), >, 0);
  g_assert_cmpuint(tu_daemon_count_log(&f->d, "guest:"), <=, 25);
}

/* Budget: --max-hostmem applies through the daemon too. */
static void
test_hostmem(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_resource_create_2d c;
  struct virtio_gpu_resource_unref u = gpu_unref(1);

  daemon_start(&f->d, "--max-hostmem", "1M");
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  f->ds = display_attach(f->fe, 1, 640, 480, 0x3);
  frontend_start(f->fe);
  /* 512x510 pixels and the resource's records: less than 16x16 is left */
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 512, 510);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  c = gpu_create_2d(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
  g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  teardown(f, NULL);
}

/* Two scanouts, each its own display surface. */
static void
test_two_scanouts(void)
{
  Fixture fx = { 0 }, *f = &fx;
  Res a, b;
  struct virtio_gpu_set_scanout s;
  struct virtio_gpu_config cfg;
  g_autoptr(GError) error = NULL;

  daemon_start(&f->d, "--scanouts", "2");
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  g_assert_true(vhu_frontend_get_config(f->fe, 0, &cfg, sizeof cfg, &error));
  g_assert_cmpuint(cfg.num_scanouts, ==, 2);
  f->ds = display_attach(f->fe, 2, 640, 480, 0x3);
  frontend_start(f->fe);
  a = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 100, 80);
  b = res_create(f->fe, 2, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM, 90, 70);
  res_paint(&a, 1);
  res_paint(&b, 2);
  s = gpu_set_scanout(0, 1, 0, 0, 100, 80);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  s = gpu_set_scanout(1, 2, 0, 0, 90, 70);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &a, 0, 0, 100, 80);
  res_show(f->fe, f->ds, &b, 0, 0, 90, 70);
  check_frame(f->ds, 0, &a, 1, 0, 0, 100, 80);
  check_frame(f->ds, 1, &b, 2, 0, 0, 90, 70);
  /* disabling scanout 1 reaches the display */
  s = gpu_set_scanout(1, 0, 0, 0, 0, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_show(f->fe, f->ds, &a, 0, 0, 1, 1);
  {
    guint w, h;
    guint32 *fb = vhu_display_server_get_frame(f->ds, 1, &w, &h);

    g_assert_null(fb);
  }
  teardown(f, NULL);
}

/* Hostile frontend: the memory region holding a resource's backing is
 * removed (REM_MEM_REG) between TRANSFER_TO_HOST_2D and RESOURCE_FLUSH.  The
 * backing keeps its mappings, so the flush reads valid memory and shows the
 * pixels; new backings there are refused and the daemon keeps serving. */
static void
test_memory_removed(void)
{
  const guint64 gpa2 = 0x40000000ull;
  const guint w = 320, h = 200;
  Fixture fx = { 0 }, *f = &fx;
  g_autoptr(GError) error = NULL;
  Res r = { 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, gpa2, NULL };
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(1, r.format, w, h);
  struct virtio_gpu_mem_entry e = { gpa2, w * h * 4, 0 };
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, w, h);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, w, h, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, w, h);
  VhuMemSingleRegion rem = { 0 };
  g_autofree guint8 *a = NULL;
  VhuDisplayStats st;
  gsize len;

  daemon_start(&f->d, NULL);
  f->fe = frontend_connect(&f->d);
  frontend_init(f->fe);
  g_assert_true(vhu_frontend_add_region(f->fe, gpa2, 4u << 20, &error));
  g_assert_no_error(error);
  f->ds = display_attach(f->fe, 1, 1024, 768, 0x3);
  frontend_start(f->fe);
  r.pixels = vhu_frontend_gpa_to_ptr(f->fe, gpa2, w * h * 4);
  res_paint(&r, 9);
  a = gpu_attach(1, &e, 1, 1, &len);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(f->fe, a, len, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);

  rem.region = (VhuMemRegionDesc){ gpa2, 4u << 20, (guint64)(guintptr)r.pixels, 0 };
  g_assert_true(vhu_frontend_request(f->fe, VHU_REM_MEM_REG, &rem, sizeof rem, NULL, 0, &error));
  g_assert_no_error(error);

  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_true(vhu_display_server_wait_updates(f->ds, st.updates + 1, WAIT_MS));
  check_frame(f->ds, 0, &r, 9, 0, 0, w, h);
  c.resource_id = 2;
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  ((struct virtio_gpu_resource_attach_backing *)(void *)a)->resource_id = 2;
  g_assert_cmphex(gpu_cmd(f->fe, a, len, NULL, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  {
    struct virtio_gpu_resource_detach_backing d = gpu_detach(1);
    struct virtio_gpu_resource_unref u = gpu_unref(1);

    g_assert_cmphex(CMD(f->fe, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  teardown(f, NULL);
}

/* --fd: the daemon serves an inherited socket and exits 0 when it closes. */
static void
test_fd_mode(void)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GSubprocess) proc = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(VhuFrontend) fe = NULL;
  g_autoptr(VhuDisplayServer) ds = NULL;
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resp_display_info info;
  int sv[2];

  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  launcher
      = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_SILENCE
                                  | (g_test_verbose() ? 0 : G_SUBPROCESS_FLAGS_STDERR_SILENCE));
  g_subprocess_launcher_take_fd(launcher, sv[1], 3);
  proc = g_subprocess_launcher_spawn(launcher, &error, daemon_binary(), "--fd", "3", NULL);
  g_assert_no_error(error);
  fe = vhu_frontend_new_from_fd(sv[0]);
  frontend_init(fe);
  ds = display_attach(fe, 1, 720, 400, 0x3);
  frontend_start(fe);
  g_assert_cmphex(gpu_cmd(fe, &di, sizeof di, &info, sizeof info), ==,
                  VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(info.pmodes[0].r.width, ==, 720);
  g_clear_pointer(&fe, vhu_frontend_free);
  g_assert_true(g_subprocess_wait(proc, NULL, &error));
  g_assert_true(g_subprocess_get_if_exited(proc));
  g_assert_cmpint(g_subprocess_get_exit_status(proc), ==, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  if (!g_file_test(daemon_binary(), G_FILE_TEST_IS_EXECUTABLE)) {
    g_printerr("gst-vhost-gpu not built: %s\n", daemon_binary());
    return 77;
  }
#define ADD(name, fn) g_test_add("/gpu/daemon/" name, Fixture, NULL, setup, fn, teardown)
  g_test_add_func("/gpu/daemon/capabilities", test_capabilities);
  g_test_add_func("/gpu/daemon/bad-options", test_bad_options);
  g_test_add_func("/gpu/daemon/descriptor-and-man-page", test_descriptor_and_man_page);
  ADD("display-info", test_display_info);
  g_test_add_func("/gpu/daemon/display-info-qemu72", test_display_info_qemu72);
  g_test_add_func("/gpu/daemon/display-silent", test_display_silent);
  g_test_add_func("/gpu/daemon/stop-answers-held", test_stop_answers_held);
  g_test_add_func("/gpu/daemon/display-not-reading", test_display_not_reading);
  ADD("draw", test_draw);
  ADD("formats", test_formats);
  ADD("cursor", test_cursor);
  ADD("reboot", test_reboot);
  ADD("reconnect", test_reconnect);
  ADD("hostile", test_hostile);
  g_test_add_func("/gpu/daemon/hostmem", test_hostmem);
  g_test_add_func("/gpu/daemon/two-scanouts", test_two_scanouts);
  g_test_add_func("/gpu/daemon/fd-mode", test_fd_mode);
  g_test_add_func("/gpu/daemon/qemu-dmabuf", test_qemu_dmabuf);
  g_test_add_func("/gpu/daemon/memory-removed-after-transfer", test_memory_removed);
  return g_test_run();
}
