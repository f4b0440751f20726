/* vgpu-udmabuf.c: host memory as dmabufs through /dev/udmabuf. */
#include "vgpu-udmabuf.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <linux/udmabuf.h>
#include <linux/virtio_gpu.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vhu-display-proto.h"

static gpointer
udmabuf_open(gpointer data)
{
  int fd = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);

  if (fd < 0)
    g_info("/dev/udmabuf: %s; nothing is exported as dmabuf", g_strerror(errno));
  return GINT_TO_POINTER(fd + 1);
}

static int
udmabuf_device(void)
{
  static GOnce once = G_ONCE_INIT;

  return GPOINTER_TO_INT(g_once(&once, udmabuf_open, NULL)) - 1;
}

gboolean
vgpu_udmabuf_available(void)
{
  return udmabuf_device() >= 0;
}

static guint64
page_size(void)
{
  return (guint64)sysconf(_SC_PAGESIZE);
}

int
vgpu_udmabuf_create(const VhuMemFdPiece *pieces, guint n, GError **error)
{
  g_autofree struct udmabuf_create_list *list = NULL;
  guint64 page = page_size();
  int fd;

  if (udmabuf_device() < 0 || n == 0) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                        n == 0 ? "nothing to export" : "no /dev/udmabuf");
    return -1;
  }
  list = g_malloc0(sizeof *list + (gsize)n * sizeof(struct udmabuf_create_item));
  list->flags = UDMABUF_FLAGS_CLOEXEC;
  list->count = n;
  for (guint i = 0; i < n; i++) {
    if (pieces[i].offset % page != 0 || pieces[i].len % page != 0 || pieces[i].len == 0) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "piece %u (offset 0x%" G_GINT64_MODIFIER "x, 0x%" G_GINT64_MODIFIER
                  "x bytes) is not whole pages",
                  i, pieces[i].offset, pieces[i].len);
      return -1;
    }
    list->list[i] = (struct udmabuf_create_item){
      .memfd = (guint32)pieces[i].fd,
      .offset = pieces[i].offset,
      .size = pieces[i].len,
    };
  }
  fd = ioctl(udmabuf_device(), UDMABUF_CREATE_LIST, list);
  if (fd < 0) {
    int err = errno;

    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                "UDMABUF_CREATE_LIST (%u pieces): %s", n, g_strerror(err));
  }
  return fd;
}

int
vgpu_udmabuf_from_image(const VgpuImage *image, GError **error)
{
  VhuMemFdPiece piece = { image->fd, 0, image->size };

  return vgpu_udmabuf_create(&piece, 1, error);
}

int
vgpu_udmabuf_from_backing(const VgpuBacking *backing, guint64 offset, guint64 len, GError **error)
{
  g_autoptr(GArray) pieces = g_array_new(FALSE, FALSE, sizeof(VhuMemFdPiece));
  guint64 page = page_size(), end;

  if (offset % page != 0 || !g_uint64_checked_add(&end, offset, len)
      || !g_uint64_checked_add(&end, end, page - 1) || (end = end / page * page) > G_MAXSIZE
      || end > vgpu_backing_get_size(backing)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "the rows are not whole pages of the blob");
    return -1;
  }
  if (!vgpu_backing_append_fd_pieces(backing, offset, (gsize)(end - offset), pieces)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                        "the guest memory is not sealed against shrinking");
    return -1;
  }
  return vgpu_udmabuf_create((const VhuMemFdPiece *)(void *)pieces->data, pieces->len, error);
}

gint32
vgpu_format_to_drm_fourcc(guint32 format)
{
  switch (format) {
    case VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM:
      return VHU_DISPLAY_FOURCC_ARGB8888;
    case VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM:
      return VHU_DISPLAY_FOURCC_XRGB8888;
    case VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM:
      return VHU_DISPLAY_FOURCC_BGRA8888;
    case VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM:
      return VHU_DISPLAY_FOURCC_BGRX8888;
    case VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM:
      return VHU_DISPLAY_FOURCC_ABGR8888;
    case VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM:
      return VHU_DISPLAY_FOURCC_RGBX8888;
    case VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM:
      return VHU_DISPLAY_FOURCC_RGBA8888;
    case VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM:
      return VHU_DISPLAY_FOURCC_XBGR8888;
    default:
      return 0;
  }
}
