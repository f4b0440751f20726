/* gst-vhost-virgl-bench: what our SUBMIT_3D path costs over driving
 * virglrenderer directly with the same command stream, in one run:
 *
 *   clear   a 1920x1080 clear and a fence per iteration, waited for: in
 *           this process through virglrenderer (EGL surfaceless, THREAD_SYNC,
 *           its poll fd), then through gst-vhost-gpu --virgl (SUBMIT_3D with
 *           VIRTIO_GPU_FLAG_FENCE over vhost-user, the answer waited for);
 *           rounds alternate between the two; wall time per iteration, the
 *           median of the rounds, and the ratio.
 *           Then the same without the clear (an empty fenced SUBMIT_3D, a
 *           fence alone directly): the transport and fence share of the extra.
 *   glmark2 one glmark2-es2 scene through gst-vhost-vtest and gst-vhost-gpu
 *           against virgl_test_server (bench/gst-vhost-virgl-glmark2.sh):
 *           frames per second and the ratio.
 *
 * Target: ours at most 5% over direct (ratio <= 1.05).  Speed is measured
 * here, never by the tests. */
#define VIRGL_RENDERER_UNSTABLE_APIS 1
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <virgl/virglrenderer.h>

#include "bench-util.h"

#define W          1920u
#define H          1080u
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (64u << 20)

struct virgl_box {
  uint32_t x, y, z, w, h, d;
};

/* The stream both paths submit: a surface on resource 1, the framebuffer,
 * one clear to a colour that changes per iteration (a surface per
 * iteration: destroying the one bound to the framebuffer is not allowed). */
static guint
stream(guint32 *dw, guint i)
{
  float rgba[4] = { (i & 1) ? 1.0f : 0.0f, 0.5f, (i & 2) ? 1.0f : 0.0f, 1.0f };
  double depth = 1.0;
  guint n = 0;

  dw[n++] = 1 | 8 << 8 | 5 << 16; /* CREATE_OBJECT SURFACE */
  dw[n++] = 10 + i;               /* a fresh surface handle each time */
  dw[n++] = 1;
  dw[n++] = 2; /* B8G8R8X8 */
  dw[n++] = 0;
  dw[n++] = 0;
  dw[n++] = 5 | 3 << 16; /* SET_FRAMEBUFFER_STATE */
  dw[n++] = 1;
  dw[n++] = 0;
  dw[n++] = 10 + i;
  dw[n++] = 7 | 8 << 16; /* CLEAR */
  dw[n++] = 4;
  memcpy(&dw[n], rgba, sizeof rgba);
  n += 4;
  memcpy(&dw[n], &depth, sizeof depth);
  n += 2;
  dw[n++] = 0;
  return n;
}

/* --- direct ---------------------------------------------------------------- */

static guint32 last_fence;

static void
cb_write_fence(void *cookie, uint32_t fence)
{
  last_fence = fence;
}

static struct virgl_renderer_callbacks cbs = { .version = 2, .write_fence = cb_write_fence };
static int cookie;

static gboolean
direct_init(guint8 **pixels)
{
  struct virgl_renderer_resource_create_args a
      = { 1, 2, 2, (1 << 1) | (1 << 3), W, H, 1, 1, 0, 0, 0 };
  struct iovec iov;

  if (virgl_renderer_init(&cookie,
                          VIRGL_RENDERER_USE_EGL | VIRGL_RENDERER_USE_SURFACELESS
                              | VIRGL_RENDERER_THREAD_SYNC,
                          &cbs)
      != 0)
    return FALSE;
  virgl_renderer_context_create(1, 5, "bench");
  virgl_renderer_resource_create(&a, NULL, 0);
  *pixels = g_malloc0((gsize)W * H * 4);
  iov.iov_base = *pixels;
  iov.iov_len = (gsize)W * H * 4;
  virgl_renderer_resource_attach_iov(1, &iov, 1);
  virgl_renderer_ctx_attach_resource(1, 1);
  return TRUE;
}

