/* vgpu-format.c: format table and pixman conversions. */
#include "vgpu-format.h"

#include <linux/virtio_gpu.h>

typedef struct {
  guint32 format;
  const char *name;
  pixman_format_code_t pixman;
} FormatInfo;

/* virtio names are byte orders; pixman's are native words. */
#if G_BYTE_ORDER == G_LITTLE_ENDIAN
#define PM(le, be) (le)
#else
#define PM(le, be) (be)
#endif

static const FormatInfo formats[] = {
  { VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, "B8G8R8A8", PM(PIXMAN_a8r8g8b8, PIXMAN_b8g8r8a8) },
  { VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, "B8G8R8X8", PM(PIXMAN_x8r8g8b8, PIXMAN_b8g8r8x8) },
  { VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, "A8R8G8B8", PM(PIXMAN_b8g8r8a8, PIXMAN_a8r8g8b8) },
  { VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM, "X8R8G8B8", PM(PIXMAN_b8g8r8x8, PIXMAN_x8r8g8b8) },
  { VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, "R8G8B8A8", PM(PIXMAN_a8b8g8r8, PIXMAN_r8g8b8a8) },
  { VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM, "X8B8G8R8", PM(PIXMAN_r8g8b8x8, PIXMAN_x8b8g8r8) },
  { VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM, "A8B8G8R8", PM(PIXMAN_r8g8b8a8, PIXMAN_a8b8g8r8) },
  { VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM, "R8G8B8X8", PM(PIXMAN_x8b8g8r8, PIXMAN_r8g8b8x8) },
};

static const FormatInfo *
find_format(guint32 format)
{
  for (guint i = 0; i < G_N_ELEMENTS(formats); i++) {
    if (formats[i].format == format)
      return &formats[i];
  }
  return NULL;
}

gboolean
vgpu_format_is_valid(guint32 format)
{
  return find_format(format) != NULL;
}

pixman_format_code_t
vgpu_format_to_pixman(guint32 format)
{
  const FormatInfo *info = find_format(format);

  return info ? info->pixman : 0;
}

const char *
vgpu_format_name(guint32 format)
{
  const FormatInfo *info = find_format(format);

  return info ? info->name : "unknown";
}

gboolean
vgpu_format_is_xrgb(guint32 format)
{
  pixman_format_code_t pm = vgpu_format_to_pixman(format);

  return pm == PIXMAN_x8r8g8b8 || pm == PIXMAN_a8r8g8b8;
}

gboolean
vgpu_format_has_alpha(guint32 format)
{
  pixman_format_code_t pm = vgpu_format_to_pixman(format);

  return pm != 0 && PIXMAN_FORMAT_A(pm) > 0;
}

void
vgpu_format_convert(guint32 src_format, const guint8 *src, guint src_width, guint src_height,
                    guint src_stride, guint src_x, guint src_y, guint width, guint height,
                    pixman_format_code_t dst_pixman, guint8 *dst, guint dst_stride)
{
  pixman_image_t *s, *d;

  g_return_if_fail(vgpu_format_is_valid(src_format));
  /* pixman only reads the source; the cast drops const for its API. */
  s = pixman_image_create_bits(vgpu_format_to_pixman(src_format), (int)src_width, (int)src_height,
                               (uint32_t *)(void *)src, (int)src_stride);
  d = pixman_image_create_bits(dst_pixman, (int)width, (int)height, (uint32_t *)(void *)dst,
                               (int)dst_stride);
  pixman_image_composite32(PIXMAN_OP_SRC, s, NULL, d, (int32_t)src_x, (int32_t)src_y, 0, 0, 0, 0,
                           (int32_t)width, (int32_t)height);
  pixman_image_unref(d);
  pixman_image_unref(s);
}

gboolean
vgpu_rect_inside(const VgpuRect *r, guint32 w, guint32 h)
{
  guint64 right = (guint64)r->x + r->width;
  guint64 bottom = (guint64)r->y + r->height;

  return right <= w && bottom <= h;
}

gboolean
vgpu_rect_intersect(const VgpuRect *a, const VgpuRect *b, VgpuRect *out)
{
  guint64 x1 = MAX(a->x, b->x);
  guint64 y1 = MAX(a->y, b->y);
  guint64 x2 = MIN((guint64)a->x + a->width, (guint64)b->x + b->width);
  guint64 y2 = MIN((guint64)a->y + a->height, (guint64)b->y + b->height);

  if (x2 <= x1 || y2 <= y1) {
    *out = (VgpuRect){ 0, 0, 0, 0 };
    return FALSE;
  }
  *out = (VgpuRect){ (guint32)x1, (guint32)y1, (guint32)(x2 - x1), (guint32)(y2 - y1) };
  return TRUE;
}

void
vgpu_rect_union(const VgpuRect *a, const VgpuRect *b, VgpuRect *out)
{
  guint64 x1, y1, x2, y2;

  if (a->width == 0 || a->height == 0) {
    *out = *b;
    return;
  }
  if (b->width == 0 || b->height == 0) {
    *out = *a;
    return;
  }
  x1 = MIN(a->x, b->x);
  y1 = MIN(a->y, b->y);
  x2 = MAX((guint64)a->x + a->width, (guint64)b->x + b->width);
  y2 = MAX((guint64)a->y + a->height, (guint64)b->y + b->height);
  /* Both inputs lie in a u32 space, so the union's extent fits too only if
   * callers keep rectangles inside their surface; clamp defensively. */
  *out = (VgpuRect){ (guint32)x1, (guint32)y1, (guint32)MIN(x2 - x1, G_MAXUINT32),
                     (guint32)MIN(y2 - y1, G_MAXUINT32) };
}
