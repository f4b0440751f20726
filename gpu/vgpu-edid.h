/* vgpu-edid.h: an EDID 1.4 base block describing one display mode. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define VGPU_EDID_SIZE 128u
/* Largest side a base-block detailed timing can express. */
#define VGPU_EDID_MAX_SIDE 4095u

/* Fills @edid with a valid base block (header, checksum, sRGB colour, a
 * detailed timing for @width x @height at 60 Hz with reduced blanking, the
 * monitor name "gst-vhost" and serial @serial).  Sides above
 * VGPU_EDID_MAX_SIDE are clamped. */
void vgpu_edid_generate(guint32 width, guint32 height, guint32 serial, guint8 edid[VGPU_EDID_SIZE]);

G_END_DECLS
