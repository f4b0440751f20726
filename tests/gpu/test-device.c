/* Unit tests of the virtio-gpu device model: requests built as VhuElems over
 * real memfd guest memory, answers read back from the writable buffers, and
 * a recording display sink. */
#include <gio/gio.h>
#include <malloc.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gpu-test-util.h"
#include "vgpu-backing.h"
#include "vgpu-device.h"
#include "vgpu-edid.h"
#include "vgpu-format.h"

#define REGION_SIZE (8u << 20)
#define GPA0        0x100000ull
#define GPA1        (GPA0 + REGION_SIZE) /* adjacent: buffers may span both */
#define MIB         (1024u * 1024u)

typedef struct {
  VhuElem elem;
  struct iovec out[1];
  struct iovec in[1];
  guint8 *req;
  guint8 resp[2048] __attribute__((aligned(8)));
} TElem;

typedef struct {
  guint qidx;
  guint32 len;
  gboolean discarded;
  guint8 resp[2048] __attribute__((aligned(8)));
} Done;

typedef struct {
  guint id;
  gboolean enabled;
  VgpuRect rect;
} ScanoutCall;

typedef struct {
  guint id;
  VgpuRect rect;
  guint32 dst_x, dst_y;
  VgpuImage *image;
  VgpuBacking *backing; /* update_guest: rows at offset + h * stride */
  guint64 offset;
} UpdateCall;

typedef struct {
  VgpuDevice *dev;
  VhuMemTable *mem;
  int memfd[2];
  guint8 *guest[2];
  GArray *done; /* Done */
  gint wakes;
  /* sink */
  GArray *scanout_calls; /* ScanoutCall */
  GArray *update_calls;  /* UpdateCall */
  guint cursor_updates, cursor_moves;
  guint32 cursor[64 * 64];
  guint32 cursor_hot_x, cursor_x, cursor_y;
  gboolean cursor_visible;
  gboolean hold_queries;    /* answer queries later (test does) */
  gboolean hold_images;     /* keep images read-marked after update */
  gboolean hold_backings;   /* keep backings read-marked after update_guest */
  GPtrArray *queries;       /* held VgpuQuery */
  GPtrArray *held_images;   /* read-marked VgpuImage */
  GPtrArray *held_backings; /* read-marked VgpuBacking */
} Fixture;

static guint log_count;

static void
count_log(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  log_count++;
  if (g_test_verbose())
    g_printerr("[log] %s\n", message);
}

/* --- ops and sink ---------------------------------------------------------- */

static void
t_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  Fixture *f = data;
  TElem *t = (TElem *)elem;
  Done d = { .qidx = qidx, .len = len };

  memcpy(d.resp, t->resp, sizeof d.resp);
  g_array_append_val(f->done, d);
  g_free(t->req);
  g_free(t);
}

static void
t_discard(gpointer data, guint qidx, VhuElem *elem)
{
  Fixture *f = data;
  TElem *t = (TElem *)elem;
  Done d = { .qidx = qidx, .discarded = TRUE };

  g_array_append_val(f->done, d);
  g_free(t->req);
  g_free(t);
}

static void
t_wake(gpointer data)
{
  Fixture *f = data;

  g_atomic_int_inc(&f->wakes);
}

static const VgpuDeviceOps ops = { t_complete, t_discard, t_wake };

static void
s_set_scanout(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect)
{
  Fixture *f = sink;
  ScanoutCall c = { id, image != NULL, { 0 } };

  if (rect)
    c.rect = *rect;
  g_array_append_val(f->scanout_calls, c);
}

static void
s_update(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
         guint32 dst_y)
{
  Fixture *f = sink;
  UpdateCall c = { id, *rect, dst_x, dst_y, image };

  g_array_append_val(f->update_calls, c);
  if (f->hold_images) {
    vgpu_image_begin_read(image);
    g_ptr_array_add(f->held_images, vgpu_image_ref(image));
  }
}

static void
s_cursor_update(gpointer sink, guint id, const guint32 *pixels, guint32 hot_x, guint32 hot_y,
                guint32 x, guint32 y)
{
  Fixture *f = sink;

  f->cursor_updates++;
  memcpy(f->cursor, pixels, sizeof f->cursor);
  f->cursor_hot_x = hot_x;
  f->cursor_x = x;
  f->cursor_y = y;
  f->cursor_visible = TRUE;
}

static void
s_cursor_move(gpointer sink, guint id, guint32 x, guint32 y, gboolean visible)
{
  Fixture *f = sink;

  f->cursor_moves++;
  f->cursor_x = x;
  f->cursor_y = y;
  f->cursor_visible = visible;
}

static gboolean
s_query(Fixture *f, VgpuQuery *q)
{
  if (!f->hold_queries)
    return FALSE;
  g_ptr_array_add(f->queries, q);
  return TRUE;
}

static gboolean
s_query_display_info(gpointer sink, VgpuQuery *q)
{
  return s_query(sink, q);
}

static gboolean
s_query_edid(gpointer sink, guint id, VgpuQuery *q)
{
  return s_query(sink, q);
}

static void
s_update_guest(gpointer sink, guint id, VgpuImage *image, VgpuBacking *backing, guint64 offset,
               const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  Fixture *f = sink;
  UpdateCall c = { id, *rect, dst_x, dst_y, image, backing, offset };

  g_array_append_val(f->update_calls, c);
  if (f->hold_backings) {
    vgpu_backing_begin_read(backing);
    g_ptr_array_add(f->held_backings, vgpu_backing_ref(backing));
  }
}

/* A sink that only reads images (asks for materialised frames)... */
static const VgpuSinkIface sink_iface = {
  s_set_scanout, s_update, s_cursor_update, s_cursor_move, s_query_display_info, s_query_edid,
};

/* ... and one that reads flushed pixels from guest memory when it can. */
static const VgpuSinkIface guest_sink_iface = {
  s_set_scanout,        s_update,     s_cursor_update, s_cursor_move,
  s_query_display_info, s_query_edid, s_update_guest,
};

/* --- fixture --------------------------------------------------------------- */

static void
setup_with(Fixture *f, guint scanouts, guint64 hostmem, guint max_resources)
{
  VgpuDeviceConfig cfg = { scanouts, 1280, 800, hostmem, max_resources };
  g_autoptr(VhuMemTable) empty = vhu_mem_table_new();
  g_autoptr(VhuMemTable) one = NULL;
  g_autoptr(GError) error = NULL;

  for (guint i = 0; i < 2; i++) {
    f->memfd[i] = memfd_create("guest", MFD_CLOEXEC);
    g_assert_cmpint(f->memfd[i], >=, 0);
    g_assert_cmpint(ftruncate(f->memfd[i], REGION_SIZE), ==, 0);
    f->guest[i] = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd[i], 0);
    g_assert_true(f->guest[i] != MAP_FAILED);
  }
  {
    VhuMemRegionDesc r0 = { GPA0, REGION_SIZE, 0x7000000000ull, 0 };
    VhuMemRegionDesc r1 = { GPA1, REGION_SIZE, 0x7100000000ull, 0 };

    one = vhu_mem_table_add(empty, &r0, f->memfd[0], 8, &error);
    g_assert_no_error(error);
    f->mem = vhu_mem_table_add(one, &r1, f->memfd[1], 8, &error);
    g_assert_no_error(error);
  }
  f->done = g_array_new(FALSE, TRUE, sizeof(Done));
  f->scanout_calls = g_array_new(FALSE, TRUE, sizeof(ScanoutCall));
  f->update_calls = g_array_new(FALSE, TRUE, sizeof(UpdateCall));
  f->queries = g_ptr_array_new();
  f->held_images = g_ptr_array_new();
  f->held_backings = g_ptr_array_new();
  f->dev = vgpu_device_new(&cfg, &ops, f);
  vgpu_device_set_features(f->dev, VGPU_DEVICE_FEATURES);
  vgpu_device_add_sink(f->dev, &sink_iface, f);
  log_count = 0;
}

static void
setup(Fixture *f, gconstpointer data)
{
  setup_with(f, 1, 256 * MIB, 0);
}

/* The device model with a sink that reads guest memory. */
static void
setup_guest(Fixture *f, gconstpointer data)
{
  setup(f, data);
  vgpu_device_remove_sink(f->dev, f);
  vgpu_device_add_sink(f->dev, &guest_sink_iface, f);
}

static void
release_images(Fixture *f)
{
  for (guint i = 0; i < f->held_images->len; i++) {
    vgpu_image_end_read(f->held_images->pdata[i]);
    vgpu_image_unref(f->held_images->pdata[i]);
  }
  g_ptr_array_set_size(f->held_images, 0);
}

