/* fuzz-message.c: a hostile frontend against the backend's message handler.
 *
 * The input is a sequence of messages fed to vhu_backend_handle_message of a
 * backend without queue thread (so a run is deterministic), serving one end
 * of a socketpair whose other end is drained after every message.  The
 * device is a null echo device with two queues and a 16-byte config space.
 *
 * Record layout (repeated until the input ends or the backend drops the
 * connection):
 *   [0]     request id (b % 48)
 *   [1]     flags: bit 0 NEED_REPLY, 1 wrong version bits, 2 kick every
 *           queue afterwards, 3 REPLY bit set
 *   [2]     fds: low nibble count (% 9), high nibble kind: 0-7 eventfd,
 *           8-9 memfd, 10-11 sealed memfd, 12-13 socket, 14-15 pipe
 *   [3..4]  payload size (little endian, capped by what is left and by
 *           VHU_MAX_PAYLOAD)
 *   [5..]   payload
 *
 * Memfds are 64 KiB and hold the input bytes repeated, so rings and buffers
 * placed there by the messages contain fuzzed data. */
#include <fcntl.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vhu-backend-private.h"

#define MEMFD_SIZE  0x10000u
#define RECORD_HDR  5u
#define N_QUEUES    2u
#define CONFIG_SIZE 16u

int LLVMFuzzerTestOneInput(const guint8 *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

typedef struct {
  VhuBackend *backend;
  int kept_fd; /* from request 33, closed on reset */
} FuzzDevice;

static void
fuzz_get_config(gpointer dev, guint8 *config, gsize size)
{
  for (gsize i = 0; i < size; i++)
    config[i] = (guint8)i;
}

static gboolean
fuzz_set_config(gpointer dev, guint32 offset, const guint8 *bytes, gsize size, guint32 flags,
                GError **error)
{
  if (size > 0 && bytes[0] == 0xff) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED, "refused");
    return FALSE;
  }
  return TRUE;
}

static void
fuzz_queue_kick(gpointer data, VhuBackend *backend, guint qidx)
{
  VhuVring *vring = vhu_backend_get_vring(backend, qidx);
  VhuElem *elem;
  guint n = 0;

  /* Bounded: a ring can hold at most 1024 requests anyway. */
  while (n++ < 2048 && (elem = vhu_vring_pop(vring, NULL)) != NULL) {
    guint8 buf[256];
    gsize got = vhu_elem_read(elem, 0, buf, MIN(sizeof buf, elem->in_len));

    vhu_elem_write(elem, 0, buf, got);
    vhu_vring_push(vring, elem, (guint32)got);
  }
  vhu_vring_notify(vring);
}

static gboolean
fuzz_device_request(gpointer data, guint32 request, const guint8 *payload, gsize size, int *fds,
                    guint n_fds, GError **error)
{
  FuzzDevice *dev = data;

  if (request != VHU_GPU_SET_SOCKET || n_fds != 1) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "unknown");
    return FALSE;
  }
  if (dev->kept_fd >= 0)
    close(dev->kept_fd);
  dev->kept_fd = fds[0];
  fds[0] = -1;
  return TRUE;
}

static void
fuzz_reset(gpointer data)
{
  FuzzDevice *dev = data;

  if (dev->kept_fd >= 0)
    close(dev->kept_fd);
  dev->kept_fd = -1;
}

static const VhuDeviceIface fuzz_iface = {
  .name = "fuzz",
  .device_id = 0xfffe,
  .num_queues = N_QUEUES,
  .max_queue_size = 256,
  .config_size = CONFIG_SIZE,
  .get_config = fuzz_get_config,
  .set_config = fuzz_set_config,
  .queue_kick = fuzz_queue_kick,
  .device_request = fuzz_device_request,
  .reset = fuzz_reset,
};

static void
quiet_log(const char *domain, GLogLevelFlags level, const char *message, gpointer data)
{}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  /* Every rejected message logs a line by design; keep the run readable
   * (FUZZ_MESSAGE_VERBOSE=1 shows them, to debug a seed). */
  if (g_getenv("FUZZ_MESSAGE_VERBOSE") == NULL)
    g_log_set_handler("vhost", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO,
                      quiet_log, NULL);
  return 0;
}

