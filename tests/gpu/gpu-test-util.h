/* gpu-test-util.h: building virtio-gpu requests for the tests. */
#pragma once

#include <glib.h>
#include <linux/virtio_gpu.h>
#include <string.h>

#define GPU_HDR(t) ((struct virtio_gpu_ctrl_hdr){ .type = (t) })

static inline struct virtio_gpu_resource_create_2d
gpu_create_2d(guint32 id, guint32 format, guint32 w, guint32 h)
{
  return (struct virtio_gpu_resource_create_2d){ GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_2D), id,
                                                 format, w, h };
}

static inline struct virtio_gpu_resource_unref
gpu_unref(guint32 id)
{
  return (struct virtio_gpu_resource_unref){ GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_UNREF), id, 0 };
}

static inline struct virtio_gpu_set_scanout
gpu_set_scanout(guint32 scanout, guint32 id, guint32 x, guint32 y, guint32 w, guint32 h)
{
  return (struct virtio_gpu_set_scanout){
    GPU_HDR(VIRTIO_GPU_CMD_SET_SCANOUT), { x, y, w, h }, scanout, id
  };
}

static inline struct virtio_gpu_resource_flush
gpu_flush(guint32 id, guint32 x, guint32 y, guint32 w, guint32 h)
{
  return (struct virtio_gpu_resource_flush){
    GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_FLUSH), { x, y, w, h }, id, 0
  };
}

static inline struct virtio_gpu_transfer_to_host_2d
gpu_transfer(guint32 id, guint32 x, guint32 y, guint32 w, guint32 h, guint64 offset)
{
  return (struct virtio_gpu_transfer_to_host_2d){
    GPU_HDR(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D), { x, y, w, h }, offset, id, 0
  };
}

static inline struct virtio_gpu_resource_detach_backing
gpu_detach(guint32 id)
{
  return (struct virtio_gpu_resource_detach_backing){
    GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING), id, 0
  };
}

static inline struct virtio_gpu_cmd_get_edid
gpu_get_edid(guint32 scanout)
{
  return (struct virtio_gpu_cmd_get_edid){ GPU_HDR(VIRTIO_GPU_CMD_GET_EDID), scanout, 0 };
}

static inline struct virtio_gpu_update_cursor
gpu_cursor(guint32 type, guint32 scanout, guint32 x, guint32 y, guint32 id, guint32 hx, guint32 hy)
{
  return (struct virtio_gpu_update_cursor){ GPU_HDR(type), { scanout, x, y, 0 }, id, hx, hy, 0 };
}

/* ATTACH_BACKING with its entries appended; free with g_free. */
static inline guint8 *
gpu_attach(guint32 id, const struct virtio_gpu_mem_entry *ents, guint32 n, guint32 nr_entries,
           gsize *len)
{
  struct virtio_gpu_resource_attach_backing a
      = { GPU_HDR(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING), id, nr_entries };
  guint8 *buf = g_malloc0(sizeof a + n * sizeof *ents);

  memcpy(buf, &a, sizeof a);
  memcpy(buf + sizeof a, ents, n * sizeof *ents);
  *len = sizeof a + n * sizeof *ents;
  return buf;
}

/* Writes one pixel of @format with the given channel values at @p. */
static inline void
gpu_put_pixel(guint8 *p, guint32 format, guint8 r, guint8 g, guint8 b, guint8 a)
{
  switch (format) {
    case VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM:
    case VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM:
      p[0] = b, p[1] = g, p[2] = r, p[3] = a;
      break;
    case VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM:
    case VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM:
      p[0] = a, p[1] = r, p[2] = g, p[3] = b;
      break;
    case VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM:
    case VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM:
      p[0] = r, p[1] = g, p[2] = b, p[3] = a;
      break;
    case VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM:
    case VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM:
      p[0] = a, p[1] = b, p[2] = g, p[3] = r;
      break;
    default:
      g_assert_not_reached();
  }
}

static const guint32 gpu_all_formats[] = {
  VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
  VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
  VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
  VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
};

/* A deterministic pattern: pixel (x, y) of frame @seed. */
static inline void
gpu_pattern(guint x, guint y, guint seed, guint8 *r, guint8 *g, guint8 *b)
{
  *r = (guint8)(x * 7 + seed);
  *g = (guint8)(y * 13 + seed * 3);
  *b = (guint8)((x ^ y) + seed * 5);
}

/* Checks an EDID base block: header, checksum, detailed timing size. */
static inline void
gpu_check_edid(const guint8 *e, guint w, guint h)
{
  static const guint8 header[8] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0 };
  guint8 sum = 0;

  g_assert_cmpmem(e, 8, header, 8);
  for (guint i = 0; i < 128; i++)
    sum += e[i];
  g_assert_cmpuint(sum, ==, 0);
  g_assert_cmpuint(e[18], ==, 1);
  g_assert_cmpuint((guint)e[54] | (guint)e[55] << 8, !=, 0); /* pixel clock */
  g_assert_cmpuint((guint)e[56] | (guint)(e[58] >> 4) << 8, ==, w);
  g_assert_cmpuint((guint)e[59] | (guint)(e[61] >> 4) << 8, ==, h);
}