static void
release_backings(Fixture *f)
{
  for (guint i = 0; i < f->held_backings->len; i++) {
    vgpu_backing_end_read(f->held_backings->pdata[i]);
    vgpu_backing_unref(f->held_backings->pdata[i]);
  }
  g_ptr_array_set_size(f->held_backings, 0);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  release_images(f);
  release_backings(f);
  for (guint i = 0; i < f->queries->len; i++)
    vgpu_device_query_done(f->dev, f->queries->pdata[i], NULL, 0);
  vgpu_device_remove_sink(f->dev, f);
  vgpu_device_free(f->dev);
  vhu_mem_table_unref(f->mem);
  for (guint i = 0; i < 2; i++) {
    if (f->guest[i])
      munmap(f->guest[i], REGION_SIZE);
    close(f->memfd[i]);
  }
  g_array_unref(f->done);
  g_array_unref(f->scanout_calls);
  g_array_unref(f->update_calls);
  g_ptr_array_unref(f->queries);
  g_ptr_array_unref(f->held_images);
  g_ptr_array_unref(f->held_backings);
}

static guint8 *
gpa_ptr(Fixture *f, guint64 gpa)
{
  if (gpa >= GPA1)
    return f->guest[1] + (gpa - GPA1);
  return f->guest[0] + (gpa - GPA0);
}

/* Submits a request with a @resp_cap-byte response buffer.  Returns what
 * vgpu_device_submit returned; on FALSE the element is freed here. */
static gboolean
submit_full(Fixture *f, guint qidx, const void *req, gsize len, gsize resp_cap)
{
  TElem *t = g_new0(TElem, 1);
  gboolean taken;

  g_assert_cmpuint(resp_cap, <=, sizeof t->resp);
  t->req = g_memdup2(req, len);
  t->out[0] = (struct iovec){ t->req, len };
  t->in[0] = (struct iovec){ t->resp, resp_cap };
  t->elem.out_sg = t->out;
  t->elem.out_num = 1;
  t->elem.out_len = len;
  t->elem.in_sg = t->in;
  t->elem.in_num = resp_cap ? 1 : 0;
  t->elem.in_len = resp_cap;
  t->elem.mem = f->mem;
  taken = vgpu_device_submit(f->dev, qidx, &t->elem);
  if (!taken) {
    g_free(t->req);
    g_free(t);
  }
  return taken;
}

static const Done *
last_done(Fixture *f)
{
  g_assert_cmpuint(f->done->len, >, 0);
  return &g_array_index(f->done, Done, f->done->len - 1);
}

static guint32
resp_type(const Done *d)
{
  return ((const struct virtio_gpu_ctrl_hdr *)d->resp)->type;
}

/* A control request that completes at once; returns the response type. */
static guint32
ctrl(Fixture *f, const void *req, gsize len)
{
  guint before = f->done->len;

  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, req, len, sizeof((TElem *)0)->resp));
  g_assert_cmpuint(f->done->len, ==, before + 1);
  return resp_type(last_done(f));
}

#define CTRL(f, cmd) ctrl((f), &(cmd), sizeof(cmd))

static guint32
attach(Fixture *f, guint32 id, const struct virtio_gpu_mem_entry *ents, guint32 n)
{
  gsize len;
  g_autofree guint8 *req = gpu_attach(id, ents, n, n, &len);

  return ctrl(f, req, len);
}

/* Creates resource @id with one backing entry at @gpa and returns the
 * backing pointer. */
static guint8 *
make_resource(Fixture *f, guint32 id, guint32 format, guint32 w, guint32 h, guint64 gpa)
{
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(id, format, w, h);
  struct virtio_gpu_mem_entry e = { gpa, w * h * 4, 0 };

  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(attach(f, id, &e, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
  return gpa_ptr(f, gpa);
}

/* --- tests ----------------------------------------------------------------- */

static void
test_display_info(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr req = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  const struct virtio_gpu_resp_display_info *info;

  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(last_done(f)->len, ==, sizeof *info);
  info = (const void *)last_done(f)->resp;
  g_assert_cmpuint(info->pmodes[0].r.width, ==, 1280);
  g_assert_cmpuint(info->pmodes[0].r.height, ==, 800);
  g_assert_cmpuint(info->pmodes[0].enabled, ==, 1);
  g_assert_cmpuint(info->pmodes[1].enabled, ==, 0);
}

static void
test_display_info_multi(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_ctrl_hdr req = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  const struct virtio_gpu_resp_display_info *info;
  guint8 config[16];
  struct virtio_gpu_config cfg;

  setup_with(f, 16, 256 * MIB, 0);
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  info = (const void *)last_done(f)->resp;
  for (guint i = 0; i < 16; i++)
    g_assert_cmpuint(info->pmodes[i].enabled, ==, 1);
  vgpu_device_get_config(f->dev, config, sizeof config);
  memcpy(&cfg, config, sizeof cfg);
  g_assert_cmpuint(cfg.num_scanouts, ==, 16);
  g_assert_cmpuint(cfg.num_capsets, ==, 0);
  teardown(f, NULL);
}

static void
test_config(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_config cfg = { 0 };
  guint32 clear = 1;

  vgpu_device_get_config(f->dev, (guint8 *)&cfg, sizeof cfg);
  g_assert_cmpuint(cfg.num_scanouts, ==, 1);
  g_assert_cmpuint(cfg.events_read, ==, 0);
  /* Partial and odd writes are accepted and harmless. */
  vgpu_device_set_config(f->dev, 4, (guint8 *)&clear, sizeof clear);
  vgpu_device_set_config(f->dev, 12, (guint8 *)&clear, sizeof clear);
  vgpu_device_set_config(f->dev, 0, (guint8 *)&clear, 1);
  vgpu_device_get_config(f->dev, (guint8 *)&cfg, 7); /* short read */
  g_assert_cmpuint(cfg.num_scanouts, ==, 1);
}

static void
test_edid(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_cmd_get_edid req = gpu_get_edid(0);
  const struct virtio_gpu_resp_edid *r;

  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_OK_EDID);
  r = (const void *)last_done(f)->resp;
  g_assert_cmpuint(last_done(f)->len, ==, sizeof *r);
  g_assert_cmpuint(r->size, ==, 128);
  gpu_check_edid(r->edid, 1280, 800);
  g_assert_nonnull(memmem(r->edid, 128, "gst-vhost", 9));

  req = gpu_get_edid(1);
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  req = gpu_get_edid(G_MAXUINT32);
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
}

/* Without VIRTIO_GPU_F_EDID negotiated GET_EDID is unsupported, whatever
 * the scanout id, and no sink is asked; with it, it is answered again. */
static void
test_edid_not_negotiated(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_cmd_get_edid req = gpu_get_edid(0);

  f->hold_queries = TRUE;
  vgpu_device_set_features(f->dev, VGPU_DEVICE_FEATURES & ~(1ull << VIRTIO_GPU_F_EDID));
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmpuint(last_done(f)->len, ==, sizeof(struct virtio_gpu_ctrl_hdr));
  req = gpu_get_edid(7);
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmpuint(f->queries->len, ==, 0);
  g_assert_cmpuint(log_count, ==, 1); /* one line for the kind */
  /* A reset forgets what was negotiated. */
  vgpu_device_set_features(f->dev, VGPU_DEVICE_FEATURES);
  vgpu_device_reset(f->dev);
  req = gpu_get_edid(0);
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  f->hold_queries = FALSE;
  vgpu_device_set_features(f->dev, 1ull << VIRTIO_GPU_F_EDID);
  g_assert_cmphex(CTRL(f, req), ==, VIRTIO_GPU_RESP_OK_EDID);
}

static void
test_edid_modes(void)
{
  static const guint modes[][2]
      = { { 16, 16 }, { 640, 480 }, { 1920, 1080 }, { 3840, 2160 }, { 4095, 4095 } };
  guint8 e[128];

  for (guint i = 0; i < G_N_ELEMENTS(modes); i++) {
    vgpu_edid_generate(modes[i][0], modes[i][1], i, e);
    gpu_check_edid(e, modes[i][0], modes[i][1]);
  }
}

static void
test_create_errors(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_create_2d c;

  c = gpu_create_2d(0, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  c = gpu_create_2d(1, 0, 64, 64);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  c = gpu_create_2d(1, 5, 64, 64);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 0, 64);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 0);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* width * height * 4 overflows 32 and 64 bits in naive code */
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, G_MAXUINT32, G_MAXUINT32);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 0x40000000, 4);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16385, 1);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  /* 16384 x 16384 x 4 = 1 GiB: over the 256 MiB budget */
  c = gpu_create_2d(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16384, 16384);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
}

static void
test_all_formats_create(Fixture *f, gconstpointer data)
{
  for (guint i = 0; i < G_N_ELEMENTS(gpu_all_formats); i++) {
    struct virtio_gpu_resource_create_2d c = gpu_create_2d(i + 1, gpu_all_formats[i], 8, 8);

    g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
}

/* A resource is charged its page-rounded image and VGPU_RESOURCE_OVERHEAD,
 * both credited when it goes. */
static void
test_hostmem_budget(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_resource_create_2d c;
  struct virtio_gpu_resource_unref u;
  VgpuDeviceStats st;
  guint64 image, one;

  setup_with(f, 1, 1 * MIB, 0);
  /* 512 x 510 x 4: with its records, less than a page of the budget is left */
  g_assert_true(vgpu_image_size_for(512, 510, &image));
  g_assert_true(vgpu_image_size_for(1, 1, &one));
  g_assert_cmpuint(image + VGPU_RESOURCE_OVERHEAD, <=, 1 * MIB);
  g_assert_cmpuint(image + VGPU_RESOURCE_OVERHEAD + one + VGPU_RESOURCE_OVERHEAD, >, 1 * MIB);
  c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 512, 510);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, image + VGPU_RESOURCE_OVERHEAD);
  c = gpu_create_2d(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 1, 1);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, image + VGPU_RESOURCE_OVERHEAD);
  u = gpu_unref(1);
  g_assert_cmphex(CTRL(f, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, 0);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, one + VGPU_RESOURCE_OVERHEAD);
  teardown(f, NULL);
}

