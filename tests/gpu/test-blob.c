/* Guest-memory blob resources (VIRTIO_GPU_F_RESOURCE_BLOB) through the
 * gst-vhost-gpu daemon, driven by the project's vhost-user frontend over a
 * real socket, with the project's display server playing QEMU's display:
 * every blob command and its error answers, and blob scanouts shown on the
 * display with their pixels exact. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <linux/virtio_gpu.h>
#include <signal.h>
#include <string.h>

#include "gpu-test-frontend.h"
#include "test-util.h"
#include "vhu-display.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (32u << 20)
#define WAIT_MS    5000

typedef struct {
  TuBackend b;
  VhuFrontend *fe;
  VhuDisplayServer *ds;
} Fixture;

#define CMD(fe, c) gpu_cmd((fe), &(c), sizeof(c), NULL, 0)

static const char *
daemon_binary(void)
{
  const char *env = g_getenv("GST_VHOST_GPU");

  return env ? env : GST_VHOST_GPU;
}

/* The daemon with @extra options (NULL-terminated), a frontend that
 * negotiated @features (RESOURCE_BLOB unless told otherwise) and a display
 * like QEMU 10's. */
static void
setup_full(Fixture *f, const char *const *extra, guint64 features)
{
  g_autoptr(GSubprocessLauncher) launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_NONE);
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  VhuDisplayConfig dcfg = { 1, 1024, 768, 3, FALSE };

  tu_backend_init(&f->b, "gst-vhost-blob-XXXXXX", "gpu.sock");
  g_ptr_array_add(argv, (gpointer)daemon_binary());
  g_ptr_array_add(argv, "--socket-path");
  g_ptr_array_add(argv, f->b.path);
  for (; extra && *extra; extra++)
    g_ptr_array_add(argv, (gpointer)*extra);
  g_ptr_array_add(argv, NULL);
  f->b.proc = g_subprocess_launcher_spawnv(launcher, (const char *const *)argv->pdata, &error);
  g_assert_no_error(error);
  f->fe = vhu_frontend_connect_wait(f->b.path, WAIT_MS, tu_proc_alive, f->b.proc, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_no_error(error);
  f->ds = vhu_display_server_new(&dcfg);
  g_assert_true(vhu_display_server_attach(f->ds, f->fe, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_start(
      f->fe, features | BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX), sizes, 2,
      &error));
  g_assert_no_error(error);
}

static void
setup(Fixture *f, gconstpointer data)
{
  setup_full(f, NULL, BIT(VIRTIO_GPU_F_RESOURCE_BLOB) | BIT(VIRTIO_GPU_F_EDID));
}

static void
teardown(Fixture *f, gconstpointer data)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  g_clear_pointer(&f->ds, vhu_display_server_free);
  g_subprocess_send_signal(f->b.proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(f->b.proc, WAIT_MS), ==, 0);
  g_clear_object(&f->b.proc);
  tu_backend_clear(&f->b);
}

/* --- requests -------------------------------------------------------------- */

/* RESOURCE_CREATE_BLOB with @n entries appended (announcing @nr). */
static guint32
create_blob_full(VhuFrontend *fe, guint32 id, guint32 mem, guint32 flags, guint64 size,
                 const struct virtio_gpu_mem_entry *ents, guint n, guint32 nr)
{
  struct virtio_gpu_resource_create_blob c = {
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB),
    .resource_id = id,
    .blob_mem = mem,
    .blob_flags = flags,
    .nr_entries = nr,
    .size = size,
  };
  gsize len = sizeof c + n * sizeof *ents;
  g_autofree guint8 *buf = g_malloc0(len);

  memcpy(buf, &c, sizeof c);
  memcpy(buf + sizeof c, ents, n * sizeof *ents);
  return gpu_cmd(fe, buf, len, NULL, 0);
}

static guint32
create_blob(VhuFrontend *fe, guint32 id, const struct virtio_gpu_mem_entry *ents, guint n)
{
  guint64 size = 0;

  for (guint i = 0; i < n; i++)
    size += ents[i].length;
  return create_blob_full(fe, id, VIRTIO_GPU_BLOB_MEM_GUEST, VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE,
                          size, ents, n, n);
}

static struct virtio_gpu_set_scanout_blob
scanout_blob(guint32 scanout, guint32 id, guint32 format, guint32 w, guint32 h, guint32 stride,
             guint32 offset)
{
  return (struct virtio_gpu_set_scanout_blob){
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_SET_SCANOUT_BLOB),
    .r = { 0, 0, w, h },
    .scanout_id = scanout,
    .resource_id = id,
    .width = w,
    .height = h,
    .format = format,
    .strides = { stride },
    .offsets = { offset },
  };
}

