/* vhostgpusrc in real pipelines, driven through the project's vhost-user
 * frontend (vhu-frontend.h) over a real socket, with guest memory in memfd
 * regions: pixels, caps, metas, bus messages, coalescing and buffer
 * lifetime under a slow or holding downstream, reconnects, EOS. */
#include <glib/gstdio.h>
#include <gst/allocators/allocators.h>
#include <gst/app/gstappsink.h>
#include <gst/check/gstharness.h>
#include <gst/gst.h>
#include <gst/video/video.h>
#include <linux/virtio_gpu.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gpu-test-frontend.h"
#include "test-util.h"
#include "vhu-display.h"

#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
#define GUEST_GPA  0x100000ull
#define GUEST_SIZE (32u << 20)
#define WAIT_MS    5000
#define WAIT_NS    (WAIT_MS * GST_MSECOND)
#define W          64u
#define H          48u

typedef struct {
  char *dir, *path;
  GstElement *pipeline, *src, *sink;
  GstBus *bus;
  VhuFrontend *fe;
} Fixture;

typedef struct {
  guint32 id, format, w, h;
  guint64 gpa;
  guint8 *pixels; /* the backing, in guest memory */
} Res;

#define CMD(fe, c) gpu_cmd((fe), &(c), sizeof(c), NULL, 0)

/* --- pipeline -------------------------------------------------------------- */

static void
pipeline_start(Fixture *f, const char *src_props, const char *sink_props)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *desc = g_strdup_printf(
      "vhostgpusrc name=src socket-path=%s %s ! appsink name=sink sync=false %s", f->path,
      src_props ? src_props : "qemu-display=false", sink_props ? sink_props : "");

  f->pipeline = gst_parse_launch(desc, &error);
  g_assert_no_error(error);
  f->src = gst_bin_get_by_name(GST_BIN(f->pipeline), "src");
  f->sink = gst_bin_get_by_name(GST_BIN(f->pipeline), "sink");
  f->bus = gst_element_get_bus(f->pipeline);
  g_assert_cmpint(gst_element_set_state(f->pipeline, GST_STATE_PLAYING), !=,
                  GST_STATE_CHANGE_FAILURE);
}

static void
pipeline_stop(Fixture *f)
{
  if (!f->pipeline)
    return;
  g_assert_cmpint(gst_element_set_state(f->pipeline, GST_STATE_NULL), ==, GST_STATE_CHANGE_SUCCESS);
  gst_clear_object(&f->bus);
  gst_clear_object(&f->src);
  gst_clear_object(&f->sink);
  gst_clear_object(&f->pipeline);
}

static GstSample *
pull(Fixture *f)
{
  GstSample *s = gst_app_sink_try_pull_sample(GST_APP_SINK(f->sink), WAIT_NS);

  g_assert_nonnull(s);
  return s;
}

/* The next "vhost-frame" element message (errors fail the test). */
static GstMessage *
next_frame_message(Fixture *f)
{
  for (;;) {
    GstMessage *m
        = gst_bus_timed_pop_filtered(f->bus, WAIT_NS, GST_MESSAGE_ELEMENT | GST_MESSAGE_ERROR);

    g_assert_nonnull(m);
    g_assert_cmpint(GST_MESSAGE_TYPE(m), !=, GST_MESSAGE_ERROR);
    if (gst_message_has_name(m, "vhost-frame"))
      return m;
    gst_message_unref(m);
  }
}

static guint64
stat_of(Fixture *f, const char *name)
{
  g_autoptr(GstStructure) s = NULL;
  guint64 v = 0;

  g_object_get(f->src, "stats", &s, NULL);
  g_assert_true(gst_structure_get_uint64(s, name, &v));
  return v;
}

/* --- frontend -------------------------------------------------------------- */

/* A frontend that negotiated EDID and @extra features, its guest memory
 * sealed against shrinking (@sealed: as QEMU's memfd backend) or not. */
static VhuFrontend *
frontend_new_opts(Fixture *f, guint64 extra, gboolean sealed)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 64, 16 };
  guint64 drv
      = BIT(VIRTIO_GPU_F_EDID) | BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX) | extra;
  VhuFrontend *fe = vhu_frontend_connect_wait(f->path, WAIT_MS, NULL, NULL, &error);

  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  vhu_frontend_set_seal_memory(fe, sealed);
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_start(fe, drv, sizes, 2, &error));
  g_assert_no_error(error);
  return fe;
}

static VhuFrontend *
frontend_new_with(Fixture *f, guint64 extra)
{
  return frontend_new_opts(f, extra, FALSE);
}

static VhuFrontend *
frontend_new(Fixture *f)
{
  return frontend_new_with(f, 0);
}

static void
setup_with(Fixture *f, const char *src_props, const char *sink_props)
{
  f->dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  f->path = g_build_filename(f->dir, "gpu.sock", NULL);
  pipeline_start(f, src_props, sink_props);
  f->fe = frontend_new(f);
}

static void
setup(Fixture *f, gconstpointer data)
{
  setup_with(f, data, NULL);
}

static void
teardown(Fixture *f, gconstpointer data)
{
  g_clear_pointer(&f->fe, vhu_frontend_free);
  pipeline_stop(f);
  g_rmdir(f->dir);
  g_free(f->path);
  g_free(f->dir);
}

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