/* Bytes the allocator hands out, or 0 where it cannot say (sanitizers
 * replace it). */
static guint64
heap_in_use(void)
{
#if defined(__SANITIZE_ADDRESS__)
  return 0;
#else
  struct mallinfo2 mi = mallinfo2();

  return mi.uordblks + mi.hblkhd;
#endif
}

/* Backing lists count against the budget: 1000 resources of 1x1 pixels
 * with 16384 one-byte entries each, none adjacent to the next (16384 host
 * pieces, 384 KiB of list per resource; 375 MiB for all of them, beyond the
 * default 256 MiB budget).  Attaches are accepted while the budget holds
 * their lists (and, while each runs, its copy of the entries), then answered
 * OUT_OF_MEMORY; the budget counts what the lists allocate, within the
 * allocator's own overhead (a page per allocation); detaching and unref
 * credit it back. */
static void
test_hostmem_backing_lists(void)
{
  const guint n_res = 1000, n_ents = VGPU_MAX_BACKING_ENTRIES;
  const guint64 page = (guint64)sysconf(_SC_PAGESIZE), limit = VGPU_DEFAULT_MAX_HOSTMEM;
  const guint64 list = vgpu_backing_charge_for(n_ents), copy = (guint64)n_ents * 16u;
  Fixture fx = { 0 }, *f = &fx;
  g_autofree struct virtio_gpu_mem_entry *ents = g_new(struct virtio_gpu_mem_entry, n_ents);
  g_autofree guint8 *req = NULL;
  struct virtio_gpu_resource_attach_backing *a;
  VgpuDeviceStats st;
  guint64 image, created, heap0, heap1, expect;
  guint accepted = 0;
  gsize len;

  setup_with(f, 1, limit, 0);
  for (guint i = 0; i < n_ents; i++)
    ents[i] = (struct virtio_gpu_mem_entry){ GPA0 + 2u * i, 1, 0 };
  req = gpu_attach(0, ents, n_ents, n_ents, &len);
  a = (struct virtio_gpu_resource_attach_backing *)req;
  g_assert_cmpuint(list, >=, (guint64)n_ents * 24u);
  g_assert_true(vgpu_image_size_for(1, 1, &image));
  for (guint i = 1; i <= n_res; i++) {
    struct virtio_gpu_resource_create_2d c
        = gpu_create_2d(i, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 1, 1);

    g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_array_set_size(f->done, 0); /* no growth during the measurement */
  }
  created = (guint64)n_res * (image + VGPU_RESOURCE_OVERHEAD);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, created);

  heap0 = heap_in_use();
  for (guint i = 1; i <= n_res; i++) {
    guint32 t;

    a->resource_id = i;
    t = ctrl(f, req, len);
    g_array_set_size(f->done, 0);
    if (t == VIRTIO_GPU_RESP_OK_NODATA) {
      g_assert_cmpuint(accepted, ==, i - 1); /* none after the first refusal */
      accepted++;
    } else {
      g_assert_cmphex(t, ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
    }
  }
  heap1 = heap_in_use();
  /* The k-th attach needs its list and the copy on top of k - 1 lists. */
  expect = (limit - created - copy) / list;
  g_assert_cmpuint(accepted, ==, expect);
  g_assert_cmpuint(accepted, <, n_res);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, created + accepted * list);
  g_assert_cmpuint(st.hostmem_used, <=, limit);
  if (heap0 != 0) {
    guint64 grown = heap1 - heap0;

    g_test_message("%u lists: %" G_GUINT64_FORMAT " bytes allocated, %" G_GUINT64_FORMAT " charged",
                   accepted, grown, accepted * list);
    g_assert_cmpuint(grown, >=, accepted * (list - 64u));
    g_assert_cmpuint(grown, <=, accepted * (list + 2u * page));
  } else {
    g_test_message("allocator figures unavailable (sanitizer): allocation not compared");
  }

  /* Detaching credits a list back, and the refused can attach now. */
  for (guint i = 1; i <= 3; i++) {
    struct virtio_gpu_resource_detach_backing d = gpu_detach(i);

    g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, created + (accepted - 3) * list);
  a->resource_id = n_res;
  g_assert_cmphex(ctrl(f, req, len), ==, VIRTIO_GPU_RESP_OK_NODATA);
  for (guint i = 1; i <= n_res; i++) {
    struct virtio_gpu_resource_unref u = gpu_unref(i);

    g_assert_cmphex(CTRL(f, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_array_set_size(f->done, 0);
  }
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, 0);
  teardown(f, NULL);
}

/* Held requests are charged: display queries a sink answers later are held
 * while the budget allows, then answered at once from the configuration; a
 * fence that cannot be held first has the held queries answered, so order
 * is kept; everything is credited once answered. */
static void
test_hostmem_held(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_set_scanout off = gpu_set_scanout(0, 0, 0, 0, 0, 0);
  struct virtio_gpu_resource_create_2d c
      = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 512, 510);
  VgpuDeviceStats st;
  guint64 base, hold, room;
  guint held = 1;

  setup_with(f, 1, 1 * MIB, 0);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  vgpu_device_get_stats(f->dev, &st);
  base = st.hostmem_used;
  f->hold_queries = TRUE;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
  g_assert_cmpuint(f->done->len, ==, 1);
  vgpu_device_get_stats(f->dev, &st);
  hold = st.hostmem_used - base;
  g_assert_cmpuint(hold, >=, sizeof(struct virtio_gpu_resp_display_info));
  room = 1 * MIB - st.hostmem_used;
  /* As many more as fit are held; the next is answered at once. */
  for (;;) {
    g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
    if (f->done->len > 1)
      break;
    held++;
  }
  g_assert_cmpuint(held, ==, 1 + room / hold);
  g_assert_cmpuint(f->queries->len, ==, held);
  g_assert_cmphex(resp_type(last_done(f)), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, base + held * hold);
  g_assert_cmpuint(st.display_query_fallbacks, ==, 1);
  /* A fence now: the held queries are answered first, then the fence. */
  off.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  off.hdr.fence_id = 7;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &off, sizeof off, 64));
  g_assert_cmpuint(f->done->len, ==, 2 + held + 1);
  for (guint i = 2; i < 2 + held; i++)
    g_assert_cmphex(resp_type(&g_array_index(f->done, Done, i)), ==,
                    VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmphex(resp_type(last_done(f)), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(((const struct virtio_gpu_ctrl_hdr *)last_done(f)->resp)->fence_id, ==, 7);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.hostmem_used, ==, base);
  teardown(f, NULL);
}