/* A blob of @w x @h pixels of @format, rows @stride bytes apart from
 * @offset, in two pieces of guest memory with a gap between them (so the
 * device gathers it); the pattern @seed painted. */
typedef struct {
  guint32 id, format, w, h, stride, offset;
  guint8 *piece[2];
  gsize piece_len[2];
  struct virtio_gpu_mem_entry ents[2];
} Blob;

static guint8 *
blob_byte(Blob *b, gsize at)
{
  return at < b->piece_len[0] ? b->piece[0] + at : b->piece[1] + (at - b->piece_len[0]);
}

static void
blob_paint(Blob *b, guint seed)
{
  for (guint y = 0; y < b->h; y++) {
    for (guint x = 0; x < b->w; x++) {
      guint8 px[4], cr, cg, cb;
      gsize at = b->offset + (gsize)y * b->stride + (gsize)x * 4;

      gpu_pattern(x, y, seed, &cr, &cg, &cb);
      gpu_put_pixel(px, b->format, cr, cg, cb, 0xff);
      for (guint i = 0; i < 4; i++)
        *blob_byte(b, at + i) = px[i];
    }
  }
}

static Blob
blob_new(VhuFrontend *fe, guint32 id, guint32 format, guint32 w, guint32 h, guint32 stride,
         guint32 offset)
{
  Blob b = { id, format, w, h, stride, offset };
  gsize size = offset + (gsize)stride * h, first = (size / 2 + 4095) & ~(gsize)4095;

  b.piece_len[0] = first;
  b.piece_len[1] = size - first;
  for (guint i = 0; i < 2; i++) {
    guint64 gpa = vhu_frontend_alloc(fe, b.piece_len[i], 4096);

    g_assert_cmphex(gpa, !=, G_MAXUINT64);
    g_assert_cmphex(vhu_frontend_alloc(fe, 4096, 4096), !=, G_MAXUINT64); /* the gap */
    b.piece[i] = vhu_frontend_gpa_to_ptr(fe, gpa, b.piece_len[i]);
    b.ents[i] = (struct virtio_gpu_mem_entry){ gpa, (guint32)b.piece_len[i], 0 };
  }
  g_assert_cmphex(create_blob(fe, id, b.ents, 2), ==, VIRTIO_GPU_RESP_OK_NODATA);
  return b;
}

/* The display shows @b's pattern @seed (the whole blob image). */
static void
check_display(VhuDisplayServer *ds, Blob *b, guint seed)
{
  guint fw = 0, fh = 0;
  g_autofree guint32 *fb = vhu_display_server_get_frame(ds, 0, &fw, &fh);

  g_assert_nonnull(fb);
  g_assert_cmpuint(fw, ==, b->w);
  g_assert_cmpuint(fh, ==, b->h);
  for (guint y = 0; y < fh; y++) {
    for (guint x = 0; x < fw; x++) {
      guint8 cr, cg, cb;

      gpu_pattern(x, y, seed, &cr, &cg, &cb);
      if ((fb[y * fw + x] & 0xffffff) != ((guint32)cr << 16 | (guint32)cg << 8 | cb))
        g_error("format %u: pixel (%u,%u) is %08x, expected %02x%02x%02x", b->format, x, y,
                fb[y * fw + x], cr, cg, cb);
    }
  }
}

static void
flush_and_wait(Fixture *f, Blob *b)
{
  struct virtio_gpu_resource_flush fl = gpu_flush(b->id, 0, 0, b->w, b->h);
  VhuDisplayStats st;

  vhu_display_server_get_stats(f->ds, &st);
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_true(vhu_display_server_wait_updates(f->ds, st.updates + 1, WAIT_MS));
}

/* --- tests ----------------------------------------------------------------- */

/* Offered by default, gone with --no-blob; a driver that did not negotiate
 * it gets ERR_UNSPEC for every blob command. */
