/* 3D tests: gst-vhost-gpu --virgl as a separate process, driven through the
 * project's vhost-user frontend over a real socket, rendering with
 * virglrenderer (llvmpipe when the machine has no GPU).  Pixels are checked
 * in guest memory after TRANSFER_FROM_HOST_3D.  Skipped (exit 77) only
 * where the renderer cannot start. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "gpu-test-frontend.h"
#include "test-util.h"
#include "vhu-display.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (96u << 20)
#define WAIT_MS    10000

/* virgl command stream (virgl_protocol.h) */
#define VCMD(cmd, obj, len)      ((guint32)(cmd) | (guint32)(obj) << 8 | (guint32)(len) << 16)
#define VIRGL_CCMD_CREATE_OBJECT 1
#define VIRGL_CCMD_SET_FB_STATE  5
#define VIRGL_CCMD_CLEAR         7
#define VIRGL_OBJECT_SURFACE     8
#define VIRGL_FORMAT_B8G8R8X8    2
#define PIPE_TEXTURE_2D          2
#define PIPE_CLEAR_COLOR0        4
#define BIND_RENDER_TARGET       (1u << 1)
#define BIND_SAMPLER_VIEW        (1u << 3)
#define MAX_SUBMIT               (4u << 20)

typedef struct {
  GSubprocess *proc;
  char *dir, *path;
  GThread *reader;
  GMutex lock;
  GCond cond;
  GPtrArray *lines;
  gboolean eof;
} Daemon;

typedef struct {
  Daemon d;
  VhuFrontend *fe;
  VhuDisplayServer *ds;
} Fixture;

static const char *
daemon_binary(void)
{
  const char *env = g_getenv("GST_VHOST_GPU");

  return env ? env : GST_VHOST_GPU;
}

static gpointer
reader_main(gpointer data)
{
  Daemon *d = data;
  g_autoptr(GDataInputStream) in = g_data_input_stream_new(g_subprocess_get_stderr_pipe(d->proc));
  char *line;

  while ((line = g_data_input_stream_read_line_utf8(in, NULL, NULL, NULL))) {
    if (g_test_verbose())
      g_printerr("# daemon: %s\n", line);
    g_mutex_lock(&d->lock);
    g_ptr_array_add(d->lines, line);
    g_cond_broadcast(&d->cond);
    g_mutex_unlock(&d->lock);
  }
  g_mutex_lock(&d->lock);
  d->eof = TRUE;
  g_cond_broadcast(&d->cond);
  g_mutex_unlock(&d->lock);
  return NULL;
}

/* Waits for a line containing @text; FALSE at end of output or timeout. */
static gboolean
daemon_wait_log(Daemon *d, const char *text, int timeout_ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  gboolean found = FALSE;

  g_mutex_lock(&d->lock);
  while (!found) {
    for (guint i = 0; i < d->lines->len && !found; i++)
      found = strstr(d->lines->pdata[i], text) != NULL;
    if (found || d->eof || !g_cond_wait_until(&d->cond, &d->lock, end))
      break;
  }
  g_mutex_unlock(&d->lock);
  return found;
}

static guint
daemon_count_log(Daemon *d, const char *text)
{
  guint n = 0;

  g_mutex_lock(&d->lock);
  for (guint i = 0; i < d->lines->len; i++)
    n += strstr(d->lines->pdata[i], text) != NULL;
  g_mutex_unlock(&d->lock);
  return n;
}

/* Starts gst-vhost-gpu --virgl; FALSE (daemon gone, output kept in @why)
 * when the renderer does not start. */
static gboolean
daemon_try_start(Daemon *d, char **why)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GError) error = NULL;

  memset(d, 0, sizeof *d);
  g_mutex_init(&d->lock);
  g_cond_init(&d->cond);
  d->lines = g_ptr_array_new_with_free_func(g_free);
  d->dir = tu_make_tmpdir("gst-vhost-virgl-XXXXXX");
  d->path = g_build_filename(d->dir, "gpu.sock", NULL);
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_SILENCE
                                       | G_SUBPROCESS_FLAGS_STDERR_PIPE);
  d->proc = g_subprocess_launcher_spawn(launcher, &error, daemon_binary(), "--virgl",
                                        "--socket-path", d->path, NULL);
  g_assert_no_error(error);
  d->reader = g_thread_new("daemon-stderr", reader_main, d);
  if (daemon_wait_log(d, "listening on", WAIT_MS))
    return TRUE;
  g_mutex_lock(&d->lock);
  *why = g_strjoinv("; ", (char **)g_ptr_array_steal(d->lines, NULL));
  g_mutex_unlock(&d->lock);
  return FALSE;
}

static void
daemon_stop(Daemon *d)
{
  if (!d->proc)
    return;
  g_subprocess_send_signal(d->proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(d->proc, WAIT_MS), ==, 0);
  g_thread_join(d->reader);
  g_clear_object(&d->proc);
  g_ptr_array_unref(d->lines);
  g_mutex_clear(&d->lock);
  g_cond_clear(&d->cond);
  g_unlink(d->path);
  g_rmdir(d->dir);
  g_free(d->path);
  g_free(d->dir);
}