static void
test_resource_count(void)
{
  Fixture fx = { 0 }, *f = &fx;
  struct virtio_gpu_resource_create_2d c;

  setup_with(f, 1, 256 * MIB, 8);
  for (guint i = 1; i <= 8; i++) {
    c = gpu_create_2d(i, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
    g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  c = gpu_create_2d(9, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY);
  teardown(f, NULL);
}

static void
test_unref(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_unref u = gpu_unref(7);

  g_assert_cmphex(CTRL(f, u), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  u = gpu_unref(0);
  g_assert_cmphex(CTRL(f, u), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
}

static void
test_attach_errors(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_create_2d c
      = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64);
  struct virtio_gpu_mem_entry good = { GPA0, 64 * 64 * 4, 0 };
  struct virtio_gpu_mem_entry e;
  g_autofree guint8 *req = NULL;
  gsize len;

  g_assert_cmphex(attach(f, 1, &good, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* unmapped, below and above guest memory, and wrapping around */
  e = (struct virtio_gpu_mem_entry){ 0x1000, 4096, 0 };
  g_assert_cmphex(attach(f, 1, &e, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  e = (struct virtio_gpu_mem_entry){ GPA1 + REGION_SIZE - 4096, 8192, 0 };
  g_assert_cmphex(attach(f, 1, &e, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  e = (struct virtio_gpu_mem_entry){ G_MAXUINT64 - 100, 4096, 0 };
  g_assert_cmphex(attach(f, 1, &e, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* no entries, too many, and fewer present than announced */
  g_assert_cmphex(attach(f, 1, &good, 0), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  req = gpu_attach(1, &good, 1, VGPU_MAX_BACKING_ENTRIES + 1, &len);
  g_assert_cmphex(ctrl(f, req, len), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_clear_pointer(&req, g_free);
  req = gpu_attach(1, &good, 1, 2, &len);
  g_assert_cmphex(ctrl(f, req, len), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_clear_pointer(&req, g_free);
  req = gpu_attach(1, &good, 1, 0xffffffff, &len);
  g_assert_cmphex(ctrl(f, req, len), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* zero-length entries make an empty backing: transfers fail their range check */
  {
    struct virtio_gpu_mem_entry z[2] = { { GPA0, 0, 0 }, { 0xdead000, 0, 0 } };
    struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 1, 1, 0);
    struct virtio_gpu_resource_detach_backing d = gpu_detach(1);

    g_assert_cmphex(attach(f, 1, z, 2), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  /* attach, attach again without detach, detach, attach */
  g_assert_cmphex(attach(f, 1, &good, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(attach(f, 1, &good, 1), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  {
    struct virtio_gpu_resource_detach_backing d = gpu_detach(1);

    g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
    d = gpu_detach(2);
    g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  }
  g_assert_cmphex(attach(f, 1, &good, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

static void
test_attach_max_entries(Fixture *f, gconstpointer data)
{
  g_autofree struct virtio_gpu_mem_entry *ents
      = g_new0(struct virtio_gpu_mem_entry, VGPU_MAX_BACKING_ENTRIES);
  struct virtio_gpu_resource_create_2d c
      = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 256, 256);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 256, 256, 0);
  guint8 *img;

  /* 16384 entries of 16 bytes, in reverse order: nothing merges. */
  for (guint i = 0; i < VGPU_MAX_BACKING_ENTRIES; i++) {
    ents[i]
        = (struct virtio_gpu_mem_entry){ GPA0 + (VGPU_MAX_BACKING_ENTRIES - 1 - i) * 32ull, 16, 0 };
    for (guint b = 0; b < 16; b++)
      gpa_ptr(f, ents[i].addr)[b] = (guint8)(i + b);
  }
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(attach(f, 1, ents, VGPU_MAX_BACKING_ENTRIES), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  img = vgpu_device_get_resource_image(f->dev, 1)->data;
  for (guint i = 0; i < VGPU_MAX_BACKING_ENTRIES; i += 997)
    g_assert_cmpuint(img[i * 16 + 5], ==, (guint8)(i + 5));
}

static void
test_transfer_errors(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_create_2d c
      = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 32);
  struct virtio_gpu_mem_entry e = { GPA0, 64 * 32 * 4, 0 };
  struct virtio_gpu_transfer_to_host_2d t;

  t = gpu_transfer(1, 0, 0, 64, 32, 0);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_UNSPEC); /* no backing */
  g_assert_cmphex(attach(f, 1, &e, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* rectangles outside the resource, including wrap-arounds */
  t = gpu_transfer(1, 1, 0, 64, 32, 0);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = gpu_transfer(1, 0xffffffff, 0, 2, 1, 0);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = gpu_transfer(1, 1, 1, 0xffffffff, 1, 0);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = gpu_transfer(1, 0, 0xfffffff0, 1, 0x20, 0);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* offsets beyond the 8 KiB backing, including u64 overflow */
  t = gpu_transfer(1, 0, 0, 64, 32, 4);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = gpu_transfer(1, 0, 31, 64, 1, 64 * 31 * 4 + 1);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = gpu_transfer(1, 0, 0, 1, 1, G_MAXUINT64 - 1);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t = gpu_transfer(1, 0, 0, 64, 2, G_MAXUINT64 - 200);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  /* the last row exactly at the end is fine, an empty one too */
  t = gpu_transfer(1, 0, 31, 64, 1, 64 * 31 * 4);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  t = gpu_transfer(1, 0, 0, 0, 0, G_MAXUINT64);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

/* Transfers of full and partial rectangles land where the guest put them,
 * also when the backing spans both memory regions. */
static void
test_transfer_pixels(Fixture *f, gconstpointer data)
{
  const guint w = 100, h = 60, stride = w * 4;
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h);
  /* half the backing at the end of region 0, half at the start of region 1,
   * given as one entry and as two */
  guint64 base = GPA1 - stride * h / 2;
  struct virtio_gpu_mem_entry one = { base, stride * h, 0 };
  struct virtio_gpu_transfer_to_host_2d t;
  VgpuImage *img;

  for (guint y = 0; y < h; y++) {
    for (guint x = 0; x < w; x++) {
      guint8 r, g, b;

      gpu_pattern(x, y, 1, &r, &g, &b);
      gpu_put_pixel(gpa_ptr(f, base + y * stride + x * 4), c.format, r, g, b, 0xff);
    }
  }
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(attach(f, 1, &one, 1), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* partial: rectangle 30x20 at (10, 5); the image gets it when asked for */
  t = gpu_transfer(1, 10, 5, 30, 20, 5 * stride + 10 * 4);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  img = vgpu_device_get_resource_image(f->dev, 1);
  for (guint y = 0; y < h; y++) {
    for (guint x = 0; x < w; x++) {
      gboolean in = x >= 10 && x < 40 && y >= 5 && y < 25;
      const guint8 *want = gpa_ptr(f, base + y * stride + x * 4);
      static const guint8 zero[4] = { 0 };

      g_assert_cmpmem(img->data + y * stride + x * 4, 4, in ? want : zero, 4);
    }
  }
  /* whole rows from row 20 on */
  t = gpu_transfer(1, 0, 20, w, h - 20, 20 * stride);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  img = vgpu_device_get_resource_image(f->dev, 1);
  for (guint y = 20; y < h; y++) /* rows 20..29 in region 0, 30.. in region 1 */
    g_assert_cmpmem(img->data + y * stride, stride, gpa_ptr(f, base + y * stride), stride);

  /* same through two entries that split a row */
  {
    struct virtio_gpu_resource_detach_backing d = gpu_detach(1);
    struct virtio_gpu_mem_entry two[2]
        = { { base, stride * h / 2 + 6, 0 }, { base + stride * h / 2 + 6, stride * h / 2 - 6, 0 } };

    g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_cmphex(attach(f, 1, two, 2), ==, VIRTIO_GPU_RESP_OK_NODATA);
    memset(img->data, 0, stride * h);
    t = gpu_transfer(1, 0, 0, w, h, 0);
    g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
    g_assert_true(vgpu_device_get_resource_image(f->dev, 1) == img);
    g_assert_cmpmem(img->data, stride * h / 2, f->guest[0] + REGION_SIZE - stride * h / 2,
                    stride * h / 2);
    g_assert_cmpmem(img->data + stride * h / 2, stride * h / 2, f->guest[1], stride * h / 2);
  }
}

static void
test_scanout_and_flush(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_set_scanout s;
  struct virtio_gpu_resource_flush fl;
  const UpdateCall *u;

  make_resource(f, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 200, 100, GPA0);
  s = gpu_set_scanout(1, 1, 0, 0, 200, 100);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  s = gpu_set_scanout(G_MAXUINT32, 1, 0, 0, 200, 100);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  s = gpu_set_scanout(0, 9, 0, 0, 200, 100);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  s = gpu_set_scanout(0, 1, 1, 0, 200, 100);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = gpu_set_scanout(0, 1, 0xffffff00, 0, 0x200, 10);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  s = gpu_set_scanout(0, 1, 0, 0, 0, 100);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmpuint(f->scanout_calls->len, ==, 0);

  /* show the 150x80 part at (50, 20) */
  s = gpu_set_scanout(0, 1, 50, 20, 150, 80);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->scanout_calls->len, ==, 1);
  g_assert_true(g_array_index(f->scanout_calls, ScanoutCall, 0).enabled);
  g_assert_cmpuint(g_array_index(f->scanout_calls, ScanoutCall, 0).rect.width, ==, 150);
  /* the same again changes nothing */
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->scanout_calls->len, ==, 1);

  fl = gpu_flush(9, 0, 0, 1, 1);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  fl = gpu_flush(1, 0, 0, 201, 1);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  fl = gpu_flush(1, 0xffffffff, 0xffffffff, 2, 2);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  g_assert_cmpuint(f->update_calls->len, ==, 0);

  /* the first flush after SET_SCANOUT sends the whole scanout */
  fl = gpu_flush(1, 0, 0, 10, 10);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->update_calls->len, ==, 1);
  u = &g_array_index(f->update_calls, UpdateCall, 0);
  g_assert_cmpuint(u->rect.x, ==, 50);
  g_assert_cmpuint(u->rect.width, ==, 150);
  g_assert_cmpuint(u->dst_x, ==, 0);
  /* later ones the part of the flush inside the scanout, in its coordinates */
  fl = gpu_flush(1, 40, 10, 20, 20);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->update_calls->len, ==, 2);
  u = &g_array_index(f->update_calls, UpdateCall, 1);
  g_assert_cmpuint(u->rect.x, ==, 50);
  g_assert_cmpuint(u->rect.y, ==, 20);
  g_assert_cmpuint(u->rect.width, ==, 10);
  g_assert_cmpuint(u->rect.height, ==, 10);
  g_assert_cmpuint(u->dst_x, ==, 0);
  g_assert_cmpuint(u->dst_y, ==, 0);
  /* outside the scanout: nothing to show */
  fl = gpu_flush(1, 0, 0, 50, 20);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->update_calls->len, ==, 2);

  /* disabling, and unref of a shown resource, tell the sink */
  s = gpu_set_scanout(0, 0, 0, 0, 0, 0);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_false(g_array_index(f->scanout_calls, ScanoutCall, 1).enabled);
  s = gpu_set_scanout(0, 1, 0, 0, 200, 100);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  {
    struct virtio_gpu_resource_unref un = gpu_unref(1);

    g_assert_cmphex(CTRL(f, un), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  g_assert_cmpuint(f->scanout_calls->len, ==, 4);
  g_assert_false(g_array_index(f->scanout_calls, ScanoutCall, 3).enabled);
}

/* Every format reaches a display as the same X8R8G8B8 colours. */
static void
test_format_conversion(void)
{
  for (guint i = 0; i < G_N_ELEMENTS(gpu_all_formats); i++) {
    guint32 fmt = gpu_all_formats[i];
    guint8 src[4 * 4 * 4];
    guint32 dst[2 * 2];

    for (guint p = 0; p < 16; p++)
      gpu_put_pixel(src + p * 4, fmt, (guint8)(0x10 + p), 0x22, (guint8)(0x80 + p), 0x7f);
    vgpu_format_convert(fmt, src, 4, 4, 16, 1, 2, 2, 2, PIXMAN_x8r8g8b8, (guint8 *)dst, 8);
    for (guint y = 0; y < 2; y++) {
      for (guint x = 0; x < 2; x++) {
        guint p = (2 + y) * 4 + 1 + x;

        g_assert_cmphex(dst[y * 2 + x] & 0xffffff, ==,
                        (guint32)(0x10 + p) << 16 | 0x22 << 8 | (0x80 + p));
      }
    }
    g_assert_true(
        vgpu_format_is_xrgb(fmt)
        == (fmt == VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM || fmt == VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM));
  }
  g_assert_false(vgpu_format_is_valid(0));
  g_assert_cmpstr(vgpu_format_name(VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM), ==, "R8G8B8X8");
}

static void
test_cursor(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_update_cursor c;
  guint8 *backing = make_resource(f, 5, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, 64, 64, GPA0);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(5, 0, 0, 64, 64, 0);
  VgpuDeviceStats st;

  for (guint p = 0; p < 64 * 64; p++)
    gpu_put_pixel(backing + p * 4, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, 0x12, 0x34, 0x56,
                  p % 2 ? 0xff : 0x00);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  make_resource(f, 6, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, 32, 32, GPA1);

  c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 100, 200, 5, 3, 4);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_cmpuint(last_done(f)->qidx, ==, VGPU_CURSOR_QUEUE);
  g_assert_cmpuint(last_done(f)->len, ==, 0);
  g_assert_cmpuint(f->cursor_updates, ==, 1);
  g_assert_cmphex(f->cursor[0], ==, 0x00123456);
  g_assert_cmphex(f->cursor[1], ==, 0xff123456);
  g_assert_cmpuint(f->cursor_hot_x, ==, 3);
  g_assert_cmpuint(f->cursor_x, ==, 100);

  c = gpu_cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 7, 8, 5, 0, 0);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_cmpuint(f->cursor_moves, ==, 1);
  g_assert_true(f->cursor_visible);
  g_assert_cmpuint(f->cursor_y, ==, 8);

  /* errors: not 64x64, unknown resource, bad scanout, short, unknown type */
  vgpu_device_get_stats(f->dev, &st);
  c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 1, 1, 6, 0, 0);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 1, 1, 77, 0, 0);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  c = gpu_cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 3, 1, 1, 5, 0, 0);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, 20, 0));
  c.hdr.type = VIRTIO_GPU_CMD_RESOURCE_FLUSH;
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_cmpuint(f->cursor_updates, ==, 1);
  g_assert_cmpuint(f->cursor_moves, ==, 1);
  {
    VgpuDeviceStats st2;

    vgpu_device_get_stats(f->dev, &st2);
    g_assert_cmpuint(st2.errors - st.errors, ==, 5);
  }

  /* resource 0 hides it; a move then stays hidden */
  c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 1, 1, 0, 0, 0);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_false(f->cursor_visible);
  c = gpu_cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 2, 2, 5, 0, 0);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_false(f->cursor_visible);
}

static void
test_short_requests(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
  struct virtio_gpu_ctrl_hdr h = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  VgpuDeviceStats st;

  /* shorter than a header, shorter than the command */
  g_assert_cmphex(ctrl(f, &c, 10), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmphex(ctrl(f, &c, 0), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmphex(ctrl(f, &c, sizeof c - 1), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.resources, ==, 0);
  /* response buffers too small: what fits is written, nothing more */
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &h, sizeof h, 100));
  g_assert_cmpuint(last_done(f)->len, ==, 100);
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &c, sizeof c, 8));
  g_assert_cmpuint(last_done(f)->len, ==, 8);
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &h, sizeof h, 0));
  g_assert_cmpuint(last_done(f)->len, ==, 0);
}

static void
test_unknown_commands(Fixture *f, gconstpointer data)
{
  static const guint32 types[] = { 0,
                                   VIRTIO_GPU_CMD_GET_CAPSET_INFO,
                                   VIRTIO_GPU_CMD_GET_CAPSET,
                                   VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
                                   VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
                                   VIRTIO_GPU_CMD_CTX_CREATE,
                                   VIRTIO_GPU_CMD_SUBMIT_3D,
                                   VIRTIO_GPU_CMD_UPDATE_CURSOR,
                                   0xdeadbeef };
  guint8 req[64] = { 0 };

  for (guint i = 0; i < G_N_ELEMENTS(types); i++) {
    memcpy(req, &types[i], 4);
    g_assert_cmphex(ctrl(f, req, sizeof req), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  }
  /* an unknown queue index is completed empty */
  g_assert_true(submit_full(f, 5, req, sizeof req, 16));
  g_assert_cmpuint(last_done(f)->len, ==, 0);
}

static void
test_uuid(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_assign_uuid a = { GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID), 1, 0 };
  struct virtio_gpu_resp_resource_uuid r1, r2;

  g_assert_cmphex(CTRL(f, a), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  make_resource(f, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4, GPA0);
  g_assert_cmphex(CTRL(f, a), ==, VIRTIO_GPU_RESP_OK_RESOURCE_UUID);
  g_assert_cmpuint(last_done(f)->len, ==, sizeof r1);
  memcpy(&r1, last_done(f)->resp, sizeof r1);
  g_assert_cmphex(CTRL(f, a), ==, VIRTIO_GPU_RESP_OK_RESOURCE_UUID);
  memcpy(&r2, last_done(f)->resp, sizeof r2);
  g_assert_cmpmem(r1.uuid, 16, r2.uuid, 16);
  g_assert_cmphex(r1.uuid[6] >> 4, ==, 4); /* version 4 */
  g_assert_cmphex(r1.uuid[8] >> 6, ==, 2); /* RFC 4122 variant */
}

/* Without VIRTIO_GPU_F_RESOURCE_UUID negotiated RESOURCE_ASSIGN_UUID is
 * unsupported, for a resource that exists too. */
static void
test_uuid_not_negotiated(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_assign_uuid a = { GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID), 1, 0 };

  make_resource(f, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4, GPA0);
  vgpu_device_set_features(f->dev, 1ull << VIRTIO_GPU_F_EDID);
  g_assert_cmphex(CTRL(f, a), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  g_assert_cmpuint(last_done(f)->len, ==, sizeof(struct virtio_gpu_ctrl_hdr));
  vgpu_device_set_features(f->dev, 0);
  g_assert_cmphex(CTRL(f, a), ==, VIRTIO_GPU_RESP_ERR_UNSPEC);
  vgpu_device_set_features(f->dev, 1ull << VIRTIO_GPU_F_RESOURCE_UUID);
  g_assert_cmphex(CTRL(f, a), ==, VIRTIO_GPU_RESP_OK_RESOURCE_UUID);
}

static void
test_fences(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
  struct virtio_gpu_resource_unref u = gpu_unref(42);
  struct virtio_gpu_resp_display_info reply = { 0 };
  const struct virtio_gpu_ctrl_hdr *h;

  /* a plain fenced request completes at once, echoing the fence */
  c.hdr.flags = VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX;
  c.hdr.fence_id = 5;
  c.hdr.ctx_id = 9;
  c.hdr.ring_idx = 2;
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  h = (const void *)last_done(f)->resp;
  g_assert_cmphex(h->flags, ==, VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX);
  g_assert_cmpuint(h->fence_id, ==, 5);
  g_assert_cmpuint(h->ctx_id, ==, 9);
  g_assert_cmpuint(h->ring_idx, ==, 2);

  /* GET_DISPLAY_INFO held by the display: later requests are processed, an
   * unfenced one completes, a fenced one waits for the display info. */
  f->hold_queries = TRUE;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
  g_assert_cmpuint(f->queries->len, ==, 1);
  g_assert_cmpuint(f->done->len, ==, 1);
  c = gpu_create_2d(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
  c.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  c.hdr.fence_id = 6;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &c, sizeof c, 1024));
  g_assert_cmpuint(f->done->len, ==, 1);
  g_assert_nonnull(vgpu_device_get_resource_image(f->dev, 2)); /* processed already */
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &u, sizeof u, 1024));
  g_assert_cmpuint(f->done->len, ==, 2);
  g_assert_cmphex(resp_type(last_done(f)), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  c = gpu_create_2d(3, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
  c.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  c.hdr.fence_id = 7;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &c, sizeof c, 1024));
  g_assert_cmpuint(f->done->len, ==, 2);

  /* the display answers with its own mode */
  reply.hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
  reply.pmodes[0].r.width = 1024;
  reply.pmodes[0].r.height = 768;
  reply.pmodes[0].enabled = 1;
  vgpu_device_query_done(f->dev, f->queries->pdata[0], &reply, sizeof reply);
  g_ptr_array_set_size(f->queries, 0);
  g_assert_cmpuint(f->done->len, ==, 5);
  h = (const void *)g_array_index(f->done, Done, 2).resp;
  g_assert_cmphex(h->type, ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(((const struct virtio_gpu_resp_display_info *)h)->pmodes[0].r.width, ==, 1024);
  h = (const void *)g_array_index(f->done, Done, 3).resp;
  g_assert_cmpuint(h->fence_id, ==, 6);
  h = (const void *)g_array_index(f->done, Done, 4).resp;
  g_assert_cmpuint(h->fence_id, ==, 7);
}

static void
test_query_fallbacks(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_cmd_get_edid ge = gpu_get_edid(0);
  struct virtio_gpu_resp_edid bad = { 0 };
  const struct virtio_gpu_resp_edid *r;
  const struct virtio_gpu_resp_display_info *info;

  f->hold_queries = TRUE;
  /* no answer (timeout, disconnect) */
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
  vgpu_device_query_done(f->dev, f->queries->pdata[0], NULL, 0);
  info = (const void *)last_done(f)->resp;
  g_assert_cmphex(info->hdr.type, ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
  g_assert_cmpuint(info->pmodes[0].r.width, ==, 1280);
  /* truncated reply */
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
  vgpu_device_query_done(f->dev, f->queries->pdata[1], &bad, 30);
  g_assert_cmpuint(
      ((const struct virtio_gpu_resp_display_info *)last_done(f)->resp)->pmodes[0].r.height, ==,
      800);
  /* EDID replies with a bad size field, a bad type, then a good one */
  bad.hdr.type = VIRTIO_GPU_RESP_OK_EDID;
  bad.size = 2000;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &ge, sizeof ge, 2048));
  vgpu_device_query_done(f->dev, f->queries->pdata[2], &bad, sizeof bad);
  r = (const void *)last_done(f)->resp;
  g_assert_cmpuint(r->size, ==, 128);
  gpu_check_edid(r->edid, 1280, 800);
  bad.size = 128;
  bad.hdr.type = VIRTIO_GPU_RESP_ERR_UNSPEC;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &ge, sizeof ge, 2048));
  vgpu_device_query_done(f->dev, f->queries->pdata[3], &bad, sizeof bad);
  gpu_check_edid(((const struct virtio_gpu_resp_edid *)last_done(f)->resp)->edid, 1280, 800);
  bad.hdr.type = VIRTIO_GPU_RESP_OK_EDID;
  vgpu_edid_generate(640, 480, 1, bad.edid);
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &ge, sizeof ge, 2048));
  vgpu_device_query_done(f->dev, f->queries->pdata[4], &bad, sizeof bad);
  gpu_check_edid(((const struct virtio_gpu_resp_edid *)last_done(f)->resp)->edid, 640, 480);
  g_ptr_array_set_size(f->queries, 0);
}