/* @clear FALSE: the fence alone (what the path costs without rendering). */
static double
direct_round(guint iters, guint *seq, gboolean clear)
{
  guint32 dw[32];
  gint64 t0 = g_get_monotonic_time();
  int fd = virgl_renderer_get_poll_fd();

  for (guint i = 0; i < iters; i++) {
    guint n = stream(dw, i);
    guint32 fence = ++*seq;

    if (clear && virgl_renderer_submit_cmd(dw, 1, (int)n) != 0) {
      g_printerr("direct: the stream was refused\n");
      exit(1);
    }
    virgl_renderer_create_fence((int)fence, 0);
    while (last_fence != fence) {
      struct pollfd p = { fd, POLLIN, 0 };

      if (fd >= 0)
        poll(&p, 1, 1000);
      virgl_renderer_poll();
    }
  }
  return (double)(g_get_monotonic_time() - t0) / iters;
}

/* --- ours ------------------------------------------------------------------ */

static guint32
gpu(VhuFrontend *fe, const void *req, gsize len)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_ctrl_hdr resp = { 0 };

  if (vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), req, len, &resp, sizeof resp, &error)
      < (gssize)sizeof resp)
    g_error("transact: %s", error ? error->message : "short");
  return resp.type;
}

static gboolean
ours_init(BenchBackend *b, GError **error)
{
  const guint sizes[2] = { 64, 16 };
  const char *argv[] = { GST_VHOST_GPU_PATH, "--virgl", "-q", "--socket-path", NULL, NULL };
  struct virtio_gpu_ctx_create cc
      = { { .type = VIRTIO_GPU_CMD_CTX_CREATE, .ctx_id = 1 }, 5, 0, "bench" };
  struct virtio_gpu_resource_create_3d rc = { { .type = VIRTIO_GPU_CMD_RESOURCE_CREATE_3D },
                                              1,
                                              2,
                                              2,
                                              (1 << 1) | (1 << 3),
                                              W,
                                              H,
                                              1,
                                              1,
                                              0,
                                              0,
                                              0,
                                              0 };
  struct {
    struct virtio_gpu_resource_attach_backing a;
    struct virtio_gpu_mem_entry e;
  } ab = { { { .type = VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING }, 1, 1 }, { 0, W * H * 4, 0 } };
  struct virtio_gpu_ctx_resource ca
      = { { .type = VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, .ctx_id = 1 }, 1, 0 };

  if (!bench_backend_dir(b, "gst-vhost-virgl-bench-XXXXXX", "gpu.sock", error))
    return FALSE;
  argv[4] = b->path;
  b->proc = bench_spawn(G_SUBPROCESS_FLAGS_NONE, -1, error, argv);
  if (!b->proc || !bench_backend_connect(b, error) || !vhu_frontend_init(b->fe, G_MAXUINT64, error)
      || !vhu_frontend_add_region(b->fe, GUEST_GPA, GUEST_SIZE, error)
      || !vhu_frontend_start(b->fe, 1ull << VIRTIO_GPU_F_VIRGL, sizes, 2, error))
    return FALSE;
  ab.e.addr = vhu_frontend_alloc(b->fe, (gsize)W * H * 4, 4096);
  if (gpu(b->fe, &cc, sizeof cc) != VIRTIO_GPU_RESP_OK_NODATA
      || gpu(b->fe, &rc, sizeof rc) != VIRTIO_GPU_RESP_OK_NODATA
      || gpu(b->fe, &ab, sizeof ab) != VIRTIO_GPU_RESP_OK_NODATA
      || gpu(b->fe, &ca, sizeof ca) != VIRTIO_GPU_RESP_OK_NODATA) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "3D set-up refused");
    return FALSE;
  }
  return TRUE;
}

static double
ours_round(VhuFrontend *fe, guint iters, gboolean clear)
{
  guint8 req[sizeof(struct virtio_gpu_cmd_submit) + 32 * 4];
  struct virtio_gpu_cmd_submit s
      = { { .type = VIRTIO_GPU_CMD_SUBMIT_3D, .flags = VIRTIO_GPU_FLAG_FENCE, .ctx_id = 1 }, 0, 0 };
  gint64 t0 = g_get_monotonic_time();

  for (guint i = 0; i < iters; i++) {
    guint n = clear ? stream((guint32 *)(req + sizeof s), i) : 0;

    s.hdr.fence_id = i + 1;
    s.size = n * 4;
    memcpy(req, &s, sizeof s);
    if (gpu(fe, req, sizeof s + n * 4) != VIRTIO_GPU_RESP_OK_NODATA)
      return -1;
  }
  return (double)(g_get_monotonic_time() - t0) / iters;
}