static VhuFrontend *
frontend_new_display(Daemon *d, gboolean context_init, VhuDisplayServer *ds)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 128, 16 };
  guint64 drv = BIT(VIRTIO_GPU_F_VIRGL) | BIT(VIRTIO_GPU_F_EDID) | BIT(VHU_F_RING_INDIRECT_DESC)
                | BIT(VHU_F_RING_EVENT_IDX) | (context_init ? BIT(VIRTIO_GPU_F_CONTEXT_INIT) : 0);
  VhuFrontend *fe = vhu_frontend_connect(d->path, &error);

  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_no_error(error);
  if (ds) {
    g_assert_true(vhu_display_server_attach(ds, fe, &error));
    g_assert_no_error(error);
  }
  g_assert_true(vhu_frontend_start(fe, drv, sizes, 2, &error));
  g_assert_no_error(error);
  return fe;
}

static VhuFrontend *
frontend_new(Daemon *d, gboolean context_init)
{
  return frontend_new_display(d, context_init, NULL);
}

static void
setup(Fixture *f, gconstpointer data)
{
  g_autofree char *why = NULL;

  g_assert_true(daemon_try_start(&f->d, &why));
  f->fe = frontend_new(&f->d, data != NULL);
}

/* With a display like QEMU 10's, 1280x800. */
static void
setup_display(Fixture *f, gconstpointer data)
{
  VhuDisplayConfig cfg = { 1, 1280, 800, 0x3, FALSE };
  g_autofree char *why = NULL;

  g_assert_true(daemon_try_start(&f->d, &why));
  f->ds = vhu_display_server_new(&cfg);
  f->fe = frontend_new_display(&f->d, FALSE, f->ds);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  g_clear_pointer(&f->ds, vhu_display_server_free);
  daemon_stop(&f->d);
}

/* --- requests -------------------------------------------------------------- */

#define CMD(fe, c) gpu_cmd((fe), &(c), sizeof(c), NULL, 0)

static guint32
ctx_create(VhuFrontend *fe, guint32 ctx, guint32 context_init)
{
  struct virtio_gpu_ctx_create c = { GPU_HDR(VIRTIO_GPU_CMD_CTX_CREATE) };

  c.hdr.ctx_id = ctx;
  c.nlen = 4;
  c.context_init = context_init;
  memcpy(c.debug_name, "test", 4);
  return CMD(fe, c);
}

static guint32
ctx_destroy(VhuFrontend *fe, guint32 ctx)
{
  struct virtio_gpu_ctx_destroy c = { GPU_HDR(VIRTIO_GPU_CMD_CTX_DESTROY) };

  c.hdr.ctx_id = ctx;
  return CMD(fe, c);
}

static guint32
ctx_resource(VhuFrontend *fe, guint32 ctx, guint32 res, gboolean attach)
{
  struct virtio_gpu_ctx_resource c = { GPU_HDR(attach ? VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE
                                                      : VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE) };

  c.hdr.ctx_id = ctx;
  c.resource_id = res;
  return CMD(fe, c);
}

static struct virtio_gpu_resource_create_3d
create_3d(guint32 id, guint32 w, guint32 h)
{
  return (struct virtio_gpu_resource_create_3d){
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_3D),
    .resource_id = id,
    .target = PIPE_TEXTURE_2D,
    .format = VIRGL_FORMAT_B8G8R8X8,
    .bind = BIND_RENDER_TARGET | BIND_SAMPLER_VIEW,
    .width = w,
    .height = h,
    .depth = 1,
    .array_size = 1,
  };
}

static struct virtio_gpu_transfer_host_3d
transfer_3d(guint32 type, guint32 ctx, guint32 id, guint32 w, guint32 h)
{
  return (struct virtio_gpu_transfer_host_3d){
    .hdr = { .type = type, .ctx_id = ctx },
    .box = { 0, 0, 0, w, h, 1 },
    .resource_id = id,
    .stride = w * 4,
  };
}

typedef struct {
  guint32 id, w, h;
  guint8 *pixels; /* its backing in guest memory */
} Res;