/* flush answers held requests from the configuration; reset discards them
 * and the display's late answers are ignored. */
static void
test_flush_and_reset(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_ctrl_hdr di = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  struct virtio_gpu_resp_display_info reply = { .hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO };
  VgpuDeviceStats st;

  f->hold_queries = TRUE;
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
  vgpu_device_flush(f->dev);
  g_assert_cmpuint(f->done->len, ==, 1);
  g_assert_false(last_done(f)->discarded);
  vgpu_device_query_done(f->dev, f->queries->pdata[0], &reply, sizeof reply);
  g_assert_cmpuint(f->done->len, ==, 1);

  make_resource(f, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64, GPA0);
  g_assert_true(submit_full(f, VGPU_CTRL_QUEUE, &di, sizeof di, 1024));
  vgpu_device_reset(f->dev);
  g_assert_true(last_done(f)->discarded);
  vgpu_device_query_done(f->dev, f->queries->pdata[1], &reply, sizeof reply);
  g_ptr_array_set_size(f->queries, 0);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.resources, ==, 0);
  g_assert_cmpuint(st.hostmem_used, ==, 0);
  /* the id is free again */
  make_resource(f, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64, GPA0);
}

/* A transfer into an image a sink still reads waits, and is retried after
 * the wake. */
static void
test_busy_image(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 64, 64);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 64, 64);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 64, 64, 0);
  guint8 *backing = make_resource(f, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 64, 64, GPA0);
  VgpuDeviceStats st;

  f->hold_images = TRUE;
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  memset(backing, 0xab, 64 * 64 * 4);
  g_assert_false(submit_full(f, VGPU_CTRL_QUEUE, &t, sizeof t, 64));
  g_assert_cmpuint(vgpu_device_get_resource_image(f->dev, 1)->data[0], ==, 0);
  /* errors are answered at once even while busy */
  t.r.width = 65;
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
  t.r.width = 64;
  g_assert_cmpint(f->wakes, ==, 0);
  release_images(f);
  g_assert_cmpint(f->wakes, ==, 1);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(vgpu_device_get_resource_image(f->dev, 1)->data[0], ==, 0xab);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.stalls, ==, 1);
}