static void
scanout(VhuFrontend *fe, Res *r)
{
  struct virtio_gpu_set_scanout s = gpu_set_scanout(0, r->id, 0, 0, r->w, r->h);

  g_assert_cmphex(CMD(fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

/* Transfer and flush @rect (answers OK: the guest never waits long). */
static void
show(VhuFrontend *fe, Res *r, guint x, guint y, guint w, guint h)
{
  struct virtio_gpu_transfer_to_host_2d t
      = gpu_transfer(r->id, x, y, w, h, ((guint64)y * r->w + x) * 4);
  struct virtio_gpu_resource_flush fl = gpu_flush(r->id, x, y, w, h);

  g_assert_cmphex(CMD(fe, t), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

/* The buffer holds exactly @r's guest pixels (every byte, alpha included). */
static void
check_pixels(GstBuffer *buf, GstCaps *caps, const Res *r, const guint8 *expect)
{
  GstVideoInfo info;
  GstVideoFrame vf;

  g_assert_true(gst_video_info_from_caps(&info, caps));
  g_assert_cmpuint(GST_VIDEO_INFO_WIDTH(&info), ==, r->w);
  g_assert_cmpuint(GST_VIDEO_INFO_HEIGHT(&info), ==, r->h);
  g_assert_true(gst_video_frame_map(&vf, &info, buf, GST_MAP_READ));
  for (guint y = 0; y < r->h; y++) {
    const guint8 *row = (const guint8 *)GST_VIDEO_FRAME_PLANE_DATA(&vf, 0)
                        + (gsize)y * GST_VIDEO_FRAME_PLANE_STRIDE(&vf, 0);

    if (memcmp(row, expect + (gsize)y * r->w * 4, (gsize)r->w * 4) != 0)
      g_error("format %u: row %u differs", r->format, y);
  }
  gst_video_frame_unmap(&vf);
}

static void
check_sample(GstSample *s, const Res *r, const guint8 *expect)
{
  check_pixels(gst_sample_get_buffer(s), gst_sample_get_caps(s), r, expect);
}

/* --- tests ----------------------------------------------------------------- */

/* Every property documents itself and has a default inside its range. */
static void
test_properties(void)
{
  g_autoptr(GstElement) e = gst_element_factory_make("vhostgpusrc", NULL);
  GParamSpec **props;
  guint n;

  g_assert_nonnull(e);
  props = g_object_class_list_properties(G_OBJECT_GET_CLASS(e), &n);
  for (guint i = 0; i < n; i++) {
    const char *blurb = g_param_spec_get_blurb(props[i]);
    GValue v = G_VALUE_INIT;

    if (props[i]->owner_type != gst_element_factory_get_element_type(gst_element_get_factory(e)))
      continue;
    g_assert_true(blurb && strlen(blurb) > 10);
    g_assert_true(g_param_spec_get_nick(props[i]) != NULL);
    g_value_init(&v, props[i]->value_type);
    g_param_value_set_default(props[i], &v);
    g_assert_false(g_param_value_validate(props[i], &v));
    g_value_unset(&v);
  }
  g_free(props);
}

/* All eight formats: caps name the GStreamer format, pixels byte-exact,
 * fd memory with a GstVideoMeta; each switch renegotiates. */
static void
test_formats(Fixture *f, gconstpointer data)
{
  static const char *names[] = { "BGRA", "BGRx", "ARGB", "xRGB", "RGBA", "xBGR", "ABGR", "RGBx" };

  for (guint i = 0; i < G_N_ELEMENTS(gpu_all_formats); i++) {
    Res r = res_create(f->fe, 10 + i, gpu_all_formats[i], W + i * 4, H + i * 2);
    g_autoptr(GstSample) s = NULL;
    GstStructure *st;
    GstBuffer *buf;
    GstVideoMeta *vm;

    res_paint(&r, i);
    scanout(f->fe, &r);
    show(f->fe, &r, 0, 0, r.w, r.h);
    s = pull(f);
    st = gst_caps_get_structure(gst_sample_get_caps(s), 0);
    g_assert_cmpstr(gst_structure_get_string(st, "format"), ==, names[i]);
    check_sample(s, &r, r.pixels);
    buf = gst_sample_get_buffer(s);
    g_assert_true(gst_is_fd_memory(gst_buffer_peek_memory(buf, 0)));
    vm = gst_buffer_get_video_meta(buf);
    g_assert_nonnull(vm);
    g_assert_cmpuint(vm->width, ==, r.w);
    g_assert_cmpint(vm->stride[0], ==, (gint)r.w * 4);
    g_assert_true(GST_BUFFER_PTS_IS_VALID(buf));
  }
  g_assert_cmpuint(stat_of(f, "geometry-changes"), ==, G_N_ELEMENTS(gpu_all_formats));
}

/* A guest mode change reaches downstream as new caps; framerate is 0/1. */
static void
test_mode_change(Fixture *f, gconstpointer data)
{
  Res a = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  Res b = res_create(f->fe, 2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 2 * W, 2 * H);
  struct virtio_gpu_set_scanout off = gpu_set_scanout(0, 0, 0, 0, 0, 0);
  g_autoptr(GstSample) s1 = NULL, s2 = NULL, s3 = NULL;
  GstStructure *st;
  gint n, d, w;

  res_paint(&a, 1);
  res_paint(&b, 2);
  scanout(f->fe, &a);
  show(f->fe, &a, 0, 0, W, H);
  s1 = pull(f);
  check_sample(s1, &a, a.pixels);
  st = gst_caps_get_structure(gst_sample_get_caps(s1), 0);
  g_assert_true(gst_structure_get_fraction(st, "framerate", &n, &d));
  g_assert_cmpint(n, ==, 0);
  scanout(f->fe, &b);
  show(f->fe, &b, 0, 0, b.w, b.h);
  s2 = pull(f);
  check_sample(s2, &b, b.pixels);
  /* Disabled, then back at the first size. */
  g_assert_cmphex(CMD(f->fe, off), ==, VIRTIO_GPU_RESP_OK_NODATA);
  scanout(f->fe, &a);
  show(f->fe, &a, 0, 0, W, H);
  s3 = pull(f);
  st = gst_caps_get_structure(gst_sample_get_caps(s3), 0);
  g_assert_true(gst_structure_get_int(st, "width", &w));
  g_assert_cmpint(w, ==, W);
  check_sample(s3, &a, a.pixels);
}

/* Damage: the flushed rectangle as a "damage" ROI meta and in the bus
 * message; the rest of the frame keeps the earlier pixels. */
static void
test_damage(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  g_autoptr(GstSample) s1 = NULL, s2 = NULL;
  g_autoptr(GstMessage) m1 = NULL, m2 = NULL;
  g_autofree guint8 *expect = NULL;
  const GstStructure *ms;
  GstVideoRegionOfInterestMeta *roi;
  gpointer state = NULL;
  guint n = 0, x, w, flushes;
  guint64 f1, f2;

  res_paint(&r, 1);
  scanout(f->fe, &r);
  show(f->fe, &r, 0, 0, W, H);
  s1 = pull(f);
  m1 = next_frame_message(f);
  /* Only a 16x4 rectangle changes in the guest. */
  expect = g_memdup2(r.pixels, W * H * 4);
  res_paint(&r, 2);
  for (guint y = 8; y < 12; y++)
    memcpy(expect + ((gsize)y * W + 8) * 4, r.pixels + ((gsize)y * W + 8) * 4, 16 * 4);
  show(f->fe, &r, 8, 8, 16, 4);
  s2 = pull(f);
  check_sample(s2, &r, expect);
  while ((roi = (GstVideoRegionOfInterestMeta *)gst_buffer_iterate_meta_filtered(
              gst_sample_get_buffer(s2), &state, GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE))) {
    g_assert_cmpstr(g_quark_to_string(roi->roi_type), ==, "damage");
    g_assert_cmpuint(roi->x, ==, 8);
    g_assert_cmpuint(roi->y, ==, 8);
    g_assert_cmpuint(roi->w, ==, 16);
    g_assert_cmpuint(roi->h, ==, 4);
    n++;
  }
  g_assert_cmpuint(n, ==, 1);
  m2 = next_frame_message(f);
  ms = gst_message_get_structure(m2);
  g_assert_true(gst_structure_get_uint(ms, "x", &x));
  g_assert_true(gst_structure_get_uint(ms, "width", &w));
  g_assert_true(gst_structure_get_uint(ms, "flushes", &flushes));
  g_assert_cmpuint(x, ==, 8);
  g_assert_cmpuint(w, ==, 16);
  g_assert_cmpuint(flushes, ==, 1);
  g_assert_true(gst_structure_get_uint64(gst_message_get_structure(m1), "frame", &f1));
  g_assert_true(gst_structure_get_uint64(ms, "frame", &f2));
  g_assert_cmpuint(f2, ==, f1 + 1);
  g_assert_cmpuint(GST_BUFFER_OFFSET(gst_sample_get_buffer(s2)), ==, f2);
}

static void
cursor_cmd(VhuFrontend *fe, const struct virtio_gpu_update_cursor *c)
{
  g_autoptr(GError) error = NULL;

  g_assert_cmpint(
      vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 1), c, sizeof *c, NULL, 0, &error), ==,
      0);
  g_assert_no_error(error);
}

/* An opaque red 64x64 cursor with hot spot (3, 5) at (20, 10). */
static void
define_cursor(Fixture *f)
{
  Res c = res_create(f->fe, 50, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, 64, 64);
  struct virtio_gpu_update_cursor uc
      = gpu_cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 20, 10, c.id, 3, 5);

  for (guint i = 0; i < 64 * 64; i++)
    gpu_put_pixel(c.pixels + i * 4, c.format, 0xff, 0, 0, 0xff);
  show(f->fe, &c, 0, 0, 64, 64);
  cursor_cmd(f->fe, &uc);
}

/* The cursor travels as an overlay composition at its top-left corner. */
static void
test_cursor_meta(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  g_autoptr(GstSample) s = NULL;
  GstVideoOverlayCompositionMeta *cm;
  GstVideoOverlayRectangle *rect;
  gint x, y;
  guint w, h;

  res_paint(&r, 1);
  scanout(f->fe, &r);
  define_cursor(f);
  show(f->fe, &r, 0, 0, W, H);
  /* The cursor may have produced a frame of its own before: take the last. */
  for (;;) {
    g_autoptr(GstMessage) m = next_frame_message(f);
    guint flushes;

    g_clear_pointer(&s, gst_sample_unref);
    s = pull(f);
    g_assert_true(gst_structure_get_uint(gst_message_get_structure(m), "flushes", &flushes));
    if (flushes > 0)
      break;
  }
  check_sample(s, &r, r.pixels);
  cm = gst_buffer_get_video_overlay_composition_meta(gst_sample_get_buffer(s));
  g_assert_nonnull(cm);
  g_assert_cmpuint(gst_video_overlay_composition_n_rectangles(cm->overlay), ==, 1);
  rect = gst_video_overlay_composition_get_rectangle(cm->overlay, 0);
  gst_video_overlay_rectangle_get_render_rectangle(rect, &x, &y, &w, &h);
  g_assert_cmpint(x, ==, 17);
  g_assert_cmpint(y, ==, 5);
  g_assert_cmpuint(w, ==, 64);
  g_assert_cmpuint(h, ==, 64);
}

/* draw-cursor=true: drawn into the frame, no meta, frame memory untouched. */
static void
test_cursor_drawn(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  g_autoptr(GstSample) s = NULL;
  GstMapInfo map;
  GstBuffer *buf;

  res_paint(&r, 1);
  scanout(f->fe, &r);
  define_cursor(f);
  show(f->fe, &r, 0, 0, W, H);
  for (;;) {
    g_autoptr(GstMessage) m = next_frame_message(f);
    guint flushes;

    g_clear_pointer(&s, gst_sample_unref);
    s = pull(f);
    g_assert_true(gst_structure_get_uint(gst_message_get_structure(m), "flushes", &flushes));
    if (flushes > 0)
      break;
  }
  buf = gst_sample_get_buffer(s);
  g_assert_null(gst_buffer_get_video_overlay_composition_meta(buf));
  g_assert_true(gst_buffer_map(buf, &map, GST_MAP_READ));
  /* (17, 5) is the cursor's corner: red (BGRx bytes 00 00 ff); (16, 5) not. */
  g_assert_cmphex(map.data[(5 * W + 17) * 4 + 2], ==, 0xff);
  g_assert_cmphex(map.data[(5 * W + 17) * 4 + 1], ==, 0);
  g_assert_cmpmem(map.data + (5 * W + 16) * 4, 3, r.pixels + (5 * W + 16) * 4, 3);
  gst_buffer_unmap(buf, &map);
}

/* A downstream that stops taking buffers: the guest's flushes keep
 * completing, coalesce, and the next buffer has the newest pixels. */
static void
test_coalesce(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  g_autoptr(GstSample) last = NULL;
  guint flushes = 0, total = 0, frames = 0;

  scanout(f->fe, &r);
  /* appsink holds at most one buffer: the streaming thread blocks in push. */
  for (guint seed = 0; seed < 40; seed++) {
    res_paint(&r, seed);
    show(f->fe, &r, 0, 0, W, H);
  }
  /* Every flush answered while nothing was pulled; drain now. */
  while (flushes == 0 || total < 40) {
    g_autoptr(GstMessage) m = next_frame_message(f);

    g_assert_true(gst_structure_get_uint(gst_message_get_structure(m), "flushes", &flushes));
    g_clear_pointer(&last, gst_sample_unref);
    last = pull(f);
    total += flushes;
    frames++;
  }
  g_assert_cmpuint(total, ==, 40);
  g_assert_cmpuint(frames, <, 40);
  check_sample(last, &r, r.pixels);
  g_assert_cmpuint(stat_of(f, "coalesced"), >, 0);
}

/* Buffers held downstream never change, however many flushes follow, even
 * when every frame memory is held (the shadow copy takes over). */
static void
test_hold(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  GstSample *held[12];
  guint8 *want[12];
  g_autoptr(GstSample) s = NULL;

  scanout(f->fe, &r);
  for (guint i = 0; i < G_N_ELEMENTS(held); i++) {
    res_paint(&r, i);
    /* Half the frames change fully, half only a band. */
    if (i % 2)
      show(f->fe, &r, 0, 0, W, H);
    else
      show(f->fe, &r, 0, i, W, 4);
    held[i] = pull(f);
    want[i] = NULL;
  }
  /* What each should show: rebuild from the same sequence. */
  {
    g_autofree guint8 *screen = g_malloc0(W * H * 4);
    Res tmp = r;

    tmp.pixels = g_malloc(W * H * 4);
    for (guint i = 0; i < G_N_ELEMENTS(held); i++) {
      res_paint(&tmp, i);
      if (i % 2)
        memcpy(screen, tmp.pixels, W * H * 4);
      else
        memcpy(screen + (gsize)i * W * 4, tmp.pixels + (gsize)i * W * 4, (gsize)4 * W * 4);
      want[i] = g_memdup2(screen, W * H * 4);
    }
    g_free(tmp.pixels);
  }
  for (guint i = 0; i < G_N_ELEMENTS(held); i++)
    check_sample(held[i], &r, want[i]);
  g_assert_cmpuint(stat_of(f, "overflows"), >, 0);
  /* Release them all: the newest pixels still come through. */
  for (guint i = 0; i < G_N_ELEMENTS(held); i++) {
    gst_sample_unref(held[i]);
    g_free(want[i]);
  }
  res_paint(&r, 99);
  show(f->fe, &r, 0, 0, W, 8);
  s = pull(f);
  {
    g_autofree guint8 *expect = g_malloc(W * H * 4);
    Res tmp = r;

    tmp.pixels = g_malloc(W * H * 4);
    res_paint(&tmp, 11);
    memcpy(expect, tmp.pixels, W * H * 4);
    res_paint(&tmp, 99);
    memcpy(expect, tmp.pixels, (gsize)8 * W * 4);
    check_sample(s, &r, expect);
    g_free(tmp.pixels);
  }
}

/* A frontend leaves, the next one is served by the same element. */
static void
test_reconnect(Fixture *f, gconstpointer data)
{
  for (guint round = 0; round < 2; round++) {
    Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
    g_autoptr(GstSample) s = NULL;

    res_paint(&r, round);
    scanout(f->fe, &r);
    show(f->fe, &r, 0, 0, W, H);
    s = pull(f);
    check_sample(s, &r, r.pixels);
    g_clear_pointer(&f->fe, vhu_frontend_free);
    f->fe = frontend_new(f);
  }
}

/* NULL and back to PLAYING serves a new frontend from scratch. */
static void
test_restart(Fixture *f, gconstpointer data)
{
  for (guint round = 0; round < 2; round++) {
    Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM, W, H);
    g_autoptr(GstSample) s = NULL;

    res_paint(&r, round);
    scanout(f->fe, &r);
    show(f->fe, &r, 0, 0, W, H);
    s = pull(f);
    check_sample(s, &r, r.pixels);
    g_clear_pointer(&f->fe, vhu_frontend_free);
    g_assert_cmpint(gst_element_set_state(f->pipeline, GST_STATE_NULL), ==,
                    GST_STATE_CHANGE_SUCCESS);
    g_assert_cmpint(gst_element_set_state(f->pipeline, GST_STATE_PLAYING), !=,
                    GST_STATE_CHANGE_FAILURE);
    f->fe = frontend_new(f);
  }
}

/* EOS sent to the pipeline ends the stream; the latency query is answered
 * (live, one interval at max-framerate). */
static void
test_eos_latency(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  g_autoptr(GstSample) s = NULL;
  g_autoptr(GstQuery) q = gst_query_new_latency();
  g_autoptr(GstMessage) m = NULL;
  GstClockTime min, max;
  gboolean live;
  gint n, d;

  scanout(f->fe, &r);
  show(f->fe, &r, 0, 0, W, H);
  s = pull(f);
  g_assert_true(gst_structure_get_fraction(gst_caps_get_structure(gst_sample_get_caps(s), 0),
                                           "max-framerate", &n, &d));
  g_assert_cmpint(n, ==, 50);
  g_assert_true(gst_element_query(f->src, q));
  gst_query_parse_latency(q, &live, &min, &max);
  g_assert_true(live);
  g_assert_cmpuint(min, ==, 20 * GST_MSECOND);
  g_assert_true(gst_element_send_event(f->pipeline, gst_event_new_eos()));
  m = gst_bus_timed_pop_filtered(f->bus, WAIT_NS, GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  g_assert_nonnull(m);
  g_assert_cmpint(GST_MESSAGE_TYPE(m), ==, GST_MESSAGE_EOS);
}

/* An idle guest: keepalive-time repeats the last frame, without damage. */
static void
test_keepalive(Fixture *f, gconstpointer data)
{
  Res r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  g_autoptr(GstSample) s1 = NULL, s2 = NULL;
  g_autoptr(GstMessage) m1 = NULL, m2 = NULL;
  gboolean ka = FALSE;

  res_paint(&r, 3);
  scanout(f->fe, &r);
  show(f->fe, &r, 0, 0, W, H);
  s1 = pull(f);
  m1 = next_frame_message(f);
  s2 = pull(f); /* nothing flushed: the repeat */
  m2 = next_frame_message(f);
  g_assert_true(gst_structure_get_boolean(gst_message_get_structure(m2), "keepalive", &ka));
  g_assert_true(ka);
  check_sample(s2, &r, r.pixels);
  g_assert_null(
      gst_buffer_get_meta(gst_sample_get_buffer(s2), GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE));
  g_assert_cmpuint(GST_BUFFER_PTS(gst_sample_get_buffer(s2)), >,
                   GST_BUFFER_PTS(gst_sample_get_buffer(s1)));
}

/* With qemu-display on, QEMU's display and the pipeline both get the frame. */
static void
test_qemu_display(Fixture *f, gconstpointer data)
{
  VhuDisplayConfig cfg = { 1, 1024, 768, 0x3, FALSE };
  g_autoptr(GError) error = NULL;
  VhuDisplayServer *ds;
  g_autoptr(GstSample) s = NULL;
  g_autofree guint32 *fb = NULL;
  guint fw = 0, fh = 0;
  Res r;

  /* The display socket comes before the start, as QEMU sends it. */
  g_clear_pointer(&f->fe, vhu_frontend_free);
  {
    const guint sizes[2] = { 64, 16 };
    guint64 drv = BIT(VIRTIO_GPU_F_EDID) | BIT(VHU_F_RING_INDIRECT_DESC);

    f->fe = vhu_frontend_connect_wait(f->path, WAIT_MS, NULL, NULL, &error);
    g_assert_no_error(error);
    g_assert_true(vhu_frontend_init(f->fe, G_MAXUINT64, &error));
    g_assert_true(vhu_frontend_add_region(f->fe, GUEST_GPA, GUEST_SIZE, &error));
    ds = vhu_display_server_new(&cfg);
    g_assert_true(vhu_display_server_attach(ds, f->fe, &error));
    g_assert_no_error(error);
    g_assert_true(vhu_frontend_start(f->fe, drv, sizes, 2, &error));
    g_assert_no_error(error);
  }
  r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  res_paint(&r, 5);
  scanout(f->fe, &r);
  show(f->fe, &r, 0, 0, W, H);
  s = pull(f);
  check_sample(s, &r, r.pixels);
  g_assert_true(vhu_display_server_wait_updates(ds, 1, WAIT_MS));
  fb = vhu_display_server_get_frame(ds, 0, &fw, &fh);
  g_assert_nonnull(fb);
  g_assert_cmpuint(fw, ==, W);
  g_assert_cmpmem(fb, W * H * 4, r.pixels, W * H * 4);
  g_clear_pointer(&f->fe, vhu_frontend_free);
  vhu_display_server_free(ds);
}

/* gst-vhost-gpu --pipeline records to WebM while QEMU's display keeps
 * working; SIGTERM ends the recording cleanly: the file decodes. */
static void
test_daemon_pipeline(void)
{
  g_autofree char *dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "gpu.sock", NULL);
  g_autofree char *webm = g_build_filename(dir, "vm.webm", NULL);
  g_autofree char *desc
      = g_strdup_printf("videoconvert ! vp8enc deadline=1 ! webmmux ! filesink location=%s", webm);
  g_autofree char *check = g_strdup_printf(
      "filesrc location=%s ! matroskademux ! vp8dec ! videoconvert ! video/x-raw,format=BGRx ! "
      "appsink name=sink sync=false",
      webm);
  const char *argv[] = { GST_VHOST_GPU, "--socket-path", path, "--pipeline", desc, NULL };
  VhuDisplayConfig cfg = { 1, 1024, 768, 0x3, FALSE };
  const guint sizes[2] = { 64, 16 };
  g_autoptr(GSubprocessLauncher) launcher
      = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDERR_SILENCE);
  g_autoptr(GSubprocess) proc = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GstElement) play = NULL;
  VhuDisplayServer *ds;
  GstElement *sink;
  VhuFrontend *fe;
  guint frames = 0;
  Res r;

  if (g_test_verbose())
    g_subprocess_launcher_set_flags(launcher, G_SUBPROCESS_FLAGS_NONE);
  proc = g_subprocess_launcher_spawnv(launcher, argv, &error);
  g_assert_no_error(error);
  fe = vhu_frontend_connect_wait(path, WAIT_MS, tu_proc_alive, proc, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  ds = vhu_display_server_new(&cfg);
  g_assert_true(vhu_display_server_attach(ds, fe, &error));
  g_assert_true(vhu_frontend_start(fe, BIT(VIRTIO_GPU_F_EDID), sizes, 2, &error));
  g_assert_no_error(error);
  r = res_create(fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 160, 96);
  scanout(fe, &r);
  for (guint seed = 0; seed < 10; seed++) {
    res_paint(&r, seed);
    show(fe, &r, 0, 0, r.w, r.h);
  }
  /* QEMU's display got the last frame (flushes behind a busy writer merge:
   * how many updates carried it depends on timing). */
  g_assert_true(vhu_display_server_wait_frame(ds, 0, (const guint32 *)r.pixels, r.w, r.h, WAIT_MS));
  g_subprocess_send_signal(proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(proc, 3 * WAIT_MS), ==, 0);
  vhu_frontend_free(fe);
  vhu_display_server_free(ds);

  /* The recording plays back: frames of the scanout's size, then EOS. */
  play = gst_parse_launch(check, &error);
  g_assert_no_error(error);
  sink = gst_bin_get_by_name(GST_BIN(play), "sink");
  g_assert_cmpint(gst_element_set_state(play, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
  for (;;) {
    g_autoptr(GstSample) s = gst_app_sink_try_pull_sample(GST_APP_SINK(sink), WAIT_NS);
    GstVideoInfo info;

    if (!s)
      break;
    g_assert_true(gst_video_info_from_caps(&info, gst_sample_get_caps(s)));
    g_assert_cmpuint(GST_VIDEO_INFO_WIDTH(&info), ==, r.w);
    g_assert_cmpuint(GST_VIDEO_INFO_HEIGHT(&info), ==, r.h);
    frames++;
  }
  g_assert_true(gst_app_sink_is_eos(GST_APP_SINK(sink)));
  g_assert_cmpuint(frames, >=, 1);
  gst_element_set_state(play, GST_STATE_NULL);
  gst_object_unref(sink);
  g_unlink(webm);
  g_unlink(path);
  g_rmdir(dir);
}

/* The element alone in a GstHarness (no pipeline, no bus): the caps event
 * and the buffer downstream sees. */
static void
test_harness(void)
{
  g_autofree char *dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  g_autofree char *path = g_build_filename(dir, "gpu.sock", NULL);
  GstHarness *h = gst_harness_new_with_padnames("vhostgpusrc", NULL, "src");
  g_autoptr(GError) error = NULL;
  g_autoptr(GstCaps) caps = NULL;
  const guint sizes[2] = { 64, 16 };
  GstBuffer *buf;
  VhuFrontend *fe;
  GstMapInfo map;
  Res r;

  g_object_set(h->element, "socket-path", path, "qemu-display", FALSE, NULL);
  gst_harness_play(h);
  fe = vhu_frontend_connect_wait(path, WAIT_MS, NULL, NULL, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_start(fe, BIT(VIRTIO_GPU_F_EDID), sizes, 2, &error));
  g_assert_no_error(error);
  r = res_create(fe, 1, VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, W, H);
  res_paint(&r, 4);
  scanout(fe, &r);
  show(fe, &r, 0, 0, W, H);
  buf = gst_harness_pull(h);
  g_assert_nonnull(buf);
  caps = gst_pad_get_current_caps(h->sinkpad);
  g_assert_cmpstr(gst_structure_get_string(gst_caps_get_structure(caps, 0), "format"), ==, "ARGB");
  g_assert_true(gst_buffer_map(buf, &map, GST_MAP_READ));
  g_assert_cmpmem(map.data, map.size, r.pixels, (gsize)W * H * 4);
  gst_buffer_unmap(buf, &map);
  gst_buffer_unref(buf);
  vhu_frontend_free(fe);
  gst_harness_teardown(h);
  g_rmdir(dir);
}

/* fd: one connected frontend; its leaving ends the stream. */
static void
test_fd(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GstElement) pipeline = NULL;
  g_autoptr(GstBus) bus = NULL;
  g_autoptr(GstMessage) m = NULL;
  const guint sizes[2] = { 64, 16 };
  g_autofree char *desc = NULL;
  GstElement *sink;
  VhuFrontend *fe;
  int sv[2];

  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  desc = g_strdup_printf("vhostgpusrc fd=%d qemu-display=false ! appsink name=sink sync=false",
                         sv[1]);
  pipeline = gst_parse_launch(desc, &error);
  g_assert_no_error(error);
  g_assert_cmpint(gst_element_set_state(pipeline, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
  close(sv[1]); /* the element serves its own duplicate */
  fe = vhu_frontend_new_from_fd(sv[0]);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(fe, GUEST_GPA, GUEST_SIZE, &error));
  g_assert_true(vhu_frontend_start(fe, BIT(VIRTIO_GPU_F_EDID), sizes, 2, &error));
  g_assert_no_error(error);
  {
    Res r = res_create(fe, 1, VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM, W, H);
    g_autoptr(GstSample) s = NULL;

    sink = gst_bin_get_by_name(GST_BIN(pipeline), "sink");
    res_paint(&r, 7);
    scanout(fe, &r);
    show(fe, &r, 0, 0, W, H);
    s = gst_app_sink_try_pull_sample(GST_APP_SINK(sink), WAIT_NS);
    g_assert_nonnull(s);
    check_sample(s, &r, r.pixels);
  }
  vhu_frontend_free(fe);
  bus = gst_element_get_bus(pipeline);
  m = gst_bus_timed_pop_filtered(bus, WAIT_NS, GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  g_assert_nonnull(m);
  g_assert_cmpint(GST_MESSAGE_TYPE(m), ==, GST_MESSAGE_EOS);
  gst_element_set_state(pipeline, GST_STATE_NULL);
  gst_object_unref(sink);
}

/* scanout=1 of two: the other scanout's flushes never show up. */
static void
test_second_scanout(Fixture *f, gconstpointer data)
{
  Res a = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
  Res b = res_create(f->fe, 2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W + 16, H);
  struct virtio_gpu_set_scanout s0 = gpu_set_scanout(0, a.id, 0, 0, a.w, a.h);
  struct virtio_gpu_set_scanout s1 = gpu_set_scanout(1, b.id, 0, 0, b.w, b.h);
  g_autoptr(GstSample) s = NULL;

  res_paint(&a, 1);
  res_paint(&b, 2);
  g_assert_cmphex(CMD(f->fe, s0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(f->fe, s1), ==, VIRTIO_GPU_RESP_OK_NODATA);
  show(f->fe, &a, 0, 0, a.w, a.h);
  show(f->fe, &b, 0, 0, b.w, b.h);
  s = pull(f);
  check_sample(s, &b, b.pixels);
  g_assert_cmpuint(stat_of(f, "flushes"), ==, 1);
}

static void
setup_blocked(Fixture *f, gconstpointer data)
{
  setup_with(f, NULL, "max-buffers=1 drop=false");
}

/* --- guest-memory blobs ----------------------------------------------------- */

typedef struct {
  guint32 id, format, w, h, stride;
  guint8 *pixels; /* the blob in guest memory (the first piece when split) */
  guint8 *second; /* the second piece, or NULL */
  gsize first_len, size;
} Blob;

static void
setup_blob(Fixture *f, gconstpointer data)
{
  f->dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  f->path = g_build_filename(f->dir, "gpu.sock", NULL);
  pipeline_start(f, data, NULL);
  f->fe = frontend_new_with(f, BIT(VIRTIO_GPU_F_RESOURCE_BLOB));
}

static guint8 *
blob_at(Blob *b, gsize at)
{
  return b->second && at >= b->first_len ? b->second + (at - b->first_len) : b->pixels + at;
}

/* A blob of @w x @h pixels, rows @stride bytes apart, in one contiguous
 * piece of guest memory or (@split) in two with a page between them; shown
 * on scanout 0 with SET_SCANOUT_BLOB. */
static Blob
blob_show_new(VhuFrontend *fe, guint32 id, guint32 format, guint32 w, guint32 h, guint32 stride,
              gboolean split)
{
  /* Whole pages, as a guest's blobs are. */
  Blob b = { id, format, w, h, stride, NULL, NULL, 0, ((gsize)stride * h + 4095) & ~(gsize)4095 };
  struct virtio_gpu_mem_entry e[2];
  struct virtio_gpu_resource_create_blob c = {
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB),
    .resource_id = id,
    .blob_mem = VIRTIO_GPU_BLOB_MEM_GUEST,
    .blob_flags = VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE,
    .nr_entries = split ? 2 : 1,
    .size = b.size,
  };
  struct virtio_gpu_set_scanout_blob s = {
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_SET_SCANOUT_BLOB),
    .r = { 0, 0, w, h },
    .resource_id = id,
    .width = w,
    .height = h,
    .format = format,
    .strides = { stride },
  };
  guint8 req[sizeof c + sizeof e];
  guint64 gpa;

  b.first_len = split ? ((b.size / 2 + 4095) & ~(gsize)4095) : b.size;
  gpa = vhu_frontend_alloc(fe, b.first_len, 4096);
  g_assert_cmphex(gpa, !=, G_MAXUINT64);
  b.pixels = vhu_frontend_gpa_to_ptr(fe, gpa, b.first_len);
  e[0] = (struct virtio_gpu_mem_entry){ gpa, (guint32)b.first_len, 0 };
  if (split) {
    g_assert_cmphex(vhu_frontend_alloc(fe, 4096, 4096), !=, G_MAXUINT64);
    gpa = vhu_frontend_alloc(fe, b.size - b.first_len, 4096);
    g_assert_cmphex(gpa, !=, G_MAXUINT64);
    b.second = vhu_frontend_gpa_to_ptr(fe, gpa, b.size - b.first_len);
    e[1] = (struct virtio_gpu_mem_entry){ gpa, (guint32)(b.size - b.first_len), 0 };
  }
  memcpy(req, &c, sizeof c);
  memcpy(req + sizeof c, e, sizeof e);
  g_assert_cmphex(gpu_cmd(fe, req, sizeof c + c.nr_entries * sizeof e[0], NULL, 0), ==,
                  VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(CMD(fe, s), ==, VIRTIO_GPU_RESP_OK_NODATA);
  return b;
}

/* Paints pattern @seed into the blob, and the same rows packed into
 * @packed (w * 4 bytes a row) for the comparison. */
static void
blob_paint(Blob *b, guint seed, guint8 *packed)
{
  for (guint y = 0; y < b->h; y++) {
    for (guint x = 0; x < b->w; x++) {
      guint8 cr, cg, cb, *p = packed + ((gsize)y * b->w + x) * 4;

      gpu_pattern(x, y, seed, &cr, &cg, &cb);
      gpu_put_pixel(p, b->format, cr, cg, cb, (guint8)(x + y));
      for (guint i = 0; i < 4; i++)
        *blob_at(b, (gsize)y * b->stride + (gsize)x * 4 + i) = p[i];
    }
  }
}

static void
blob_flush(VhuFrontend *fe, Blob *b)
{
  struct virtio_gpu_resource_flush fl = gpu_flush(b->id, 0, 0, b->w, b->h);

  g_assert_cmphex(CMD(fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);
}

static void
check_blob_sample(GstSample *s, Blob *b, const guint8 *packed)
{
  Res r = { b->id, b->format, b->w, b->h, 0, NULL };

  check_sample(s, &r, packed);
}

/* Every format, rows wider than the picture: each buffer is the guest's
 * blob memory itself (no copy, counted), its GstVideoMeta carries the
 * blob's stride, and the pixels are exact. */
static void
test_blob_zero_copy(Fixture *f, gconstpointer data)
{
  for (guint i = 0; i < G_N_ELEMENTS(gpu_all_formats); i++) {
    Blob b = blob_show_new(f->fe, 10 + i, gpu_all_formats[i], W + 4 * i, H, (W + 4 * i) * 4 + 64,
                           FALSE);
    g_autofree guint8 *packed = g_malloc((gsize)b.w * b.h * 4);
    g_autoptr(GstSample) s = NULL;
    GstBuffer *buf;
    GstMemory *mem;
    GstVideoMeta *vm;
    GstMapInfo map;

    blob_paint(&b, i, packed);
    blob_flush(f->fe, &b);
    s = pull(f);
    check_blob_sample(s, &b, packed);
    buf = gst_sample_get_buffer(s);
    g_assert_cmpuint(gst_buffer_n_memory(buf), ==, 1);
    mem = gst_buffer_peek_memory(buf, 0);
    g_assert_true(GST_MEMORY_IS_READONLY(mem));
    g_assert_true(gst_memory_map(mem, &map, GST_MAP_READ));
    /* The guest's pages, not a copy: a write there shows at once. */
    b.pixels[1] ^= 0x5a;
    g_assert_cmpuint(map.data[1], ==, b.pixels[1]);
    b.pixels[1] ^= 0x5a;
    gst_memory_unmap(mem, &map);
    vm = gst_buffer_get_video_meta(buf);
    g_assert_nonnull(vm);
    g_assert_cmpint(vm->stride[0], ==, (gint)b.stride);
  }
  g_assert_cmpuint(stat_of(f, "zero-copy-frames"), ==, G_N_ELEMENTS(gpu_all_formats));
  g_assert_cmpuint(stat_of(f, "bytes-copied"), ==, 0);
}

/* Scan-out semantics: a buffer shows the blob as the guest has it now, and
 * keeps the pages mapped after the guest unrefs the blob (answered at once),
 * after the frontend is gone and after the element stopped. */
static void
test_blob_lifetime(Fixture *f, gconstpointer data)
{
  Blob b = blob_show_new(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H, W * 4, FALSE);
  g_autofree guint8 *packed = g_malloc((gsize)W * H * 4);
  g_autofree guint8 *later = g_malloc((gsize)W * H * 4);
  struct virtio_gpu_resource_unref u = gpu_unref(1);
  g_autoptr(GstSample) s1 = NULL, s2 = NULL;

  blob_paint(&b, 1, packed);
  blob_flush(f->fe, &b);
  s1 = pull(f);
  check_blob_sample(s1, &b, packed);
  /* The guest draws the next frame in place: the held buffer shows it too. */
  blob_paint(&b, 2, later);
  blob_flush(f->fe, &b);
  s2 = pull(f);
  check_blob_sample(s2, &b, later);
  check_blob_sample(s1, &b, later);
  /* Unref while buffers hold the blob: not delayed, the scanout goes. */
  g_assert_cmphex(CMD(f->fe, u), ==, VIRTIO_GPU_RESP_OK_NODATA);
  /* The frontend leaves, its memory with it: the buffers still read the
   * pages the backend keeps mapped. */
  g_clear_pointer(&f->fe, vhu_frontend_free);
  check_blob_sample(s1, &b, later);
  /* And after the element (its device, its memory table) is gone. */
  pipeline_stop(f);
  check_blob_sample(s2, &b, later);
}

/* A blob in two host pieces cannot be one GstMemory: one copy, exact. */
static void
test_blob_split(Fixture *f, gconstpointer data)
{
  Blob b = blob_show_new(f->fe, 1, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, W, H, W * 4 + 16, TRUE);
  g_autofree guint8 *packed = g_malloc((gsize)W * H * 4);
  g_autoptr(GstSample) s = NULL;

  blob_paint(&b, 5, packed);
  blob_flush(f->fe, &b);
  s = pull(f);
  check_blob_sample(s, &b, packed);
  g_assert_true(gst_is_fd_memory(gst_buffer_peek_memory(gst_sample_get_buffer(s), 0)));
  g_assert_cmpuint(stat_of(f, "zero-copy-frames"), ==, 0);
  g_assert_cmpuint(stat_of(f, "bytes-copied"), ==, (guint64)W * H * 4);
}

/* With QEMU's display attached too, frames downstream still copy nothing. */
static void
test_blob_with_display(Fixture *f, gconstpointer data)
{
  g_autoptr(VhuDisplayServer) ds = NULL;
  VhuDisplayConfig cfg = { 1, 1024, 768, 3, FALSE };
  g_autoptr(GError) error = NULL;
  Blob b;
  g_autofree guint8 *packed = g_malloc((gsize)W * H * 4);
  guint fw, fh;

  ds = vhu_display_server_new(&cfg);
  g_assert_true(vhu_display_server_attach(ds, f->fe, &error));
  g_assert_no_error(error);
  b = blob_show_new(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, W, H, W * 4, FALSE);
  blob_paint(&b, 7, packed);
  blob_flush(f->fe, &b);
  {
    g_autoptr(GstSample) s = pull(f);

    check_blob_sample(s, &b, packed);
  }
  g_assert_true(vhu_display_server_wait_updates(ds, 1, WAIT_MS));
  {
    g_autofree guint32 *fb = vhu_display_server_get_frame(ds, 0, &fw, &fh);

    g_assert_nonnull(fb);
    g_assert_cmpuint(fw, ==, W);
    g_assert_cmpuint(fb[(H - 1) * W + 3] & 0xffffff, ==,
                     *(guint32 *)(packed + ((gsize)(H - 1) * W + 3) * 4) & 0xffffff);
  }
  g_assert_cmpuint(stat_of(f, "zero-copy-frames"), ==, 1);
  g_assert_cmpuint(stat_of(f, "bytes-copied"), ==, 0);
  vhu_display_server_detach(ds);
}

/* dmabuf: with /dev/udmabuf, a downstream that takes memory:DMABuf gets
 * each frame as dmabuf memory of the frame's own pages, pixels exact, and
 * the same dmabuf again for the same frame memory; without it, the caps
 * offer system memory only (a DMABuf-only downstream does not link) and
 * frames are fd memory.  GST_VHOST_REQUIRE_UDMABUF=1 (the guest run) fails
 * instead of testing the fallback. */
static void
test_dmabuf(void)
{
  gboolean have = g_file_test("/dev/udmabuf", G_FILE_TEST_EXISTS);
  Fixture fx = { 0 }, *f = &fx;
  g_autoptr(GstSample) s1 = NULL, s2 = NULL, s3 = NULL;
  GstMemory *m1, *m2;
  Res r;

  if (g_strcmp0(g_getenv("GST_VHOST_REQUIRE_UDMABUF"), "1") == 0 && !have)
    g_error("/dev/udmabuf is required here");
  f->dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  f->path = g_build_filename(f->dir, "gpu.sock", NULL);
  if (!have) {
    g_autoptr(GError) error = NULL;
    g_autofree char *desc = g_strdup_printf(
        "vhostgpusrc socket-path=%s ! appsink caps=video/x-raw(memory:DMABuf)", f->path);
    g_autoptr(GstElement) p = gst_parse_launch(desc, &error);

    /* nothing claims to be a dmabuf: a DMABuf-only downstream does not link */
    g_assert_error(error, GST_PARSE_ERROR, GST_PARSE_ERROR_LINK);
    pipeline_start(f, "qemu-display=false", NULL);
    f->fe = frontend_new(f);
    r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H);
    res_paint(&r, 2);
    scanout(f->fe, &r);
    show(f->fe, &r, 0, 0, W, H);
    s1 = pull(f);
    check_sample(s1, &r, r.pixels);
    m1 = gst_buffer_peek_memory(gst_sample_get_buffer(s1), 0);
    g_assert_true(gst_is_fd_memory(m1));
    g_assert_false(gst_is_dmabuf_memory(m1));
    g_assert_cmpuint(stat_of(f, "dmabuf-frames"), ==, 0);
    g_test_message("no /dev/udmabuf: the fallback was tested");
    teardown(f, NULL);
    return;
  }
  pipeline_start(f, "qemu-display=false", "caps=video/x-raw(memory:DMABuf) max-buffers=1");
  f->fe = frontend_new(f);
  r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, W, H);
  res_paint(&r, 3);
  scanout(f->fe, &r);
  show(f->fe, &r, 0, 0, W, H);
  s1 = pull(f);
  g_assert_true(gst_caps_features_contains(gst_caps_get_features(gst_sample_get_caps(s1), 0),
                                           GST_CAPS_FEATURE_MEMORY_DMABUF));
  m1 = gst_buffer_peek_memory(gst_sample_get_buffer(s1), 0);
  g_assert_true(gst_is_dmabuf_memory(m1));
  check_sample(s1, &r, r.pixels);
  /* Two more frames while s1 is held: another frame memory, then, once s1
   * and s2 are gone, the same dmabufs come back. */
  res_paint(&r, 4);
  show(f->fe, &r, 0, 0, W, H);
  s2 = pull(f);
  m2 = gst_buffer_peek_memory(gst_sample_get_buffer(s2), 0);
  g_assert_true(gst_is_dmabuf_memory(m2));
  g_assert_true(m2 != m1);
  check_sample(s2, &r, r.pixels);
  g_clear_pointer(&s1, gst_sample_unref);
  res_paint(&r, 5);
  show(f->fe, &r, 0, 0, W, H);
  s3 = pull(f);
  g_assert_true(gst_buffer_peek_memory(gst_sample_get_buffer(s3), 0) == m1);
  check_sample(s3, &r, r.pixels);
  g_assert_cmpuint(stat_of(f, "dmabuf-frames"), ==, 3);
  g_test_message("/dev/udmabuf: frames were dmabufs");
  teardown(f, NULL);
}

/* The dmabuf a buffer's memory is (part of): its fd. */
static int
dmabuf_fd_of(GstSample *s)
{
  GstMemory *mem = gst_buffer_peek_memory(gst_sample_get_buffer(s), 0);

  g_assert_true(gst_is_dmabuf_memory(mem));
  return gst_dmabuf_memory_get_fd(mem);
}

/* Guest blobs as dmabuf: with guest memory sealed (as QEMU's memfd
 * backend seals it) and /dev/udmabuf, a downstream taking memory:DMABuf
 * gets a blob scanout as one dmabuf of the guest's own pages: pixels
 * exact with the blob's stride, no byte copied, what the guest writes
 * there later shows through, the same dmabuf for every frame of the blob
 * and again after a flip to another blob and back (cached per blob); a
 * blob in two host pieces is one dmabuf too, and not copied either.  Without udmabuf (or without
 * the seals: the test's unsealed frontends elsewhere) blob frames stay
 * guest memory, the caps offer no memory:DMABuf. */
static void
test_blob_dmabuf(void)
{
  gboolean have = g_file_test("/dev/udmabuf", G_FILE_TEST_EXISTS);
  Fixture fx = { 0 }, *f = &fx;
  g_autofree guint8 *packed = g_malloc((gsize)W * H * 4);
  g_autofree guint8 *other = g_malloc((gsize)W * H * 4);
  g_autoptr(GstSample) s1 = NULL, s2 = NULL, s3 = NULL, s4 = NULL;
  struct virtio_gpu_set_scanout_blob flip;
  GstVideoMeta *vm;
  GstMapInfo map;
  GstMemory *mem;
  Blob a, b, c;

  if (g_strcmp0(g_getenv("GST_VHOST_REQUIRE_UDMABUF"), "1") == 0 && !have)
    g_error("/dev/udmabuf is required here");
  f->dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  f->path = g_build_filename(f->dir, "gpu.sock", NULL);
  if (!have) {
    pipeline_start(f, "qemu-display=false", NULL);
    f->fe = frontend_new_opts(f, BIT(VIRTIO_GPU_F_RESOURCE_BLOB), TRUE);
    a = blob_show_new(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, W, H, W * 4, FALSE);
    blob_paint(&a, 1, packed);
    blob_flush(f->fe, &a);
    s1 = pull(f);
    check_blob_sample(s1, &a, packed);
    g_assert_false(gst_caps_features_contains(gst_caps_get_features(gst_sample_get_caps(s1), 0),
                                              GST_CAPS_FEATURE_MEMORY_DMABUF));
    g_assert_false(gst_is_dmabuf_memory(gst_buffer_peek_memory(gst_sample_get_buffer(s1), 0)));
    g_assert_cmpuint(stat_of(f, "zero-copy-frames"), ==, 1);
    g_assert_cmpuint(stat_of(f, "blob-dmabuf-frames"), ==, 0);
    g_test_message("no /dev/udmabuf: blob frames stayed guest memory");
    teardown(f, NULL);
    return;
  }
  pipeline_start(f, "qemu-display=false", "caps=video/x-raw(memory:DMABuf) max-buffers=1");
  f->fe = frontend_new_opts(f, BIT(VIRTIO_GPU_F_RESOURCE_BLOB), TRUE);
  /* Rows wider than the picture, the blob whole pages (as a guest's are). */
  a = blob_show_new(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, W, H, W * 4 + 64, FALSE);
  blob_paint(&a, 1, packed);
  blob_flush(f->fe, &a);
  s1 = pull(f);
  g_assert_true(gst_caps_features_contains(gst_caps_get_features(gst_sample_get_caps(s1), 0),
                                           GST_CAPS_FEATURE_MEMORY_DMABUF));
  check_blob_sample(s1, &a, packed);
  vm = gst_buffer_get_video_meta(gst_sample_get_buffer(s1));
  g_assert_nonnull(vm);
  g_assert_cmpint(vm->stride[0], ==, (gint)a.stride);
  /* The guest's pages: a write there shows at once. */
  mem = gst_buffer_peek_memory(gst_sample_get_buffer(s1), 0);
  g_assert_true(gst_memory_map(mem, &map, GST_MAP_READ));
  a.pixels[5] ^= 0x5a;
  g_assert_cmpuint(map.data[5], ==, a.pixels[5]);
  a.pixels[5] ^= 0x5a;
  gst_memory_unmap(mem, &map);
  /* The same blob again: the same dmabuf, the new pixels. */
  blob_paint(&a, 2, packed);
  blob_flush(f->fe, &a);
  s2 = pull(f);
  check_blob_sample(s2, &a, packed);
  g_assert_cmpint(dmabuf_fd_of(s2), ==, dmabuf_fd_of(s1));
  /* A flip to another blob (its own dmabuf) and back (the cached one). */
  b = blob_show_new(f->fe, 2, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, W, H, W * 4 + 64, FALSE);
  blob_paint(&b, 3, other);
  blob_flush(f->fe, &b);
  s3 = pull(f);
  check_blob_sample(s3, &b, other);
  g_assert_cmpint(dmabuf_fd_of(s3), !=, dmabuf_fd_of(s1));
  flip = (struct virtio_gpu_set_scanout_blob){
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_SET_SCANOUT_BLOB),
    .r = { 0, 0, W, H },
    .resource_id = 1,
    .width = W,
    .height = H,
    .format = VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
    .strides = { a.stride },
  };
  g_assert_cmphex(CMD(f->fe, flip), ==, VIRTIO_GPU_RESP_OK_NODATA);
  blob_flush(f->fe, &a);
  g_clear_pointer(&s4, gst_sample_unref);
  s4 = pull(f);
  check_blob_sample(s4, &a, packed);
  g_assert_cmpint(dmabuf_fd_of(s4), ==, dmabuf_fd_of(s1));
  g_assert_cmpuint(stat_of(f, "bytes-copied"), ==, 0);
  g_assert_cmpuint(stat_of(f, "blob-dmabuf-frames"), ==, 4);
  /* In two host pieces: one dmabuf over both, exact. */
  c = blob_show_new(f->fe, 3, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM, W, H, W * 4, TRUE);
  blob_paint(&c, 4, other);
  blob_flush(f->fe, &c);
  g_clear_pointer(&s2, gst_sample_unref);
  s2 = pull(f);
  check_blob_sample(s2, &c, other);
  g_assert_cmpint(dmabuf_fd_of(s2), >=, 0);
  g_assert_cmpuint(stat_of(f, "blob-dmabuf-frames"), ==, 5);
  /* Not copied into frame memory either, unlike for system memory. */
  g_assert_cmpuint(stat_of(f, "bytes-copied"), ==, 0);
  /* The buffers outlive the frontend and the element: the pages are
   * pinned by their dmabufs. */
  g_clear_pointer(&f->fe, vhu_frontend_free);
  pipeline_stop(f);
  check_blob_sample(s4, &a, packed);
  check_blob_sample(s2, &c, other);
  g_test_message("/dev/udmabuf: blob frames were the guest's pages as dmabufs");
  teardown(f, NULL);
}

/* Scanout @id of the display server shows @w x @h pixels of pattern @seed
 * (RGB compared; alpha/padding aside). */
static void
check_display(VhuDisplayServer *ds, guint w, guint h, guint seed)
{
  guint fw = 0, fh = 0;
  g_autofree guint32 *fb = vhu_display_server_get_frame(ds, 0, &fw, &fh);

  g_assert_nonnull(fb);
  g_assert_cmpuint(fw, ==, w);
  g_assert_cmpuint(fh, ==, h);
  for (guint y = 0; y < h; y++) {
    for (guint x = 0; x < w; x++) {
      guint8 r, g, b;

      gpu_pattern(x, y, seed, &r, &g, &b);
      if ((fb[(gsize)y * w + x] & 0xffffff) != ((guint32)r << 16 | (guint32)g << 8 | b))
        g_error("display pixel (%u, %u) is %06x", x, y, fb[(gsize)y * w + x] & 0xffffff);
    }
  }
}

/* Until the backend has sent SET_PROTOCOL_FEATURES: a flush before the
 * handshake goes as pixels whatever the display offers. */
static void
wait_negotiated(VhuDisplayServer *ds)
{
  gint64 end = g_get_monotonic_time() + WAIT_MS * 1000;
  VhuDisplayStats st;

  for (;;) {
    vhu_display_server_get_stats(ds, &st);
    if (st.set_protocol_features > 0)
      return;
    g_assert_cmpint(g_get_monotonic_time(), <, end);
    g_usleep(1000);
  }
}

/* dmabuf scanouts to QEMU's display (qemu-dmabuf=true, a display offering
 * DMABUF2 as QEMU 10 does): with /dev/udmabuf and sealed guest memory, a 2D
 * resource goes as a dmabuf of its image and a blob as a dmabuf of the
 * guest's pages: one DMABUF_SCANOUT2 each, DMABUF_UPDATEs for the flushes,
 * no pixel byte on the socket, and the display shows exact pixels (another
 * format than the first, so the fourcc matters).  A display offering no
 * DMABUF2 (QEMU 7.2) gets pixels.  Without udmabuf everything is pixels. */
static void
test_qemu_dmabuf(void)
{
  gboolean have = g_file_test("/dev/udmabuf", G_FILE_TEST_EXISTS);
  Fixture fx = { 0 }, *f = &fx;
  g_autoptr(VhuDisplayServer) ds = NULL;
  g_autoptr(GError) error = NULL;
  VhuDisplayConfig cfg = { 1, 1024, 768, 3, FALSE };
  g_autofree guint8 *packed = g_malloc((gsize)W * H * 4);
  VhuDisplayStats st;
  Blob b;
  Res r;

  if (g_strcmp0(g_getenv("GST_VHOST_REQUIRE_UDMABUF"), "1") == 0 && !have)
    g_error("/dev/udmabuf is required here");
  f->dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  f->path = g_build_filename(f->dir, "gpu.sock", NULL);
  pipeline_start(f, "qemu-display=true qemu-dmabuf=true", NULL);
  f->fe = frontend_new_opts(f, BIT(VIRTIO_GPU_F_RESOURCE_BLOB), TRUE);
  ds = vhu_display_server_new(&cfg);
  g_assert_true(vhu_display_server_attach(ds, f->fe, &error));
  g_assert_no_error(error);

  wait_negotiated(ds);
  r = res_create(f->fe, 1, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, W, H);
  res_paint(&r, 6);
  scanout(f->fe, &r);
  show(f->fe, &r, 0, 0, W, H);
  g_assert_true(vhu_display_server_wait_updates(ds, 1, WAIT_MS));
  check_display(ds, W, H, 6);
  gst_sample_unref(pull(f));
  /* A partial flush: only its rectangle changes. */
  res_paint(&r, 7);
  show(f->fe, &r, 0, 0, W, H / 2);
  g_assert_true(vhu_display_server_wait_updates(ds, 2, WAIT_MS));
  gst_sample_unref(pull(f));

  b = blob_show_new(f->fe, 2, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, W, H, W * 4 + 64, FALSE);
  blob_paint(&b, 8, packed);
  blob_flush(f->fe, &b);
  g_assert_true(vhu_display_server_wait_updates(ds, 3, WAIT_MS));
  check_display(ds, W, H, 8);
  gst_sample_unref(pull(f));
  vhu_display_server_get_stats(ds, &st);
  if (have) {
    g_assert_cmpuint(st.dmabuf_scanouts, ==, 2);
    g_assert_cmpuint(st.dmabuf_updates, ==, 3);
    g_assert_cmpuint(st.update_bytes, ==, 0);
    g_assert_cmpuint(st.errors, ==, 0);
  } else {
    g_assert_cmpuint(st.dmabuf_scanouts, ==, 0);
    g_assert_cmpuint(st.update_bytes, >, 0);
  }

  /* QEMU 7.2 offers no DMABUF2: pixels. */
  cfg.protocol_features = 0;
  g_clear_pointer(&ds, vhu_display_server_free);
  ds = vhu_display_server_new(&cfg);
  g_assert_true(vhu_display_server_attach(ds, f->fe, &error));
  g_assert_no_error(error);
  blob_paint(&b, 9, packed);
  wait_negotiated(ds);
  blob_flush(f->fe, &b);
  g_assert_true(vhu_display_server_wait_updates(ds, 1, WAIT_MS));
  vhu_display_server_get_stats(ds, &st);
  g_assert_cmpuint(st.dmabuf_scanouts, ==, 0);
  g_assert_cmpuint(st.updates, >=, 1);
  g_test_message(have ? "/dev/udmabuf: the display got dmabufs, then pixels without DMABUF2"
                      : "no /dev/udmabuf: the display got pixels");
  vhu_display_server_detach(ds);
  teardown(f, NULL);
}

/* The backend's own warnings about a peer that went away (a display socket
 * closed while written) are what it should say, not test failures. */
static gboolean
fatal_handler(const char *domain, GLogLevelFlags level, const char *message, gpointer data)
{
  return !((level & G_LOG_LEVEL_WARNING) && domain
           && (g_str_equal(domain, "vgpu") || g_str_equal(domain, "vhost")));
}

/* --- virgl ----------------------------------------------------------------- */

/* virgl command stream (virgl_protocol.h) */
#define VCMD(cmd, obj, len)      ((guint32)(cmd) | (guint32)(obj) << 8 | (guint32)(len) << 16)
#define VIRGL_CCMD_CREATE_OBJECT 1
#define VIRGL_CCMD_SET_FB_STATE  5
#define VIRGL_CCMD_CLEAR         7
#define VIRGL_OBJECT_SURFACE     8
#define VIRGL_FORMAT_B8G8R8X8    2
#define PIPE_TEXTURE_2D          2
#define PIPE_CLEAR_COLOR0        4
#define VIRGL_BIND_RT_SV         ((1u << 1) | (1u << 3)) /* render target, sampler view */

/* A fenced SUBMIT_3D on context 1: surface 1 on @res, cleared to (r, g, b). */
static guint32
submit_clear(VhuFrontend *fe, guint32 res, guint8 r, guint8 g, guint8 b)
{
  struct virtio_gpu_cmd_submit c = { GPU_HDR(VIRTIO_GPU_CMD_SUBMIT_3D) };
  guint32 dw[19] = {
    VCMD(VIRGL_CCMD_CREATE_OBJECT, VIRGL_OBJECT_SURFACE, 5),
    1,
    res,
    VIRGL_FORMAT_B8G8R8X8,
    0,
    0,
    VCMD(VIRGL_CCMD_SET_FB_STATE, 0, 3),
    1,
    0,
    1,
    VCMD(VIRGL_CCMD_CLEAR, 0, 8),
    PIPE_CLEAR_COLOR0,
  };
  float rgba[4] = { r / 255.0f, g / 255.0f, b / 255.0f, 1.0f };
  double depth = 1.0;
  guint8 req[sizeof c + sizeof dw];

  memcpy(&dw[12], rgba, sizeof rgba);
  memcpy(&dw[16], &depth, sizeof depth);
  c.hdr.ctx_id = 1;
  c.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
  c.hdr.fence_id = 1;
  c.size = sizeof dw;
  memcpy(req, &c, sizeof c);
  memcpy(req + sizeof c, dw, sizeof dw);
  return gpu_cmd(fe, req, sizeof req, NULL, 0);
}

/* virgl=true offers VIRTIO_GPU_F_VIRGL, and a frame rendered by the guest's
 * 3D commands (a clear) comes out of the element pixel for pixel.  Skipped
 * only where the renderer cannot start. */
static void
test_virgl(void)
{
  Fixture fx = { 0 }, *f = &fx;
  g_autoptr(GError) error = NULL;
  g_autofree char *desc = NULL;
  struct virtio_gpu_ctx_create cc = { GPU_HDR(VIRTIO_GPU_CMD_CTX_CREATE) };
  struct virtio_gpu_resource_create_3d c3 = {
    .hdr = GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_3D),
    .resource_id = 1,
    .target = PIPE_TEXTURE_2D,
    .format = VIRGL_FORMAT_B8G8R8X8,
    .bind = VIRGL_BIND_RT_SV,
    .width = W,
    .height = H,
    .depth = 1,
    .array_size = 1,
  };
  struct virtio_gpu_ctx_resource ca = { GPU_HDR(VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE) };
  struct virtio_gpu_resource_flush fl = gpu_flush(1, 0, 0, W, H);
  struct virtio_gpu_mem_entry e;
  g_autofree guint8 *att = NULL;
  g_autoptr(GstSample) s = NULL;
  GstVideoInfo info;
  GstVideoFrame vf;
  gsize len;

  f->dir = tu_make_tmpdir("vhostgpusrc-XXXXXX");
  f->path = g_build_filename(f->dir, "gpu.sock", NULL);
  desc = g_strdup_printf("vhostgpusrc name=src socket-path=%s virgl=true qemu-display=false "
                         "width=%u height=%u ! appsink name=sink sync=false",
                         f->path, W, H);
  f->pipeline = gst_parse_launch(desc, &error);
  g_assert_no_error(error);
  f->src = gst_bin_get_by_name(GST_BIN(f->pipeline), "src");
  f->sink = gst_bin_get_by_name(GST_BIN(f->pipeline), "sink");
  f->bus = gst_element_get_bus(f->pipeline);
  if (gst_element_set_state(f->pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    g_autoptr(GstMessage) m = gst_bus_pop_filtered(f->bus, GST_MESSAGE_ERROR);
    g_autoptr(GError) why = NULL;

    g_assert_nonnull(m);
    gst_message_parse_error(m, &why, NULL);
    g_test_skip_printf("the renderer cannot start here: %s", why->message);
    teardown(f, NULL);
    return;
  }
  f->fe = frontend_new_with(f, BIT(VIRTIO_GPU_F_VIRGL));
  g_assert_true(vhu_frontend_get_backend_features(f->fe) & BIT(VIRTIO_GPU_F_VIRGL));

  cc.hdr.ctx_id = 1;
  cc.nlen = 4;
  memcpy(cc.debug_name, "test", 4);
  g_assert_cmphex(CMD(f->fe, cc), ==, VIRTIO_GPU_RESP_OK_NODATA);
  e = (struct virtio_gpu_mem_entry){ vhu_frontend_alloc(f->fe, W * H * 4, 4096), W * H * 4, 0 };
  g_assert_cmphex(e.addr, !=, G_MAXUINT64);
  att = gpu_attach(1, &e, 1, 1, &len);
  g_assert_cmphex(CMD(f->fe, c3), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(gpu_cmd(f->fe, att, len, NULL, 0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  ca.hdr.ctx_id = 1;
  ca.resource_id = 1;
  g_assert_cmphex(CMD(f->fe, ca), ==, VIRTIO_GPU_RESP_OK_NODATA);
  g_assert_cmphex(submit_clear(f->fe, 1, 0x20, 0x80, 0xe0), ==, VIRTIO_GPU_RESP_OK_NODATA);
  {
    struct virtio_gpu_set_scanout so = gpu_set_scanout(0, 1, 0, 0, W, H);

    g_assert_cmphex(CMD(f->fe, so), ==, VIRTIO_GPU_RESP_OK_NODATA);
  }
  g_assert_cmphex(CMD(f->fe, fl), ==, VIRTIO_GPU_RESP_OK_NODATA);

  s = pull(f);
  g_assert_true(gst_video_info_from_caps(&info, gst_sample_get_caps(s)));
  g_assert_cmpint(GST_VIDEO_INFO_FORMAT(&info), ==, GST_VIDEO_FORMAT_BGRx);
  g_assert_cmpuint(GST_VIDEO_INFO_WIDTH(&info), ==, W);
  g_assert_cmpuint(GST_VIDEO_INFO_HEIGHT(&info), ==, H);
  g_assert_true(gst_video_frame_map(&vf, &info, gst_sample_get_buffer(s), GST_MAP_READ));
  for (guint y = 0; y < H; y++)
    for (guint x = 0; x < W; x++) {
      const guint8 *p = (const guint8 *)GST_VIDEO_FRAME_PLANE_DATA(&vf, 0)
                        + (gsize)y * GST_VIDEO_FRAME_PLANE_STRIDE(&vf, 0) + x * 4;

      if (p[0] != 0xe0 || p[1] != 0x80 || p[2] != 0x20)
        g_error("pixel %u,%u is %02x%02x%02x, expected 2080e0", x, y, p[2], p[1], p[0]);
    }
  gst_video_frame_unmap(&vf);
  teardown(f, NULL);
}

int
main(int argc, char **argv)
{
  int ret;

  g_test_init(&argc, &argv, NULL);
  g_test_log_set_fatal_handler(fatal_handler, NULL);
  gst_init(&argc, &argv);
  g_test_add_func("/vhostgpusrc/properties", test_properties);
#define ADD(name, fn, data, su) g_test_add("/vhostgpusrc/" name, Fixture, data, su, fn, teardown)
  ADD("formats", test_formats, NULL, setup);
  ADD("mode-change", test_mode_change, NULL, setup);
  ADD("damage", test_damage, NULL, setup);
  ADD("cursor-meta", test_cursor_meta, NULL, setup);
  ADD("cursor-drawn", test_cursor_drawn, "qemu-display=false draw-cursor=true", setup);
  ADD("coalesce", test_coalesce, NULL, setup_blocked);
  ADD("hold", test_hold, NULL, setup);
  ADD("reconnect", test_reconnect, NULL, setup);
  ADD("restart", test_restart, NULL, setup);
  ADD("eos-latency", test_eos_latency, "qemu-display=false max-framerate=50", setup);
  ADD("keepalive", test_keepalive, "qemu-display=false keepalive-time=30", setup);
  ADD("qemu-display", test_qemu_display, "qemu-display=true", setup);
  ADD("second-scanout", test_second_scanout, "qemu-display=false scanouts=2 scanout=1", setup);
  ADD("blob-zero-copy", test_blob_zero_copy, NULL, setup_blob);
  ADD("blob-lifetime", test_blob_lifetime, NULL, setup_blob);
  ADD("blob-split", test_blob_split, NULL, setup_blob);
  ADD("blob-with-display", test_blob_with_display, "qemu-display=true", setup_blob);
  g_test_add_func("/vhostgpusrc/dmabuf", test_dmabuf);
  g_test_add_func("/vhostgpusrc/blob-dmabuf", test_blob_dmabuf);
  g_test_add_func("/vhostgpusrc/qemu-dmabuf", test_qemu_dmabuf);
  g_test_add_func("/vhostgpusrc/fd", test_fd);
  g_test_add_func("/vhostgpusrc/harness", test_harness);
  g_test_add_func("/vhostgpusrc/daemon-pipeline", test_daemon_pipeline);
  g_test_add_func("/vhostgpusrc/virgl", test_virgl);
  ret = g_test_run();
  gst_deinit();
  return ret;
}