static int
make_memfd(const guint8 *data, size_t size, gboolean sealed)
{
  static guint8 page[MEMFD_SIZE];
  int fd = memfd_create("fuzz-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);

  if (fd < 0)
    return -1;
  for (gsize i = 0; i < MEMFD_SIZE; i++)
    page[i] = size > 0 ? data[i % size] : 0;
  if (ftruncate(fd, MEMFD_SIZE) < 0 || pwrite(fd, page, MEMFD_SIZE, 0) != MEMFD_SIZE) {
    close(fd);
    return -1;
  }
  if (sealed)
    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  return fd;
}

static int
make_fd(guint kind, const guint8 *data, size_t size)
{
  int sv[2], fd = -1;

  if (kind < 8)
    fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  else if (kind < 12)
    fd = make_memfd(data, size, kind >= 10);
  else if (kind < 14) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
      close(sv[1]);
      fd = sv[0];
    }
  } else if (pipe2(sv, O_CLOEXEC) == 0) {
    close(sv[1]);
    fd = sv[0];
  }
  return fd;
}

/* Reads and discards whatever the backend answered, fds included. */
static void
drain(int sock)
{
  for (;;) {
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(VHU_MAX_FDS * sizeof(int))];
    } control;
    guint8 buf[4096];
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
    struct msghdr mh = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = control.buf,
      .msg_controllen = sizeof control.buf,
    };
    ssize_t r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

    if (r <= 0)
      return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
        continue;
      for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
        int fd;

        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        close(fd);
      }
    }
  }
}

static void
run_queue_context(VhuBackend *backend)
{
  GMainContext *qctx = vhu_backend_get_queue_context(backend);
  guint n = 0;

  /* Kicks reschedule nothing by themselves: this terminates. */
  while (n++ < 64 && g_main_context_iteration(qctx, FALSE))
    ;
}

int
LLVMFuzzerTestOneInput(const guint8 *data, size_t size)
{
  GMainContext *ctx = g_main_context_new();
  FuzzDevice dev = { .kept_fd = -1 };
  VhuMsg *msg = g_new(VhuMsg, 1);
  size_t pos = 0;
  int sv[2];

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    abort();
  dev.backend = vhu_backend_new_manual(&fuzz_iface, &dev, ctx, NULL);
  if (!vhu_backend_serve_fd(dev.backend, sv[0], NULL))
    abort();

  while (pos + RECORD_HDR <= size) {
    const guint8 *rec = data + pos;
    guint flags = rec[1];
    guint n_fds = (rec[2] & 0x0f) % (VHU_MAX_FDS + 1);
    guint kind = rec[2] >> 4;
    size_t len = (size_t)rec[3] | (size_t)rec[4] << 8;
    gboolean keep;

    pos += RECORD_HDR;
    len = MIN(len, MIN(size - pos, VHU_MAX_PAYLOAD));

    vhu_msg_init(msg);
    msg->hdr.request = rec[0] % 48;
    msg->hdr.flags = (flags & 2) ? 0 : VHU_VERSION;
    if (flags & 1)
      msg->hdr.flags |= VHU_FLAG_NEED_REPLY;
    if (flags & 8)
      msg->hdr.flags |= VHU_FLAG_REPLY;
    msg->hdr.size = (guint32)len;
    memcpy(msg->payload, data + pos, len);
    pos += len;
    for (guint i = 0; i < n_fds; i++) {
      int fd = make_fd(kind, data, size);

      if (fd >= 0)
        msg->fds[msg->n_fds++] = fd;
    }

    keep = vhu_backend_handle_message(dev.backend, msg);
    drain(sv[1]);
    if (flags & 4) {
      for (guint q = 0; q < N_QUEUES; q++)
        vhu_backend_kick(dev.backend, q);
    }
    run_queue_context(dev.backend);
    if (!keep)
      break;
  }

  vhu_backend_free(dev.backend);
  fuzz_reset(&dev);
  close(sv[1]);
  g_main_context_unref(ctx);
  g_free(msg);
  return 0;
}