/* A guest repeating the same error is logged once. */
static void
test_log_rate_limit(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_resource_unref u = gpu_unref(1234);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(9, 1, 0, 0, 1, 1);

  for (guint i = 0; i < 1000; i++)
    g_assert_cmphex(CTRL(f, u), ==, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
  g_assert_cmpuint(log_count, ==, 1);
  for (guint i = 0; i < 1000; i++)
    g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
  g_assert_cmpuint(log_count, ==, 2);
}

/* Random requests never crash the model and it keeps answering. */
static void
test_garbage(Fixture *f, gconstpointer data)
{
  g_autoptr(GRand) rand = g_rand_new_with_seed(1234);
  guint8 req[128];

  for (guint i = 0; i < 20000; i++) {
    guint32 type = VIRTIO_GPU_CMD_GET_DISPLAY_INFO + g_rand_int_range(rand, 0, 12);
    gsize len = (gsize)g_rand_int_range(rand, 0, sizeof req + 1);

    for (guint b = 0; b < sizeof req; b++)
      req[b] = (guint8)g_rand_int(rand);
    /* small ids and sizes sometimes, so some requests go deep */
    if (i % 2) {
      memcpy(req, &type, 4);
      req[24] = (guint8)g_rand_int_range(rand, 0, 4);
      memset(req + 25, 0, 3);
      memset(req + 30, 0, 2);
      memset(req + 34, 0, 2);
      req[8] = 0; /* no fence */
    }
    /* Random requests may be answered or refused; only surviving them matters. */
    (void)submit_full(f, VGPU_CTRL_QUEUE, req, len, 1024);
    if (i % 3 == 0)
      release_images(f);
  }
  struct virtio_gpu_ctrl_hdr info = GPU_HDR(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
  g_assert_cmphex(CTRL(f, info), ==, VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
}

/* --- deferred transfers ---------------------------------------------------- */

#define FMT VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM

/* Pattern @seed in a @w x @h B8G8R8X8 backing (stride w * 4). */
static void
paint(guint8 *p, guint w, guint h, guint seed)
{
  for (guint y = 0; y < h; y++) {
    for (guint x = 0; x < w; x++) {
      guint8 r, g, b;

      gpu_pattern(x, y, seed, &r, &g, &b);
      gpu_put_pixel(p + ((gsize)y * w + x) * 4, FMT, r, g, b, 0);
    }
  }
}

/* What a sink reads for update @u: rows from the image or from guest memory,
 * packed (stride width * 4). */
static guint8 *
shown(const UpdateCall *u)
{
  gsize row = (gsize)u->rect.width * 4;
  guint8 *out = g_malloc(row * u->rect.height);

  for (guint h = 0; h < u->rect.height; h++) {
    if (u->backing)
      vgpu_backing_read(u->backing, u->offset + (guint64)h * u->image->stride, out + h * row, row);
    else
      memcpy(out + h * row,
             u->image->data + (gsize)(u->rect.y + h) * u->image->stride + (gsize)u->rect.x * 4,
             row);
  }
  return out;
}

/* Pixel (x, y) of @rect, found at @p (stride @stride), has pattern @seed
 * shifted by (@dx, @dy); seed G_MAXUINT: zero. */
static gboolean
rect_has(const guint8 *p, gsize stride, const VgpuRect *rect, guint seed, int dx, int dy)
{
  for (guint y = 0; y < rect->height; y++) {
    for (guint x = 0; x < rect->width; x++) {
      const guint8 *q = p + y * stride + (gsize)x * 4;
      guint8 r = 0, g = 0, b = 0;

      if (seed != G_MAXUINT)
        gpu_pattern(rect->x + x + dx, rect->y + y + dy, seed, &r, &g, &b);
      if (q[0] != b || q[1] != g || q[2] != r) {
        g_test_message("pixel (%u,%u) is %02x%02x%02x, not %02x%02x%02x", rect->x + x, rect->y + y,
                       q[2], q[1], q[0], r, g, b);
        return FALSE;
      }
    }
  }
  return TRUE;
}

static const UpdateCall *
last_update(Fixture *f)
{
  g_assert_cmpuint(f->update_calls->len, >, 0);
  return &g_array_index(f->update_calls, UpdateCall, f->update_calls->len - 1);
}

/* The last update shows pattern @seed. */
static void
assert_shows(Fixture *f, guint seed)
{
  const UpdateCall *u = last_update(f);
  g_autofree guint8 *px = shown(u);

  g_assert_true(rect_has(px, (gsize)u->rect.width * 4, &u->rect, seed, 0, 0));
}

static void
assert_stats(Fixture *f, guint64 deferred, guint64 materialized, guint64 guest_updates)
{
  VgpuDeviceStats st;

  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.transfers_deferred, ==, deferred);
  g_assert_cmpuint(st.materializations, ==, materialized);
  g_assert_cmpuint(st.guest_updates, ==, guest_updates);
}

/* A flush of transferred pixels reaches a guest-reading sink straight from
 * guest memory, with the offset of its first pixel; the image gets them
 * only when asked. */
static void
test_deferred_flush(Fixture *f, gconstpointer data)
{
  const guint w = 64, h = 48;
  guint8 *backing = make_resource(f, 1, FMT, w, h, GPA0);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, w, h);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, w, h, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, w, h);
  struct virtio_gpu_resource_flush part = gpu_flush(1, 10, 5, 20, 7);
  const UpdateCall *u;
  VgpuImage *img;

  paint(backing, w, h, 1);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  u = last_update(f);
  g_assert_nonnull(u->backing);
  g_assert_cmpuint(u->offset, ==, 0);
  assert_shows(f, 1);
  assert_stats(f, 1, 0, 1);
  g_assert_cmphex(CTRL(f, part), ==, VIRTIO_GPU_RESP_OK_NODATA);
  u = last_update(f);
  g_assert_cmpuint(u->offset, ==, (5 * w + 10) * 4);
  g_assert_cmpuint(u->dst_x, ==, 10);
  g_assert_cmpuint(u->dst_y, ==, 5);
  assert_shows(f, 1);
  /* A transfer is no snapshot: what the guest draws later shows through
   * until the pixels are copied. */
  paint(backing, w, h, 2);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  assert_shows(f, 2);
  assert_stats(f, 1, 0, 3);
  img = vgpu_device_get_resource_image(f->dev, 1);
  assert_stats(f, 1, 1, 3);
  g_assert_true(rect_has(img->data, img->stride, &(VgpuRect){ 0, 0, w, h }, 2, 0, 0));
  /* copied: flushes read the image, the guest's later drawing stays out */
  paint(backing, w, h, 3);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_null(last_update(f)->backing);
  assert_shows(f, 2);
  assert_stats(f, 1, 1, 3);
}

