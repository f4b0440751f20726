/* vgpu-image.h: host pixel storage of 2D resources.
 *
 * Every image lives in its own sealed memfd (so a GStreamer element can later
 * pass it downstream as fd memory without a copy) and is charged, page
 * rounded, against a VgpuHostmem budget before anything is allocated; the
 * charge is credited back when the last reference goes.
 *
 * Readers: a display sink that will read pixels after the device returned
 * (e.g. a socket writer thread) brackets that with begin_read/end_read.  The
 * device does not write into a busy image; when the last reader leaves, the
 * image's idle notify fires (from the reader's thread) so the device can
 * resume.  All functions are thread-safe. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define VGPU_IMAGE_ERROR (vgpu_image_error_quark())
GQuark vgpu_image_error_quark(void);
typedef enum {
  VGPU_IMAGE_ERROR_INVALID, /* unknown format, zero or too large size */
  VGPU_IMAGE_ERROR_BUDGET,  /* would exceed the host memory budget */
  VGPU_IMAGE_ERROR_FAILED,  /* memfd, ftruncate or mmap failed */
} VgpuImageError;

typedef struct _VgpuHostmem VgpuHostmem;

VgpuHostmem *vgpu_hostmem_new(guint64 limit);
VgpuHostmem *vgpu_hostmem_ref(VgpuHostmem *mem);
void vgpu_hostmem_unref(VgpuHostmem *mem);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VgpuHostmem, vgpu_hostmem_unref)
guint64 vgpu_hostmem_get_used(VgpuHostmem *mem);
guint64 vgpu_hostmem_get_limit(VgpuHostmem *mem);
/* Reserves @bytes; FALSE (nothing reserved) when the budget would be exceeded. */
gboolean vgpu_hostmem_charge(VgpuHostmem *mem, guint64 bytes);
void vgpu_hostmem_credit(VgpuHostmem *mem, guint64 bytes);

/* A function called from any thread; disarm guarantees it is neither running
 * nor called again once disarm returns. */
typedef struct _VgpuNotify VgpuNotify;
VgpuNotify *vgpu_notify_new(void (*func)(gpointer data), gpointer data);
VgpuNotify *vgpu_notify_ref(VgpuNotify *notify);
void vgpu_notify_unref(VgpuNotify *notify);
void vgpu_notify_fire(VgpuNotify *notify);
void vgpu_notify_disarm(VgpuNotify *notify);

typedef struct _VgpuImage VgpuImage;
struct _VgpuImage {
  /* read-only */
  guint32 format; /* VIRTIO_GPU_FORMAT_* */
  guint32 width, height;
  guint32 stride; /* width * 4 */
  guint8 *data;   /* stride * height bytes, zeroed at creation */
  gsize size;     /* mapped (page rounded) size of the memfd */
  int fd;         /* the memfd (owned by the image) */
  /* private */
  gint refcount;
  gint readers;
  guint64 charged;
  VgpuHostmem *hostmem;
  VgpuNotify *idle_notify;
};

/* New zeroed image, charged against @mem. */
VgpuImage *vgpu_image_new(VgpuHostmem *mem, guint32 format, guint32 width, guint32 height,
                          GError **error);
VgpuImage *vgpu_image_ref(VgpuImage *image);
void vgpu_image_unref(VgpuImage *image);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VgpuImage, vgpu_image_unref)
/* Bytes an image of that size would be charged; FALSE on overflow. */
gboolean vgpu_image_size_for(guint32 width, guint32 height, guint64 *charge);

void vgpu_image_set_idle_notify(VgpuImage *image, VgpuNotify *notify);
void vgpu_image_begin_read(VgpuImage *image);
void vgpu_image_end_read(VgpuImage *image);
gboolean vgpu_image_is_busy(VgpuImage *image);

G_END_DECLS
