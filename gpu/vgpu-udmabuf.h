/* vgpu-udmabuf.h: host memory of the device as dmabufs, through
 * /dev/udmabuf.
 *
 * udmabuf turns pages of memfds sealed against shrinking into a dmabuf
 * that pins them (the dmabuf stays valid after the memfd's other users
 * are gone).  The device's images are such memfds; guest memory is when
 * the frontend seals it (QEMU's memfd backend does, vhu-mem.h keeps the
 * fds).  Where /dev/udmabuf is missing (most hosts: it is a module that is
 * rarely loaded, or not accessible) nothing is exported and the callers
 * keep their copying paths; that is said once (INFO).
 *
 * Threads: every function may be called from any thread. */
#pragma once

#include <glib.h>

#include "vgpu-backing.h"
#include "vgpu-image.h"

G_BEGIN_DECLS

/* /dev/udmabuf could be opened (opened once, on first use). */
gboolean vgpu_udmabuf_available(void);

/* A new dmabuf fd (close-on-exec, the caller's) over @n file pieces, each
 * page-aligned in offset and length, or -1 with @error. */
int vgpu_udmabuf_create(const VhuMemFdPiece *pieces, guint n, GError **error);
/* The dmabuf of all of @image's memfd, or -1 with @error. */
int vgpu_udmabuf_from_image(const VgpuImage *image, GError **error);
/* The dmabuf of the @len bytes at @offset of @backing, whose pages are
 * exported whole: @offset must be page-aligned and the range rounded up to
 * a page must lie in the backing; -1 with @error otherwise, or when some
 * of it is not in sealed guest memory or not page-aligned in its file. */
int vgpu_udmabuf_from_backing(const VgpuBacking *backing, guint64 offset, guint64 len,
                              GError **error);

/* The DRM fourcc of a virtio-gpu format's memory layout, or 0. */
gint32 vgpu_format_to_drm_fourcc(guint32 format);

G_END_DECLS
