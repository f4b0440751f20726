/* vgpu-image.c: memfd-backed pixel storage and the host memory budget. */
#include "vgpu-image.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vgpu-format.h"

GQuark
vgpu_image_error_quark(void)
{
  return g_quark_from_static_string("vgpu-image-error-quark");
}

/* Largest side we accept: 16384 * 4 bytes still fits a u32 stride with room. */
#define MAX_SIDE 16384u

struct _VgpuHostmem {
  gint refcount;
  GMutex lock;
  guint64 limit;
  guint64 used;
};

VgpuHostmem *
vgpu_hostmem_new(guint64 limit)
{
  VgpuHostmem *mem = g_new0(VgpuHostmem, 1);

  mem->refcount = 1;
  g_mutex_init(&mem->lock);
  mem->limit = limit;
  return mem;
}

VgpuHostmem *
vgpu_hostmem_ref(VgpuHostmem *mem)
{
  g_atomic_int_inc(&mem->refcount);
  return mem;
}

void
vgpu_hostmem_unref(VgpuHostmem *mem)
{
  if (!mem || !g_atomic_int_dec_and_test(&mem->refcount))
    return;
  g_mutex_clear(&mem->lock);
  g_free(mem);
}

guint64
vgpu_hostmem_get_used(VgpuHostmem *mem)
{
  guint64 used;

  g_mutex_lock(&mem->lock);
  used = mem->used;
  g_mutex_unlock(&mem->lock);
  return used;
}

guint64
vgpu_hostmem_get_limit(VgpuHostmem *mem)
{
  return mem->limit;
}

gboolean
vgpu_hostmem_charge(VgpuHostmem *mem, guint64 bytes)
{
  guint64 total;
  gboolean ok;

  g_mutex_lock(&mem->lock);
  ok = g_uint64_checked_add(&total, mem->used, bytes) && total <= mem->limit;
  if (ok)
    mem->used = total;
  g_mutex_unlock(&mem->lock);
  return ok;
}

void
vgpu_hostmem_credit(VgpuHostmem *mem, guint64 bytes)
{
  g_mutex_lock(&mem->lock);
  g_warn_if_fail(bytes <= mem->used);
  mem->used -= MIN(bytes, mem->used);
  g_mutex_unlock(&mem->lock);
}

struct _VgpuNotify {
  gint refcount;
  GMutex lock;
  void (*func)(gpointer data);
  gpointer data;
};

VgpuNotify *
vgpu_notify_new(void (*func)(gpointer data), gpointer data)
{
  VgpuNotify *notify = g_new0(VgpuNotify, 1);

  notify->refcount = 1;
  g_mutex_init(&notify->lock);
  notify->func = func;
  notify->data = data;
  return notify;
}

VgpuNotify *
vgpu_notify_ref(VgpuNotify *notify)
{
  g_atomic_int_inc(&notify->refcount);
  return notify;
}

void
vgpu_notify_unref(VgpuNotify *notify)
{
  if (!notify || !g_atomic_int_dec_and_test(&notify->refcount))
    return;
  g_mutex_clear(&notify->lock);
  g_free(notify);
}

void
vgpu_notify_fire(VgpuNotify *notify)
{
  g_mutex_lock(&notify->lock);
  if (notify->func)
    notify->func(notify->data);
  g_mutex_unlock(&notify->lock);
}

void
vgpu_notify_disarm(VgpuNotify *notify)
{
  g_mutex_lock(&notify->lock);
  notify->func = NULL;
  notify->data = NULL;
  g_mutex_unlock(&notify->lock);
}

gboolean
vgpu_image_size_for(guint32 width, guint32 height, guint64 *charge)
{
  guint64 page = (guint64)sysconf(_SC_PAGESIZE);
  guint64 bytes, rounded;

  if (width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE)
    return FALSE;
  if (!g_uint64_checked_mul(&bytes, (guint64)width * 4u, height))
    return FALSE;
  if (!g_uint64_checked_add(&rounded, bytes, page - 1))
    return FALSE;
  *charge = rounded / page * page;
  return TRUE;
}