static int
cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return (x > y) - (x < y);
}

static double
median(double *v, guint n)
{
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int
main(int argc, char **argv)
{
  g_autoptr(GError) error = NULL;
  BenchBackend b = { 0 };
  guint iters = 200, rounds = 7, seq = 0;
  double d[16], o[16], fd[16], fo[16], dm, om, fdm, fom;
  guint8 *pixels = NULL;
  gboolean glmark = TRUE;

  signal(SIGPIPE, SIG_IGN);
  for (int i = 1; i < argc; i++) {
    if (g_str_has_prefix(argv[i], "--iterations="))
      iters = (guint)g_ascii_strtoull(argv[i] + 13, NULL, 10);
    else if (g_str_has_prefix(argv[i], "--rounds="))
      rounds = MIN((guint)g_ascii_strtoull(argv[i] + 9, NULL, 10), 16u);
    else if (strcmp(argv[i], "--no-glmark2") == 0)
      glmark = FALSE;
    else {
      g_printerr("usage: %s [--iterations=N] [--rounds=N] [--no-glmark2]\n", argv[0]);
      return 2;
    }
  }
  iters = MAX(iters, 1u);
  rounds = MAX(rounds, 1u);
  if (!direct_init(&pixels)) {
    g_printerr("virglrenderer does not start here\n");
    return 77;
  }
  if (!ours_init(&b, &error)) {
    g_printerr("gst-vhost-gpu --virgl: %s\n", error->message);
    return 1;
  }
  /* warm both */
  direct_round(20, &seq, TRUE);
  if (ours_round(b.fe, 20, TRUE) < 0) {
    g_printerr("gst-vhost-gpu refused a SUBMIT_3D\n");
    bench_backend_clear(&b);
    return 1;
  }
  for (guint r = 0; r < rounds; r++) {
    d[r] = direct_round(iters, &seq, TRUE);
    o[r] = ours_round(b.fe, iters, TRUE);
    fd[r] = direct_round(iters, &seq, FALSE);
    fo[r] = ours_round(b.fe, iters, FALSE);
    if (o[r] < 0 || fo[r] < 0) {
      g_printerr("gst-vhost-gpu refused a SUBMIT_3D\n");
      bench_backend_clear(&b);
      return 1;
    }
  }
  dm = median(d, rounds);
  om = median(o, rounds);
  printf("clear %ux%u + fence, %u rounds of %u (median):\n", W, H, rounds, iters);
  printf("  virglrenderer directly      %8.1f us/iteration\n", dm);
  printf("  gst-vhost-gpu --virgl       %8.1f us/iteration\n", om);
  printf("  ratio                       %8.3f (target <= 1.05: %s)\n", om / dm,
         om / dm <= 1.05 ? "met" : "NOT met");
  /* The same without the clear: the fence's round trip alone, so that the
   * extra above splits into transport + fence and rendering. */
  fdm = median(fd, rounds);
  fom = median(fo, rounds);
  printf("fence alone (empty SUBMIT_3D for ours), same rounds (median):\n");
  printf("  virglrenderer directly      %8.1f us/iteration\n", fdm);
  printf("  gst-vhost-gpu --virgl       %8.1f us/iteration\n", fom);
  printf("  extra of ours               %8.1f us (clear: %.1f us)\n", fom - fdm, om - dm);
  bench_backend_clear(&b);
  virgl_renderer_cleanup(&cookie);
  g_free(pixels);
  fflush(stdout);
  if (glmark) {
    const char *script = GLMARK2_SCRIPT;
    const char *sargv[] = { "sh", script, GST_VHOST_GPU_PATH, GST_VHOST_VTEST_PATH, NULL };
    g_autoptr(GSubprocess) p = g_subprocess_newv(sargv, G_SUBPROCESS_FLAGS_NONE, &error);

    if (!p || !g_subprocess_wait(p, NULL, &error))
      g_printerr("glmark2: %s\n", error->message);
  }
  return 0;
}