/* A 3D render target with backing, attached to @ctx. */
static Res
res_new(VhuFrontend *fe, guint32 ctx, guint32 id, guint32 w, guint32 h)
{
  struct virtio_gpu_resource_create_3d c = create_3d(id, w, h);
  Res r = { id, w, h, NULL };
  struct virtio_gpu_mem_entry e;
  g_autofree guint8 *req = NULL;
  guint64 gpa;
  gsize len;

  gpa = vhu_frontend_alloc(fe, (gsize)w * h * 4, 4096);
  g_assert_cmphex(gpa, !=, G_MAXUINT64);
  r.pixels = vhu_frontend_gpa_to_ptr(fe, gpa, (gsize)w * h * 4);
  e = (struct virtio_gpu_mem_entry){ gpa, w * h * 4, 0 };
  req = gpu_attach(id, &e, 1, 1, &len);
  g_assert_cmphex(CMD(fe, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(fe, req, len, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(ctx_resource(fe, ctx, id, TRUE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  return r;
}

/* A SUBMIT_3D request around @n dwords; g_free it. */
static guint8 *
submit_new(guint32 ctx, const guint32 *dw, guint n, gsize *len)
{
  struct virtio_gpu_cmd_submit s = { GPU_HDR(VIRTIO_GPU_CMD_SUBMIT_3D) };
  guint8 *buf = g_malloc0(sizeof s + n * 4u);

  s.hdr.ctx_id = ctx;
  s.size = n * 4u;
  memcpy(buf, &s, sizeof s);
  memcpy(buf + sizeof s, dw, n * 4u);
  *len = sizeof s + n * 4u;
  return buf;
}

/* Surface @surf on resource @res as the only colour buffer, then @clears
 * clears to (r, g, b). */
static GArray *
stream_clear(guint32 surf, guint32 res, float r, float g, float b, guint clears)
{
  GArray *a = g_array_new(FALSE, FALSE, sizeof(guint32));
  guint32 head[] = {
    VCMD(VIRGL_CCMD_CREATE_OBJECT, VIRGL_OBJECT_SURFACE, 5),
    surf,
    res,
    VIRGL_FORMAT_B8G8R8X8,
    0,
    0,
    VCMD(VIRGL_CCMD_SET_FB_STATE, 0, 3),
    1,
    0,
    surf,
  };
  float rgba[4] = { r, g, b, 1.0f };
  double depth = 1.0;
  guint32 clear[9] = { VCMD(VIRGL_CCMD_CLEAR, 0, 8), PIPE_CLEAR_COLOR0 };

  memcpy(&clear[2], rgba, sizeof rgba);
  memcpy(&clear[6], &depth, sizeof depth);
  g_array_append_vals(a, head, G_N_ELEMENTS(head));
  for (guint i = 0; i < clears; i++)
    g_array_append_vals(a, clear, G_N_ELEMENTS(clear));
  return a;
}

static guint32
submit(VhuFrontend *fe, guint32 ctx, GArray *stream, guint32 flags)
{
  gsize len;
  g_autofree guint8 *req = submit_new(ctx, (guint32 *)stream->data, stream->len, &len);

  ((struct virtio_gpu_ctrl_hdr *)req)->flags = flags;
  ((struct virtio_gpu_ctrl_hdr *)req)->fence_id = 7;
  return gpu_cmd(fe, req, len, NULL, 0);
}

/* Every pixel of @r is (r, g, b) in B8G8R8X8. */
static void
check_color(const Res *r, guint8 cr, guint8 cg, guint8 cb)
{
  for (gsize i = 0; i < (gsize)r->w * r->h; i++) {
    const guint8 *p = r->pixels + i * 4;

    if (p[0] != cb || p[1] != cg || p[2] != cr)
      g_error("pixel %zu is %02x%02x%02x, expected %02x%02x%02x", i, p[2], p[1], p[0], cr, cg, cb);
  }
}

/* Clears @r on @ctx to (r, g, b) and reads it back into its backing. */
static void
clear_and_check(VhuFrontend *fe, guint32 ctx, Res *r, guint32 surf, guint8 cr, guint8 cg, guint8 cb)
{
  g_autoptr(GArray) s = stream_clear(surf, r->id, cr / 255.0f, cg / 255.0f, cb / 255.0f, 1);
  struct virtio_gpu_transfer_host_3d t
      = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, ctx, r->id, r->w, r->h);

  memset(r->pixels, 0x33, (gsize)r->w * r->h * 4);
  g_assert_cmphex(submit(fe, ctx, s, VIRTIO_GPU_FLAG_FENCE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  t.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  g_assert_cmphex(CMD(fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  check_color(r, cr, cg, cb);
}

/* --- asynchronous requests ------------------------------------------------- */

typedef struct {
  guint64 req_gpa, resp_gpa;
  guint idx;
} Slot;

/* Adds @req to the control ring without kicking; returns its slot. */
static Slot *
add_async(VhuFrontend *fe, const void *req, gsize len, guint idx)
{
  Slot *s = g_new0(Slot, 1);
  VhuGuestBuf out, in;

  s->idx = idx;
  s->req_gpa = vhu_frontend_alloc(fe, len, 64);
  s->resp_gpa = vhu_frontend_alloc(fe, sizeof(struct virtio_gpu_ctrl_hdr), 64);
  g_assert_cmphex(s->resp_gpa, !=, G_MAXUINT64);
  memcpy(vhu_frontend_gpa_to_ptr(fe, s->req_gpa, len), req, len);
  memset(vhu_frontend_gpa_to_ptr(fe, s->resp_gpa, 24), 0, 24);
  out = (VhuGuestBuf){ s->req_gpa, (guint32)len };
  in = (VhuGuestBuf){ s->resp_gpa, 24 };
  g_assert_cmpint(vhu_driver_queue_add(vhu_frontend_get_queue(fe, 0), &out, 1, &in, 1, FALSE, s),
                  >=, 0);
  return s;
}

/* Collects @n answers, in the order the device gave them. */
static GPtrArray *
collect(VhuFrontend *fe, guint n)
{
  VhuDriverQueue *q = vhu_frontend_get_queue(fe, 0);
  GPtrArray *done = g_ptr_array_new(); /* the caller owns the slots */
  gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;

  while (done->len < n) {
    gpointer token;
    guint32 len;

    if (vhu_driver_queue_get_used(q, &token, &len)) {
      g_assert_cmpuint(len, ==, 24);
      g_ptr_array_add(done, token);
      continue;
    }
    g_assert_cmpint(g_get_monotonic_time(), <, end);
    vhu_driver_queue_wait(q, 100);
  }
  return done;
}

static const struct virtio_gpu_ctrl_hdr *
slot_resp(VhuFrontend *fe, Slot *s)
{
  return vhu_frontend_gpa_to_ptr(fe, s->resp_gpa, 24);
}

/* --- tests ----------------------------------------------------------------- */

static void
test_capsets(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_config cfg = { 0 };
  struct virtio_gpu_get_capset_info ci = { GPU_HDR(VIRTIO_GPU_CMD_GET_CAPSET_INFO) };
  struct virtio_gpu_resp_capset_info info[2];
  g_autoptr(GError) error = NULL;
  guint64 offered = vhu_frontend_get_backend_features(f->fe);

  g_assert_true(offered & BIT(VIRTIO_GPU_F_VIRGL));
  g_assert_true(offered & BIT(VIRTIO_GPU_F_CONTEXT_INIT));
  g_assert_true(vhu_frontend_get_config(f->fe, 0, &cfg, sizeof cfg, &error));
  g_assert_cmpuint(cfg.num_capsets, ==, 2);
  for (guint i = 0; i < 2; i++) {
    ci.capset_index = i;
    g_assert_cmphex(gpu_cmd(f->fe, &ci, sizeof ci, &info[i], sizeof info[i]), ==,
                    VIRTIO_GPU_RESP_OK_CAPSET_INFO);
    g_assert_cmpuint(info[i].capset_id, ==, i + 1);
    g_assert_cmpuint(info[i].capset_max_version, >=, 1);
    g_assert_cmpuint(info[i].capset_max_size, >, 16);
  }
  ci.capset_index = 2;
  g_assert_cmphex(CMD(f->fe, ci), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  ci.capset_index = G_MAXUINT32;
  g_assert_cmphex(CMD(f->fe, ci), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);

  for (guint i = 0; i < 2; i++) {
    struct virtio_gpu_get_capset c
        = { GPU_HDR(VIRTIO_GPU_CMD_GET_CAPSET), info[i].capset_id, info[i].capset_max_version };
    gsize size = sizeof(struct virtio_gpu_ctrl_hdr) + info[i].capset_max_size;
    g_autofree guint8 *resp = g_malloc0(size + 64);
    g_autoptr(GError) err = NULL;
    gssize n;

    n = vhu_driver_queue_transact(vhu_frontend_get_queue(f->fe, 0), &c, sizeof c, resp, size + 64,
                                  &err);
    g_assert_no_error(err);
    g_assert_cmpint(n, ==, (gssize)size);
    g_assert_cmphex(((struct virtio_gpu_ctrl_hdr *)resp)->type, ==, VIRTIO_GPU_RESP_OK_CAPSET);
    /* struct virgl_caps_v1/v2 start with max_version */
    g_assert_cmpuint(*(guint32 *)(resp + 24), ==, info[i].capset_max_version);
    /* too small a response buffer */
    g_assert_cmphex(gpu_cmd(f->fe, &c, sizeof c, resp, 64), ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    /* a version beyond the maximum */
    c.capset_version++;
    g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  }
  {
    struct virtio_gpu_get_capset c = { GPU_HDR(VIRTIO_GPU_CMD_GET_CAPSET), 4, 0 };

    g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    c.capset_id = 0;
    g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  }
}

/* Clear, read back, upload, read back: every pixel checked. */
static void
test_render(Fixture *f, gconstpointer data)
{
  Res r;
  struct virtio_gpu_transfer_host_3d t;

  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  r = res_new(f->fe, 1, 1, 64, 64);
  clear_and_check(f->fe, 1, &r, 10, 0xff, 0x00, 0xff);
  clear_and_check(f->fe, 1, &r, 11, 0x00, 0x80, 0xff);

  /* upload a pattern, wipe the backing, read it back */
  for (guint y = 0; y < r.h; y++)
    for (guint x = 0; x < r.w; x++) {
      guint8 cr, cg, cb;

      gpu_pattern(x, y, 3, &cr, &cg, &cb);
      gpu_put_pixel(r.pixels + ((gsize)y * r.w + x) * 4, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, cr, cg,
                    cb, 0xff);
    }
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 1, r.w, r.h);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  memset(r.pixels, 0, (gsize)r.w * r.h * 4);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, 0, 1, r.w, r.h);
  t.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  for (guint y = 0; y < r.h; y++)
    for (guint x = 0; x < r.w; x++) {
      const guint8 *p = r.pixels + ((gsize)y * r.w + x) * 4;
      guint8 cr, cg, cb;

      gpu_pattern(x, y, 3, &cr, &cg, &cb);
      g_assert_cmphex(p[0], ==, cb);
      g_assert_cmphex(p[1], ==, cg);
      g_assert_cmphex(p[2], ==, cr);
    }

  /* a 3D resource as TRANSFER_TO_HOST_2D's target, then back out */
  {
    struct virtio_gpu_transfer_to_host_2d t2 = gpu_transfer(1, 0, 0, r.w, r.h, 0);

    memset(r.pixels, 0x40, (gsize)r.w * r.h * 4);
    g_assert_cmphex(CMD(f->fe, t2), ==, VIRTIO_GPU_RESP_OK_NODATA);
    memset(r.pixels, 0, (gsize)r.w * r.h * 4);
    t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, 1, 1, r.w, r.h);
    g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
    check_color(&r, 0x40, 0x40, 0x40);
  }

  g_assert_cmphex(ctx_resource(f->fe, 1, 1, FALSE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  {
    struct virtio_gpu_resource_detach_backing d = gpu_detach(1);
    struct virtio_gpu_resource_unref u = gpu_unref(1);

    g_assert_cmphex(CMD(f->fe, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
    t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, 1, 1, r.w, r.h);
    g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_UNSPEC); /* no backing */
    g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  }
  g_assert_cmphex(ctx_destroy(f->fe, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

/* Every bad id and size gets its error answer, and nothing breaks. */
static void
test_errors(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_create_3d c;
  struct virtio_gpu_transfer_host_3d t;
  struct virtio_gpu_resource_create_2d c2
      = gpu_create_2d(50, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16);
  g_autoptr(GArray) s = stream_clear(1, 1, 0, 0, 0, 1);
  Res r;

  /* contexts */
  g_assert_cmphex(ctx_create(f->fe, 0, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(ctx_destroy(f->fe, 9), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(ctx_destroy(f->fe, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  {
    struct virtio_gpu_ctx_create cc = { GPU_HDR(VIRTIO_GPU_CMD_CTX_CREATE) };

    cc.hdr.ctx_id = 2;
    cc.nlen = 65;
    g_assert_cmphex(CMD(f->fe, cc), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  }
  g_assert_cmphex(submit(f->fe, 9, s, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(submit(f->fe, 0, s, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(ctx_resource(f->fe, 1, 77, TRUE), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  g_assert_cmphex(ctx_resource(f->fe, 9, 77, TRUE), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);

  /* resources */
  c = create_3d(0, 64, 64);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  g_assert_cmphex(CMD(f->fe, c2), ==, VIRTIO_GPU_RESP_OK_NODATA);
  c = create_3d(50, 64, 64); /* a 2D resource's id */
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  /* a 2D resource: attached as the guest driver does with dumb buffers, nothing to do */
  g_assert_cmphex(ctx_resource(f->fe, 1, 50, TRUE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(ctx_resource(f->fe, 1, 50, FALSE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  r = res_new(f->fe, 1, 1, 64, 64);
  c = create_3d(1, 64, 64);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  c2.resource_id = 1; /* a 3D resource's id */
  g_assert_cmphex(CMD(f->fe, c2), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  {
    struct {
      guint32 target, w, h, depth, layers, levels, samples, format;
    } bad[] = {
      { 9, 64, 64, 1, 1, 0, 0, 2 },        /* unknown target */
      { 2, 0, 64, 1, 1, 0, 0, 2 },         /* empty */
      { 2, 16385, 64, 1, 1, 0, 0, 2 },     /* too wide */
      { 2, 64, 64, 2, 1, 0, 0, 2 },        /* depth on 2D */
      { 2, 64, 64, 1, 2, 0, 0, 2 },        /* layers on 2D */
      { 2, 64, 64, 1, 1, 7, 0, 2 },        /* more levels than 64 has */
      { 2, 64, 64, 1, 1, 0, 64, 2 },       /* samples */
      { 4, 64, 64, 1, 5, 0, 0, 2 },        /* a cube of 5 faces */
      { 0, 1024, 2, 1, 1, 0, 0, 64 },      /* a buffer with a height */
      { 2, 64, 64, 1, 1, 0, 0, 0 },        /* no format */
      { 2, 64, 64, 1, 1, 0, 0, 100000 },   /* unknown format */
      { 3, 4096, 4096, 4096, 1, 0, 0, 2 }, /* 3D too large */
    };

    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
      c = create_3d(60, bad[i].w, bad[i].h);
      c.target = bad[i].target;
      c.depth = bad[i].depth;
      c.array_size = bad[i].layers;
      c.last_level = bad[i].levels;
      c.nr_samples = bad[i].samples;
      c.format = bad[i].format;
      g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    }
  }
  /* 16384 x 16384 x 4: more than the 256 MiB budget */
  c = create_3d(61, 16384, 16384);
  g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);

  /* transfers */
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, 1, 1, 65, 64);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 1, 64, 64);
  t.box.x = G_MAXUINT32;
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 1, 64, 64);
  t.box.d = 2;
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 1, 32, 32);
  t.level = 1;
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 1, 64, 64);
  t.offset = 64 * 64 * 4;
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 1, 64, 64);
  t.stride = G_MAXUINT32; /* rows far beyond the backing */
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 9, 1, 64, 64);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 99, 64, 64);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  t = transfer_3d(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D, 1, 50, 16, 16); /* 2D resource */
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);

  /* SUBMIT_3D sizes */
  {
    struct virtio_gpu_cmd_submit sb = { GPU_HDR(VIRTIO_GPU_CMD_SUBMIT_3D) };
    guint8 buf[sizeof sb + 16] = { 0 };

    sb.hdr.ctx_id = 1;
    sb.size = MAX_SUBMIT + 4; /* beyond the limit */
    memcpy(buf, &sb, sizeof sb);
    g_assert_cmphex(gpu_cmd(f->fe, buf, sizeof buf, NULL, 0), ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    sb.size = 32; /* more than the request holds */
    memcpy(buf, &sb, sizeof sb);
    g_assert_cmphex(gpu_cmd(f->fe, buf, sizeof buf, NULL, 0), ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    sb.size = 6; /* not whole dwords */
    memcpy(buf, &sb, sizeof sb);
    g_assert_cmphex(gpu_cmd(f->fe, buf, sizeof buf, NULL, 0), ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    sb.size = G_MAXUINT32;
    memcpy(buf, &sb, sizeof sb);
    g_assert_cmphex(gpu_cmd(f->fe, buf, sizeof buf, NULL, 0), ==,
                    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  }
  /* a stream virglrenderer rejects: a surface on an unknown resource */
  {
    g_autoptr(GArray) bad = stream_clear(3, 4242, 0, 0, 0, 1);

    g_assert_cmphex(submit(f->fe, 1, bad, 0), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
    g_assert_cmphex(ctx_destroy(f->fe, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(ctx_resource(f->fe, 1, 1, TRUE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  /* a backing attached twice */
  {
    struct virtio_gpu_mem_entry e = { GUEST_GPA, 4096, 0 };
    gsize len;
    g_autofree guint8 *req = gpu_attach(1, &e, 1, 1, &len);

    g_assert_cmphex(gpu_cmd(f->fe, req, len, NULL, 0), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  }
  /* still renders */
  clear_and_check(f->fe, 1, &r, 12, 0x10, 0x20, 0x30);
  g_assert_cmpuint(daemon_count_log(&f->d, "CRITICAL"), ==, 0);
}

/* Fenced 3D work and a fenced 2D command after it complete in order. */
static void
test_fence_order(Fixture *f, gconstpointer data)
{
  g_autoptr(GArray) s = NULL;
  g_autoptr(GPtrArray) done = NULL;
  g_autofree guint8 *req = NULL;
  struct virtio_gpu_resource_create_2d c2
      = gpu_create_2d(90, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16);
  Slot *slots[3];
  gsize len;

  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_new(f->fe, 1, 1, 1920, 1080);
  s = stream_clear(10, 1, 1, 0, 0, 30);
  req = submit_new(1, (guint32 *)s->data, s->len, &len);
  ((struct virtio_gpu_ctrl_hdr *)req)->flags = VIRTIO_GPU_FLAG_FENCE;
  ((struct virtio_gpu_ctrl_hdr *)req)->fence_id = 1;
  slots[0] = add_async(f->fe, req, len, 0);
  c2.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  c2.hdr.fence_id = 2;
  slots[1] = add_async(f->fe, &c2, sizeof c2, 1);
  c2.hdr.flags = 0;
  c2.resource_id = 91; /* unfenced: may pass the fences */
  slots[2] = add_async(f->fe, &c2, sizeof c2, 2);
  vhu_driver_queue_kick(vhu_frontend_get_queue(f->fe, 0));
  done = collect(f->fe, 3);
  /* the fenced 2D command never before the 3D fence */
  for (guint i = 0, seen = 0; i < done->len; i++) {
    Slot *sl = done->pdata[i];

    if (sl->idx == 0)
      seen = 1;
    if (sl->idx == 1)
      g_assert_cmpuint(seen, ==, 1);
  }
  for (guint i = 0; i < 3; i++) {
    const struct virtio_gpu_ctrl_hdr *h = slot_resp(f->fe, slots[i]);

    g_assert_cmphex(h->type, ==, VIRTIO_GPU_RESP_OK_NODATA);
    if (i < 2) {
      g_assert_cmphex(h->flags & VIRTIO_GPU_FLAG_FENCE, !=, 0);
      g_assert_cmpuint(h->fence_id, ==, i + 1);
    }
    g_free(slots[i]);
  }
}

/* Per-ring fences (CONTEXT_INIT); a context destroyed while its fences are
 * pending completes them. */
static void
test_context_fences(Fixture *f, gconstpointer data)
{
  Res r;
  g_autoptr(GArray) s = NULL;
  g_autoptr(GPtrArray) done = NULL;
  g_autofree guint8 *req = NULL;
  struct virtio_gpu_ctx_destroy d = { GPU_HDR(VIRTIO_GPU_CMD_CTX_DESTROY) };
  GPtrArray *slots = g_ptr_array_new_with_free_func(g_free);
  gsize len;
  const guint n = 6;

  g_assert_cmphex(ctx_create(f->fe, 1, 7), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(ctx_create(f->fe, 1, VIRTIO_GPU_CAPSET_VIRGL2), ==, VIRTIO_GPU_RESP_OK_NODATA);
  r = res_new(f->fe, 1, 1, 1920, 1080);
  /* a ring fence alone first */
  s = stream_clear(10, 1, 0, 1, 0, 1);
  req = submit_new(1, (guint32 *)s->data, s->len, &len);
  ((struct virtio_gpu_ctrl_hdr *)req)->flags
      = VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX;
  ((struct virtio_gpu_ctrl_hdr *)req)->ring_idx = 1;
  ((struct virtio_gpu_ctrl_hdr *)req)->fence_id = 100;
  {
    struct virtio_gpu_ctrl_hdr resp = { 0 };

    g_assert_cmphex(gpu_cmd(f->fe, req, len, &resp, sizeof resp), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(resp.flags, ==, VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX);
    g_assert_cmpuint(resp.ring_idx, ==, 1);
    g_assert_cmpuint(resp.fence_id, ==, 100);
  }
  g_clear_pointer(&req, g_free);
  g_clear_pointer(&s, g_array_unref);

  /* then heavy fenced work on two rings, and the context destroyed behind it */
  s = stream_clear(11, 1, 0, 0, 1, 40);
  for (guint i = 0; i < n; i++) {
    struct virtio_gpu_ctrl_hdr *h;

    req = submit_new(1, (guint32 *)s->data, s->len, &len);
    h = (struct virtio_gpu_ctrl_hdr *)req;
    h->flags = VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX;
    h->ring_idx = i % 2;
    h->fence_id = 200 + i;
    g_ptr_array_add(slots, add_async(f->fe, req, len, i));
    g_clear_pointer(&req, g_free);
  }
  d.hdr.ctx_id = 1;
  g_ptr_array_add(slots, add_async(f->fe, &d, sizeof d, n));
  vhu_driver_queue_kick(vhu_frontend_get_queue(f->fe, 0));
  done = collect(f->fe, n + 1);
  for (guint i = 0; i <= n; i++) {
    const struct virtio_gpu_ctrl_hdr *h = slot_resp(f->fe, slots->pdata[i]);

    g_assert_cmphex(h->type, ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  /* fences complete in the order they were submitted */
  for (guint i = 0, last = 0; i < done->len; i++) {
    Slot *sl = done->pdata[i];

    if (sl->idx < n) {
      g_assert_cmpuint(sl->idx, >=, last);
      last = sl->idx;
    }
  }
  g_assert_cmphex(ctx_destroy(f->fe, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  /* the renderer goes on */
  g_assert_cmphex(ctx_create(f->fe, 2, VIRTIO_GPU_CAPSET_VIRGL2), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(ctx_resource(f->fe, 2, 1, TRUE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  clear_and_check(f->fe, 2, &r, 12, 0x80, 0x40, 0x20);
  g_ptr_array_unref(slots);
}

/* The frontend leaves with fenced work in flight; the next one finds a
 * fresh renderer and renders. */
static void
test_reconnect(Fixture *f, gconstpointer data)
{
  g_autoptr(GArray) s = stream_clear(10, 1, 1, 1, 0, 40);
  g_autofree guint8 *req = NULL;
  gsize len;
  Res r;

  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(ctx_create(f->fe, 2, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_new(f->fe, 1, 1, 1920, 1080);
  req = submit_new(1, (guint32 *)s->data, s->len, &len);
  ((struct virtio_gpu_ctrl_hdr *)req)->flags = VIRTIO_GPU_FLAG_FENCE;
  for (guint i = 0; i < 8; i++)
    g_free(add_async(f->fe, req, len, i));
  vhu_driver_queue_kick(vhu_frontend_get_queue(f->fe, 0));
  g_clear_pointer(&f->fe, vhu_frontend_free); /* gone mid-submit */

  f->fe = frontend_new(&f->d, FALSE);
  /* nothing of the old session is left */
  g_assert_cmphex(ctx_destroy(f->fe, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(ctx_resource(f->fe, 2, 1, TRUE), ==, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  r = res_new(f->fe, 1, 1, 128, 64); /* the same id, a new size */
  clear_and_check(f->fe, 1, &r, 10, 0x00, 0xff, 0x00);
  g_assert_true(daemon_wait_log(&f->d, "listening on", 0));
  g_assert_cmpuint(daemon_count_log(&f->d, "CRITICAL"), ==, 0);
}

/* The display frame is @rgb inside @x, @y, @w, @h and @other elsewhere. */
static void
check_frame(VhuDisplayServer *ds, guint fw, guint fh, guint x, guint y, guint w, guint h,
            guint32 rgb, guint32 other)
{
  guint gw = 0, gh = 0;
  g_autofree guint32 *fb = vhu_display_server_get_frame(ds, 0, &gw, &gh);

  g_assert_nonnull(fb);
  g_assert_cmpuint(gw, ==, fw);
  g_assert_cmpuint(gh, ==, fh);
  for (guint j = 0; j < fh; j++)
    for (guint i = 0; i < fw; i++) {
      gboolean in = i >= x && i < x + w && j >= y && j < y + h;
      guint32 want = in ? rgb : other;

      if ((fb[j * fw + i] & 0xffffff) != want)
        g_error("display pixel (%u,%u) is %06x, expected %06x", i, j, fb[j * fw + i] & 0xffffff,
                want);
    }
}

static void
flush_and_wait(Fixture *f, guint32 id, guint x, guint y, guint w, guint h, guint64 bytes)
{
  struct virtio_gpu_resource_flush fl = gpu_flush(id, x, y, w, h);
  VhuDisplayStats before, after;

  vhu_display_server_get_stats(f->ds, &before);
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_true(vhu_display_server_wait_updates(f->ds, before.updates + 1, WAIT_MS));
  vhu_display_server_get_stats(f->ds, &after);
  g_assert_cmpuint(after.update_bytes - before.update_bytes, ==, bytes);
  g_assert_cmpuint(after.dmabuf_scanouts, ==, 0); /* no dmabuf export here */
}

/* A 3D resource on a scanout reaches the display by readback, only the
 * flushed rectangle each time. */
static void
test_scanout(Fixture *f, gconstpointer data)
{
  const guint w = 128, h = 64;
  g_autoptr(GArray) red = stream_clear(10, 1, 1, 0, 0, 1);
  g_autoptr(GArray) blue = stream_clear(10, 1, 0, 0, 1, 1);
  struct virtio_gpu_set_scanout so = gpu_set_scanout(0, 1, 0, 0, w, h);
  struct virtio_gpu_resource_unref u = gpu_unref(1);

  g_assert_cmphex(ctx_create(f->fe, 1, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  res_new(f->fe, 1, 1, w, h);
  g_assert_cmphex(submit(f->fe, 1, red, VIRTIO_GPU_FLAG_FENCE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, so), ==, VIRTIO_GPU_RESP_OK_NODATA);
  flush_and_wait(f, 1, 0, 0, w, h, (guint64)w * h * 4);
  check_frame(f->ds, w, h, 0, 0, w, h, 0xff0000, 0);

  /* all of it turns blue; only 20x10+30+5 is flushed */
  g_assert_cmphex(submit(f->fe, 1, blue, VIRTIO_GPU_FLAG_FENCE), ==, VIRTIO_GPU_RESP_OK_NODATA);
  flush_and_wait(f, 1, 30, 5, 20, 10, 20 * 10 * 4);
  check_frame(f->ds, w, h, 30, 5, 20, 10, 0x0000ff, 0xff0000);

  /* errors */
  so = gpu_set_scanout(1, 1, 0, 0, w, h);
  g_assert_cmphex(CMD(f->fe, so), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  so = gpu_set_scanout(0, 1, 1, 0, w, h);
  g_assert_cmphex(CMD(f->fe, so), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  {
    struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, w + 1, h);
    struct virtio_gpu_resource_create_3d b = create_3d(2, 4096, 1);

    g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    b.target = 0; /* a buffer */
    b.format = 64;
    g_assert_cmphex(CMD(f->fe, b), ==, VIRTIO_GPU_RESP_OK_NODATA);
    so = gpu_set_scanout(0, 2, 0, 0, 16, 1);
    g_assert_cmphex(CMD(f->fe, so), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  }
  /* the picture stays; the resource going disables the scanout */
  check_frame(f->ds, w, h, 30, 5, 20, 10, 0x0000ff, 0xff0000);
  {
    VhuDisplayStats st;
    gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;
    guint64 before;

    vhu_display_server_get_stats(f->ds, &st);
    before = st.scanouts;
    g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
    do {
      g_usleep(1000);
      vhu_display_server_get_stats(f->ds, &st);
    } while (st.scanouts == before && g_get_monotonic_time() < end);
    g_assert_cmpuint(st.scanouts, >, before);
  }
  g_assert_cmpuint(daemon_count_log(&f->d, "CRITICAL"), ==, 0);
}

int
main(int argc, char **argv)
{
  Daemon probe;
  g_autofree char *why = NULL;

  g_test_init(&argc, &argv, NULL);
  /* Skip only when the renderer cannot start on this machine. */
  if (!daemon_try_start(&probe, &why)) {
    g_print("1..0 # SKIP virglrenderer cannot start here: %s\n", why);
    return 77;
  }
  daemon_stop(&probe);
  g_test_add("/virgl/capsets", Fixture, NULL, setup, test_capsets, teardown);
  g_test_add("/virgl/render", Fixture, NULL, setup, test_render, teardown);
  g_test_add("/virgl/errors", Fixture, NULL, setup, test_errors, teardown);
  g_test_add("/virgl/fence-order", Fixture, NULL, setup, test_fence_order, teardown);
  g_test_add("/virgl/context-fences", Fixture, GINT_TO_POINTER(1), setup, test_context_fences,
             teardown);
  g_test_add("/virgl/reconnect", Fixture, NULL, setup, test_reconnect, teardown);
  g_test_add("/virgl/scanout", Fixture, NULL, setup_display, test_scanout, teardown);
  return g_test_run();
}
