/* vgpu-format.h: the eight virtio-gpu 2D formats and conversions between them.
 *
 * virtio names give the byte order in memory (B8G8R8X8: bytes B, G, R, X).
 * pixman names describe a native-endian 32-bit word, so on a little-endian
 * host virtio B8G8R8X8 is pixman x8r8g8b8, the format of the vhost-user-gpu
 * display protocol. */
#pragma once

#include <glib.h>
#include <pixman.h>

G_BEGIN_DECLS

typedef struct {
  guint32 x, y, width, height;
} VgpuRect;

/* TRUE when @format is one of the eight 2D formats. */
gboolean vgpu_format_is_valid(guint32 format);
/* The matching pixman format; 0 for an unknown format. */
pixman_format_code_t vgpu_format_to_pixman(guint32 format);
/* "B8G8R8X8" etc.; "unknown" for an unknown format. */
const char *vgpu_format_name(guint32 format);
/* TRUE when the format's memory layout is the display protocol's X8R8G8B8
 * (ignoring alpha): pixels can be sent without conversion. */
gboolean vgpu_format_is_xrgb(guint32 format);
/* TRUE when the format carries alpha. */
gboolean vgpu_format_has_alpha(guint32 format);

/* Converts @width x @height pixels at (@src_x, @src_y) of a @src_format
 * image (@src, @src_stride) into @dst (stride @dst_stride) as @dst_pixman. */
void vgpu_format_convert(guint32 src_format, const guint8 *src, guint src_width, guint src_height,
                         guint src_stride, guint src_x, guint src_y, guint width, guint height,
                         pixman_format_code_t dst_pixman, guint8 *dst, guint dst_stride);

/* Rectangle helpers, overflow-safe.  TRUE when @r lies inside a @w x @h area. */
gboolean vgpu_rect_inside(const VgpuRect *r, guint32 w, guint32 h);
/* Intersection; FALSE (and *out zeroed) when empty. */
gboolean vgpu_rect_intersect(const VgpuRect *a, const VgpuRect *b, VgpuRect *out);
/* Smallest rectangle holding both (empty inputs are ignored). */
void vgpu_rect_union(const VgpuRect *a, const VgpuRect *b, VgpuRect *out);

G_END_DECLS