static void
test_feature(void)
{
  Fixture f = { 0 };
  const char *const no_blob[] = { "--no-blob", NULL };
  struct virtio_gpu_mem_entry e = { GUEST_GPA + (1u << 20), 4096, 0 };
  struct virtio_gpu_set_scanout_blob s
      = scanout_blob(0, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16, 64, 0);

  setup_full(&f, NULL, BIT(VIRTIO_GPU_F_EDID));
  g_assert_true(vhu_frontend_get_backend_features(f.fe) & BIT(VIRTIO_GPU_F_RESOURCE_BLOB));
  g_assert_cmphex(create_blob(f.fe, 1, &e, 1), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmphex(CMD(f.fe, s), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  teardown(&f, NULL);

  setup_full(&f, no_blob, BIT(VIRTIO_GPU_F_EDID));
  g_assert_false(vhu_frontend_get_backend_features(f.fe) & BIT(VIRTIO_GPU_F_RESOURCE_BLOB));
  g_assert_cmphex(create_blob(f.fe, 1, &e, 1), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  teardown(&f, NULL);
}

static void
test_create_errors(Fixture *f, gconstpointer data)
{
  guint64 gpa = vhu_frontend_alloc(f->fe, 8192, 4096);
  struct virtio_gpu_mem_entry e[2] = { { gpa, 4096, 0 }, { gpa + 4096, 4096, 0 } };
  struct virtio_gpu_mem_entry outside = { GUEST_GPA + GUEST_SIZE - 4096, 8192, 0 };
  struct virtio_gpu_resource_create_blob shorter = {
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB),
  };

  g_assert_cmphex(create_blob(f->fe, 0, e, 2), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  g_assert_cmphex(create_blob_full(f->fe, 1, VIRTIO_GPU_BLOB_MEM_HOST3D, 0, 8192, e, 2, 2), ==,
                  VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(create_blob_full(f->fe, 1, VIRTIO_GPU_BLOB_MEM_GUEST,
                                   VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE, 8192, e, 2, 2),
                  ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* size other than the entries' sum, no entries, too many, fewer than announced */
  g_assert_cmphex(create_blob_full(f->fe, 1, VIRTIO_GPU_BLOB_MEM_GUEST, 0, 4096, e, 2, 2), ==,
                  VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(create_blob_full(f->fe, 1, VIRTIO_GPU_BLOB_MEM_GUEST, 0, 8192, e, 0, 0), ==,
                  VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(create_blob_full(f->fe, 1, VIRTIO_GPU_BLOB_MEM_GUEST, 0, 8192, e, 2, 100000), ==,
                  VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(create_blob_full(f->fe, 1, VIRTIO_GPU_BLOB_MEM_GUEST, 0, 8192, e, 1, 2), ==,
                  VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(create_blob(f->fe, 1, &outside, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmphex(gpu_cmd(f->fe, &shorter, sizeof shorter - 8, NULL, 0), ==,
                  VIRTIO_GPU_RESP_ERR_UNSPEC);
  /* none of these made a resource: id 1 is free, then taken */
  g_assert_cmphex(create_blob(f->fe, 1, e, 2), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(create_blob(f->fe, 1, e, 2), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  {
    struct virtio_gpu_resource_create_2d c
        = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16);

    g_assert_cmphex(CMD(f->fe, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  }
}

static void
test_scanout_errors(Fixture *f, gconstpointer data)
{
  G_GNUC_UNUSED Blob b = blob_new(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 32, 256, 0);
  guint32 fmt = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
  struct virtio_gpu_resource_create_2d c2d = gpu_create_2d(2, fmt, 16, 16);
  struct virtio_gpu_set_scanout_blob s;
  struct virtio_gpu_set_scanout plain = gpu_set_scanout(0, 1, 0, 0, 16, 16);
  struct virtio_gpu_resource_detach_backing detach = gpu_detach(1);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 16, 16, 0);
  struct virtio_gpu_resource_map_blob map = { GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB), 1, 0, 0 };
  struct virtio_gpu_resource_unmap_blob unmap
      = { GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB), 1, 0 };
  struct virtio_gpu_resp_map_info info;

  g_assert_cmphex(CMD(f->fe, c2d), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* before any geometry, a blob cannot be shown by SET_SCANOUT */
  g_assert_cmphex(CMD(f->fe, plain), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);

  s = scanout_blob(1, 1, fmt, 64, 32, 256, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  s = scanout_blob(0, 7, fmt, 64, 32, 256, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  s = scanout_blob(0, 2, fmt, 16, 16, 64, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER); /* not a blob */
  s = scanout_blob(0, 1, 99, 64, 32, 256, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 32, 252, 0); /* stride below width * 4 */
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 32, 258, 0); /* not a multiple of 4 */
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 33, 256, 0); /* one row too many */
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 32, 256, 4); /* last row 4 bytes beyond */
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 32, 256, G_MAXUINT32); /* offset overflow */
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 32, G_MAXUINT32 - 3, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = scanout_blob(0, 1, fmt, 64, 32, 256, 0);
  s.r = (struct virtio_gpu_rect){ 1, 0, 64, 32 }; /* outside the image */
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s.r = (struct virtio_gpu_rect){ 0, 0, 0, 32 };
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* the last row ends exactly at the blob's end: fine (stride 256 > 64 * 4, offset 192) */
  s = scanout_blob(0, 1, fmt, 16, 32, 256, 192);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  s = scanout_blob(0, 1, fmt, 64, 32, 256, 0);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* once shown, SET_SCANOUT of a part of it works too */
  g_assert_cmphex(CMD(f->fe, plain), ==, VIRTIO_GPU_RESP_OK_NODATA);

  /* a blob keeps its memory: no detach; transfers are no-ops */
  g_assert_cmphex(CMD(f->fe, detach), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmphex(CMD(f->fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);

  /* nothing is mappable: no host-visible region */
  g_assert_cmphex(gpu_cmd(f->fe, &map, sizeof map, &info, sizeof info), ==,
                  VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmphex(CMD(f->fe, unmap), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  map.resource_id = 2;
  g_assert_cmphex(CMD(f->fe, map), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  map.resource_id = 9;
  g_assert_cmphex(CMD(f->fe, map), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  unmap.resource_id = 0;
  g_assert_cmphex(CMD(f->fe, unmap), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
}

/* The scanout image a blob geometry needs is charged: beyond the budget it
 * is OUT_OF_MEMORY, and the blob stays usable with a smaller geometry. */
static void
test_budget(void)
{
  Fixture f = { 0 };
  const char *const small[] = { "--max-hostmem", "1M", NULL };
  guint64 gpa;
  struct virtio_gpu_mem_entry e;
  struct virtio_gpu_set_scanout_blob s;

  setup_full(&f, small, BIT(VIRTIO_GPU_F_RESOURCE_BLOB));
  gpa = vhu_frontend_alloc(f.fe, 2048u * 1024 * 4, 4096);
  e = (struct virtio_gpu_mem_entry){ gpa, 2048u * 1024 * 4, 0 };
  g_assert_cmphex(create_blob(f.fe, 1, &e, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
  s = scanout_blob(0, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 1024, 1024, 4096, 0);
  g_assert_cmphex(CMD(f.fe, s), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
  s = scanout_blob(0, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 128, 128, 512, 0);
  g_assert_cmphex(CMD(f.fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  teardown(&f, NULL);
}

/* Every format, a stride wider than the rows and an offset, the blob in two
 * pieces: QEMU's display gets the exact pixels, then the guest's next
 * frame written in place. */
static void
test_display_pixels(Fixture *f, gconstpointer data)
{
  for (guint i = 0; i < G_N_ELEMENTS(gpu_all_formats); i++) {
    Blob b = blob_new(f->fe, 10 + i, gpu_all_formats[i], 96, 40, 96 * 4 + 64, 128);
    struct virtio_gpu_set_scanout_blob s
        = scanout_blob(0, b.id, b.format, b.w, b.h, b.stride, b.offset);

    blob_paint(&b, i);
    g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
    flush_and_wait(f, &b);
    check_display(f->ds, &b, i);
    blob_paint(&b, i + 100);
    flush_and_wait(f, &b);
    check_display(f->ds, &b, i + 100);
  }
}

/* RESOURCE_UNREF of a blob on the scanout disables it, answered at once. */
static void
test_unref_shown(Fixture *f, gconstpointer data)
{
  Blob b = blob_new(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, 32, 32, 128, 0);
  struct virtio_gpu_set_scanout_blob s = scanout_blob(0, 1, b.format, 32, 32, 128, 0);
  struct virtio_gpu_resource_unref u = gpu_unref(1);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 32, 32);

  blob_paint(&b, 3);
  g_assert_cmphex(CMD(f->fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  flush_and_wait(f, &b);
  check_display(f->ds, &b, 3);
  g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  /* the id is free again, for a blob or a 2D resource */
  g_assert_cmphex(create_blob(f->fe, 1, b.ents, 2), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/blob/feature", test_feature);
  g_test_add("/blob/create-errors", Fixture, NULL, setup, test_create_errors, teardown);
  g_test_add("/blob/scanout-errors", Fixture, NULL, setup, test_scanout_errors, teardown);
  g_test_add_func("/blob/budget", test_budget);
  g_test_add("/blob/display-pixels", Fixture, NULL, setup, test_display_pixels, teardown);
  g_test_add("/blob/unref-shown", Fixture, NULL, setup, test_unref_shown, teardown);
  return g_test_run();
}