/* A sink without update_guest asks for images: the device copies the
 * pending pixels into the image before calling it. */
static void
test_image_sink(Fixture *f, gconstpointer data)
{
  guint8 *backing = make_resource(f, 1, FMT, 40, 30, GPA0);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 40, 30);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 40, 30, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 40, 30);

  paint(backing, 40, 30, 4);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_null(last_update(f)->backing);
  assert_shows(f, 4);
  assert_stats(f, 1, 1, 0);
}

/* DETACH_BACKING copies what was transferred: the guest may reuse the pages
 * at once, later flushes show the transferred pixels. */
static void
test_transfer_detach_flush(Fixture *f, gconstpointer data)
{
  guint8 *backing = make_resource(f, 1, FMT, 32, 32, GPA0);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 32, 32, 0);
  struct virtio_gpu_resource_detach_backing d = gpu_detach(1);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 32, 32);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 32, 32);

  paint(backing, 32, 32, 5);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
  paint(backing, 32, 32, 6); /* reused */
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_null(last_update(f)->backing);
  assert_shows(f, 5);
  assert_stats(f, 1, 1, 0);
}

/* What a pending rectangle shows is guest memory as of the moment it is
 * copied or sent: a transfer elsewhere copies it at that point, a flush
 * beyond it copies the new one. */
static void
test_overwrite_then_transfer_elsewhere(Fixture *f, gconstpointer data)
{
  const guint w = 64, h = 48, stride = w * 4;
  guint8 *backing = make_resource(f, 1, FMT, w, h, GPA0);
  const VgpuRect a = { 0, 0, 16, 16 }, b = { 32, 16, 16, 16 };
  struct virtio_gpu_transfer_to_host_2d ta = gpu_transfer(1, a.x, a.y, a.width, a.height, 0);
  struct virtio_gpu_transfer_to_host_2d tb
      = gpu_transfer(1, b.x, b.y, b.width, b.height, b.y * stride + b.x * 4);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, w, h);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, w, h);
  const UpdateCall *u;
  VgpuImage *img;

  paint(backing, w, h, 1);
  g_assert_cmphex(CTRL(f, ta), ==, VIRTIO_GPU_RESP_OK_NODATA);
  paint(backing, w, h, 2);
  g_assert_cmphex(CTRL(f, tb), ==, VIRTIO_GPU_RESP_OK_NODATA); /* copies a: pattern 2 */
  paint(backing, w, h, 3);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA); /* beyond b: copies b */
  assert_stats(f, 2, 2, 0);
  u = last_update(f);
  g_assert_null(u->backing);
  img = u->image;
  g_assert_true(rect_has(img->data, stride, &a, 2, 0, 0));
  g_assert_true(rect_has(img->data + b.y * stride + b.x * 4, stride, &b, 3, 0, 0));
  g_assert_true(
      rect_has(img->data + 16 * stride, stride, &(VgpuRect){ 0, 16, 32, 32 }, G_MAXUINT, 0, 0));

  /* A transfer inside the pending rectangle from the same place changes
   * nothing; from another place it copies the pending one first. */
  paint(backing, w, h, 4);
  ta = gpu_transfer(1, 0, 0, w, h, 0);
  g_assert_cmphex(CTRL(f, ta), ==, VIRTIO_GPU_RESP_OK_NODATA);
  tb = gpu_transfer(1, 8, 8, 4, 4, 8 * stride + 8 * 4);
  g_assert_cmphex(CTRL(f, tb), ==, VIRTIO_GPU_RESP_OK_NODATA);
  assert_stats(f, 4, 2, 0);
  tb = gpu_transfer(1, 8, 8, 4, 4, 0); /* rows of the top-left corner */
  g_assert_cmphex(CTRL(f, tb), ==, VIRTIO_GPU_RESP_OK_NODATA);
  assert_stats(f, 5, 3, 0);
  paint(backing, w, h, 5);
  img = vgpu_device_get_resource_image(f->dev, 1);
  g_assert_true(rect_has(img->data, stride, &(VgpuRect){ 0, 0, w, 8 }, 4, 0, 0));
  g_assert_true(
      rect_has(img->data + 8 * stride + 8 * 4, stride, &(VgpuRect){ 8, 8, 4, 4 }, 5, -8, -8));
}

/* Hostile frontend: after a transfer, the memory table is replaced without
 * the backing's region and the test unmaps its own view of it.  A flush
 * still reads valid memory (the backing keeps its mappings) and shows the
 * guest's pixels; the old address is gone for new backings. */