VgpuImage *
vgpu_image_new(VgpuHostmem *mem, guint32 format, guint32 width, guint32 height, GError **error)
{
  g_autoptr(VgpuImage) image = NULL;
  guint64 charge;
  void *data;
  int fd;

  if (!vgpu_format_is_valid(format) || !vgpu_image_size_for(width, height, &charge)
      || charge > G_MAXSIZE) {
    g_set_error(error, VGPU_IMAGE_ERROR, VGPU_IMAGE_ERROR_INVALID,
                "invalid image: format %u, %ux%u", format, width, height);
    return NULL;
  }
  if (!vgpu_hostmem_charge(mem, charge)) {
    g_set_error(error, VGPU_IMAGE_ERROR, VGPU_IMAGE_ERROR_BUDGET,
                "%ux%u image (%" G_GUINT64_FORMAT " bytes) exceeds the host memory budget "
                "(%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " bytes used)",
                width, height, charge, vgpu_hostmem_get_used(mem), vgpu_hostmem_get_limit(mem));
    return NULL;
  }
  image = g_new0(VgpuImage, 1);
  image->refcount = 1;
  image->fd = -1;
  image->hostmem = vgpu_hostmem_ref(mem);
  image->charged = charge;
  image->format = format;
  image->width = width;
  image->height = height;
  image->stride = width * 4u;
  image->size = (gsize)charge;

  fd = memfd_create("vgpu-resource", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ftruncate(fd, (off_t)image->size) < 0) {
    int err = errno;

    if (fd >= 0)
      close(fd);
    g_set_error(error, VGPU_IMAGE_ERROR, VGPU_IMAGE_ERROR_FAILED, "memfd for %ux%u image: %s",
                width, height, g_strerror(err));
    return NULL;
  }
  image->fd = fd;
  /* Consumers of the fd may rely on its size never changing. */
  (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  data = mmap(NULL, image->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) {
    g_set_error(error, VGPU_IMAGE_ERROR, VGPU_IMAGE_ERROR_FAILED, "mmap of %ux%u image: %s", width,
                height, g_strerror(errno));
    return NULL;
  }
  image->data = data;
  return g_steal_pointer(&image);
}

VgpuImage *
vgpu_image_ref(VgpuImage *image)
{
  g_atomic_int_inc(&image->refcount);
  return image;
}

void
vgpu_image_unref(VgpuImage *image)
{
  if (!image || !g_atomic_int_dec_and_test(&image->refcount))
    return;
  g_warn_if_fail(g_atomic_int_get(&image->readers) == 0);
  if (image->data)
    munmap(image->data, image->size);
  if (image->fd >= 0)
    close(image->fd);
  vgpu_hostmem_credit(image->hostmem, image->charged);
  vgpu_hostmem_unref(image->hostmem);
  vgpu_notify_unref(image->idle_notify);
  g_free(image);
}

void
vgpu_image_set_idle_notify(VgpuImage *image, VgpuNotify *notify)
{
  VgpuNotify *old = image->idle_notify;

  image->idle_notify = notify ? vgpu_notify_ref(notify) : NULL;
  vgpu_notify_unref(old);
}

void
vgpu_image_begin_read(VgpuImage *image)
{
  g_atomic_int_inc(&image->readers);
}

void
vgpu_image_end_read(VgpuImage *image)
{
  g_return_if_fail(g_atomic_int_get(&image->readers) > 0);
  if (g_atomic_int_dec_and_test(&image->readers) && image->idle_notify)
    vgpu_notify_fire(image->idle_notify);
}

gboolean
vgpu_image_is_busy(VgpuImage *image)
{
  return g_atomic_int_get(&image->readers) > 0;
}