static void
test_memory_table_replaced(Fixture *f, gconstpointer data)
{
  const guint w = 64, h = 48;
  guint8 *backing = make_resource(f, 1, FMT, w, h, GPA0);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, w, h);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, w, h, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, w, h);
  struct virtio_gpu_resource_create_2d c = gpu_create_2d(2, FMT, w, h);
  struct virtio_gpu_mem_entry e = { GPA0, w * h * 4, 0 };
  VhuMemRegionDesc r1 = { GPA1, REGION_SIZE, 0x7100000000ull, 0 };
  g_autoptr(VhuMemTable) empty = vhu_mem_table_new();
  g_autoptr(GError) error = NULL;
  VhuMemTable *table;

  paint(backing, w, h, 7);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  table = vhu_mem_table_add(empty, &r1, f->memfd[1], 8, &error);
  g_assert_no_error(error);
  vhu_mem_table_unref(f->mem);
  f->mem = table;
  munmap(f->guest[0], REGION_SIZE);
  f->guest[0] = NULL;

  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_nonnull(last_update(f)->backing);
  assert_shows(f, 7);
  /* an image-reading sink gets the same pixels copied */
  vgpu_device_remove_sink(f->dev, f);
  vgpu_device_add_sink(f->dev, &sink_iface, f);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_null(last_update(f)->backing);
  assert_shows(f, 7);
  g_assert_cmphex(CTRL(f, c), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(attach(f, 2, &e, 1), ==, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
}

/* While a sink reads a resource's guest memory, a transfer into it, a
 * detach and an unref wait (the guest must not get the pages back); a flush
 * meanwhile copies into the image instead.  A loan (pages spliced into a
 * socket) holds back detach and unref, not transfers. */
static void
test_busy_backing(Fixture *f, gconstpointer data)
{
  guint8 *backing = make_resource(f, 1, FMT, 32, 32, GPA0);
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 32, 32);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 32, 32, 0);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 32, 32);
  struct virtio_gpu_resource_detach_backing d = gpu_detach(1);
  struct virtio_gpu_resource_unref un = gpu_unref(1);
  g_autoptr(VgpuBacking) lent = NULL;
  VgpuDeviceStats st;

  paint(backing, 32, 32, 8);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  f->hold_backings = TRUE;
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->held_backings->len, ==, 1);
  lent = vgpu_backing_ref(f->held_backings->pdata[0]);
  g_assert_false(submit_full(f, VGPU_CTRL_QUEUE, &t, sizeof t, 64));
  g_assert_false(submit_full(f, VGPU_CTRL_QUEUE, &d, sizeof d, 64));
  g_assert_false(submit_full(f, VGPU_CTRL_QUEUE, &un, sizeof un, 64));
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_null(last_update(f)->backing);
  assert_shows(f, 8);
  assert_stats(f, 1, 1, 1);

  vgpu_backing_begin_loan(lent);
  g_assert_cmpint(f->wakes, ==, 0);
  release_backings(f);
  g_assert_cmpint(f->wakes, ==, 1);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_false(submit_full(f, VGPU_CTRL_QUEUE, &d, sizeof d, 64));
  g_assert_false(submit_full(f, VGPU_CTRL_QUEUE, &un, sizeof un, 64));
  vgpu_backing_end_loan(lent);
  g_assert_cmpint(f->wakes, ==, 2);
  g_assert_cmphex(CTRL(f, d), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, un), ==, VIRTIO_GPU_RESP_OK_NODATA);
  vgpu_device_get_stats(f->dev, &st);
  g_assert_cmpuint(st.stalls, ==, 5);
}

/* A cursor defined from a partly pending resource takes the pending part
 * from guest memory, without copying it into the image. */
static void
test_cursor_pending(Fixture *f, gconstpointer data)
{
  guint8 *backing = make_resource(f, 3, FMT, 64, 64, GPA0);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(3, 0, 0, 64, 64, 0);
  struct virtio_gpu_update_cursor c = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 1, 1, 3, 0, 0);

  memset(backing, 0x11, 64 * 64 * 4);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  vgpu_device_get_resource_image(f->dev, 3); /* the image holds 0x11 */
  memset(backing, 0x22, 64 * 64 * 4);
  t = gpu_transfer(3, 0, 0, 32, 64, 0);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_true(submit_full(f, VGPU_CURSOR_QUEUE, &c, sizeof c, 0));
  g_assert_cmphex(f->cursor[0] & 0xffffff, ==, 0x222222);
  g_assert_cmphex(f->cursor[63 * 64 + 31] & 0xffffff, ==, 0x222222);
  g_assert_cmphex(f->cursor[32] & 0xffffff, ==, 0x111111);
  assert_stats(f, 2, 1, 0);
}

/* A sink attached after the guest set its scanout gets it at once: the
 * scanout and the whole current picture (pending transfers included), from
 * the image or, for a sink reading guest memory, from there. */
static void
test_late_sink(Fixture *f, gconstpointer data)
{
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, 1, 0, 0, 64, 64);
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, 64, 64);
  struct virtio_gpu_transfer_to_host_2d t = gpu_transfer(1, 0, 0, 64, 64, 0);
  guint8 *backing = make_resource(f, 1, FMT, 64, 64, GPA0);
  const ScanoutCall *sc;
  const UpdateCall *u;

  /* nothing shown yet: a new sink hears nothing */
  vgpu_device_remove_sink(f->dev, f);
  vgpu_device_add_sink(f->dev, &sink_iface, f);
  g_assert_cmpuint(f->scanout_calls->len, ==, 0);
  g_assert_cmpuint(f->update_calls->len, ==, 0);
  paint(backing, 64, 64, 1);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* the picture changes while no sink is attached */
  vgpu_device_remove_sink(f->dev, f);
  paint(backing, 64, 64, 2);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_array_set_size(f->scanout_calls, 0);
  g_array_set_size(f->update_calls, 0);
  vgpu_device_add_sink(f->dev, &sink_iface, f);
  g_assert_cmpuint(f->scanout_calls->len, ==, 1);
  sc = &g_array_index(f->scanout_calls, ScanoutCall, 0);
  g_assert_true(sc->enabled);
  g_assert_cmpuint(sc->rect.width, ==, 64);
  g_assert_cmpuint(sc->rect.height, ==, 64);
  g_assert_cmpuint(f->update_calls->len, ==, 1);
  u = last_update(f);
  g_assert_null(u->backing);
  g_assert_cmpuint(u->rect.width, ==, 64);
  g_assert_cmpuint(u->rect.height, ==, 64);
  assert_shows(f, 2);
  /* a sink reading guest memory gets the pending transfer from there */
  vgpu_device_remove_sink(f->dev, f);
  paint(backing, 64, 64, 3);
  g_assert_cmphex(CTRL(f, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_array_set_size(f->update_calls, 0);
  vgpu_device_add_sink(f->dev, &guest_sink_iface, f);
  g_assert_cmpuint(f->update_calls->len, ==, 1);
  u = last_update(f);
  g_assert_nonnull(u->backing);
  assert_shows(f, 3);
  /* and the next flush goes on as usual */
  g_assert_cmphex(CTRL(f, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmpuint(f->update_calls->len, ==, 2);
  assert_shows(f, 3);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  /* Guest errors are warnings by design; criticals stay fatal. */
  g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
  g_log_set_handler("vgpu", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_FLAG_FATAL, count_log,
                    NULL);

#define ADD(name, fn) g_test_add("/gpu/device/" name, Fixture, NULL, setup, fn, teardown)
  ADD("display-info", test_display_info);
  g_test_add_func("/gpu/device/display-info-16-scanouts", test_display_info_multi);
  ADD("config", test_config);
  ADD("edid", test_edid);
  ADD("edid-not-negotiated", test_edid_not_negotiated);
  g_test_add_func("/gpu/edid/modes", test_edid_modes);
  ADD("create-errors", test_create_errors);
  ADD("create-all-formats", test_all_formats_create);
  g_test_add_func("/gpu/device/hostmem-budget", test_hostmem_budget);
  g_test_add_func("/gpu/device/hostmem-backing-lists", test_hostmem_backing_lists);
  g_test_add_func("/gpu/device/hostmem-held", test_hostmem_held);
  g_test_add_func("/gpu/device/resource-count", test_resource_count);
  ADD("unref", test_unref);
  ADD("attach-errors", test_attach_errors);
  ADD("attach-16384-entries", test_attach_max_entries);
  ADD("transfer-errors", test_transfer_errors);
  ADD("transfer-pixels", test_transfer_pixels);
  ADD("scanout-and-flush", test_scanout_and_flush);
  g_test_add_func("/gpu/format/conversion", test_format_conversion);
  ADD("cursor", test_cursor);
  ADD("short-requests", test_short_requests);
  ADD("unknown-commands", test_unknown_commands);
  ADD("uuid", test_uuid);
  ADD("uuid-not-negotiated", test_uuid_not_negotiated);
  ADD("fences", test_fences);
  ADD("query-fallbacks", test_query_fallbacks);
  ADD("flush-and-reset", test_flush_and_reset);
  ADD("busy-image", test_busy_image);
  ADD("late-sink", test_late_sink);
  ADD("log-rate-limit", test_log_rate_limit);
  ADD("garbage", test_garbage);
#define ADD_GUEST(name, fn)                                                                        \
  g_test_add("/gpu/device/" name, Fixture, NULL, setup_guest, fn, teardown)
  ADD_GUEST("deferred-flush", test_deferred_flush);
  ADD("deferred-image-sink", test_image_sink);
  ADD_GUEST("transfer-detach-flush", test_transfer_detach_flush);
  ADD_GUEST("overwrite-then-transfer-elsewhere", test_overwrite_then_transfer_elsewhere);
  ADD_GUEST("memory-table-replaced", test_memory_table_replaced);
  ADD_GUEST("busy-backing", test_busy_backing);
  ADD("cursor-pending", test_cursor_pending);
  return g_test_run();
}
