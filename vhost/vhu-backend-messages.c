/* vhu-backend-messages.c: one handler per vhost-user request, and the
 * reply rules (REPLY_ACK, own replies, what drops the connection).  Runs on
 * the control context. */
#include "vhu-backend-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vhu-mem.h"

/* ------------------------------------------------------------------ */
/* Message helpers */

static gboolean
send_reply(VhuBackend *b, guint32 request, const void *payload, gsize size, const int *fds,
           guint n_fds)
{
  g_autoptr(GError) error = NULL;

  if (!vhu_msg_write(b->conn_fd, request, VHU_REPLY_FLAGS, payload, size, fds, n_fds, &error)) {
    g_message("%s: cannot reply to %s: %s", b->iface.name, vhu_request_name(request),
              error->message);
    return FALSE;
  }
  return TRUE;
}

static HResult
reply_u64(VhuBackend *b, guint32 request, guint64 value)
{
  return send_reply(b, request, &value, sizeof value, NULL, 0) ? H_REPLIED : H_CLOSE;
}

static gboolean
check_size(const VhuMsg *msg, gsize size, GError **error)
{
  if (msg->hdr.size == size)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
              "payload is %" G_GUINT32_FORMAT " bytes, expected %" G_GSIZE_FORMAT, msg->hdr.size,
              size);
  return FALSE;
}

static gboolean
check_fds(const VhuMsg *msg, guint n, GError **error)
{
  if (msg->n_fds == n)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%u file descriptor%s, expected %u",
              msg->n_fds, msg->n_fds == 1 ? "" : "s", n);
  return FALSE;
}

static gboolean
check_plain(const VhuMsg *msg, gsize size, GError **error)
{
  return check_size(msg, size, error) && check_fds(msg, 0, error);
}

/* A getter: no payload, no fds, a u64 answer. */
static HResult
reply_plain_u64(VhuBackend *b, const VhuMsg *msg, guint64 value, GError **error)
{
  if (!check_plain(msg, 0, error))
    return H_MALFORMED;
  return reply_u64(b, msg->hdr.request, value);
}

static guint64
payload_u64(const VhuMsg *msg)
{
  guint64 v;

  memcpy(&v, msg->payload, sizeof v);
  return v;
}

static gboolean
check_queue(VhuBackend *b, guint32 index, GError **error)
{
  if (index < b->num_queues)
    return TRUE;
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
              "queue index %" G_GUINT32_FORMAT " out of range (%u queues)", index, b->num_queues);
  return FALSE;
}

static gboolean
read_vring_state(VhuBackend *b, const VhuMsg *msg, VhuVringState *state, GError **error)
{
  if (!check_plain(msg, sizeof *state, error))
    return FALSE;
  memcpy(state, msg->payload, sizeof *state);
  return check_queue(b, state->index, error);
}

/* ------------------------------------------------------------------ */
/* Handlers */

static HResult
handle_set_features(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  /* Transport bits QEMU passes through from the guest without asking us
   * (vhost-user-gpu has no feature filter): tolerated, not negotiated. */
  const guint64 tolerated = G_GUINT64_CONSTANT(1) << VHU_F_ANY_LAYOUT
                            | G_GUINT64_CONSTANT(1) << VHU_F_NOTIFY_ON_EMPTY
                            | G_GUINT64_CONSTANT(1) << 40 /* RING_RESET */;
  guint64 value, unknown;

  if (!check_plain(msg, 8, error))
    return H_MALFORMED;
  value = payload_u64(msg);
  unknown = value & ~b->offered_features & ~tolerated;
  value &= b->offered_features;

  __atomic_store_n(&b->features, value, __ATOMIC_RELAXED);
  for (guint i = 0; i < b->num_queues; i++) {
    VhuVring *vring = b->queues[i].vring;

    vhu_vring_set_features(vring, value);
    /* Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings are
     * enabled from the start. */
    if (!(value & (G_GUINT64_CONSTANT(1) << VHU_F_PROTOCOL_FEATURES))
        && !vhu_vring_is_enabled(vring)) {
      vhu_vring_set_enabled(vring, TRUE);
      if (vhu_vring_is_started(vring))
        vhu_backend_schedule_kick(b, i);
    }
  }
  if (b->iface.set_features != NULL)
    b->iface.set_features(b->dev, value);

  if (unknown != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                "features 0x%" G_GINT64_MODIFIER "x were not offered (ignored)", unknown);
    return H_REFUSED;
  }
  return H_OK;
}

static HResult
handle_set_protocol_features(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  guint64 value, unknown;

  if (!check_plain(msg, 8, error))
    return H_MALFORMED;
  value = payload_u64(msg);
  unknown = value & ~b->offered_protocol;
  b->protocol_features = value & b->offered_protocol;
  g_mutex_lock(&b->req_lock);
  b->backend_req_ok = (b->protocol_features & (G_GUINT64_CONSTANT(1) << VHU_PF_BACKEND_REQ)) != 0;
  g_mutex_unlock(&b->req_lock);
  if (unknown != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                "protocol features 0x%" G_GINT64_MODIFIER "x were not offered (ignored)", unknown);
    return H_REFUSED;
  }
  return H_OK;
}

static HResult
install_mem(VhuBackend *b, VhuMemTable *mem, GError **error)
{
  return vhu_backend_set_mem(b, mem, error) ? H_OK : H_MALFORMED;
}

static HResult
handle_set_mem_table(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuMemTableDesc desc;
  g_autoptr(VhuMemTable) table = NULL;

  if (msg->hdr.size < 8) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload of %" G_GUINT32_FORMAT " bytes is shorter than the table header",
                msg->hdr.size);
    return H_MALFORMED;
  }
  memset(&desc, 0, sizeof desc);
  memcpy(&desc, msg->payload, MIN(msg->hdr.size, sizeof desc));
  if (desc.nregions > VHU_MAX_TABLE_REGIONS) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "%" G_GUINT32_FORMAT " regions, at most %u", desc.nregions, VHU_MAX_TABLE_REGIONS);
    return H_MALFORMED;
  }
  /* QEMU sends only the used entries; accept the full-size form too. */
  if (msg->hdr.size != 8 + desc.nregions * sizeof(VhuMemRegionDesc)
      && msg->hdr.size != sizeof desc) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload is %" G_GUINT32_FORMAT " bytes for %" G_GUINT32_FORMAT " regions",
                msg->hdr.size, desc.nregions);
    return H_MALFORMED;
  }
  if (!check_fds(msg, desc.nregions, error))
    return H_MALFORMED;

  table = vhu_mem_table_new();
  for (guint i = 0; i < desc.nregions; i++) {
    VhuMemTable *next
        = vhu_mem_table_add(table, &desc.regions[i], msg->fds[i], VHU_MAX_TABLE_REGIONS, error);

    if (next == NULL) {
      g_prefix_error(error, "region %u: ", i);
      return H_MALFORMED;
    }
    vhu_mem_table_unref(table);
    table = next;
  }
  return install_mem(b, g_steal_pointer(&table), error);
}

static HResult
handle_mem_reg(VhuBackend *b, const VhuMsg *msg, gboolean add, GError **error)
{
  VhuMemSingleRegion reg;
  g_autoptr(VhuMemTable) empty = NULL;
  VhuMemTable *current, *next;

  if (!check_size(msg, sizeof reg, error))
    return H_MALFORMED;
  /* REM_MEM_REG: old QEMU attached the region's fd; tolerate and close it. */
  if (add ? !check_fds(msg, 1, error) : msg->n_fds > 1) {
    if (!add)
      check_fds(msg, 1, error);
    return H_MALFORMED;
  }
  memcpy(&reg, msg->payload, sizeof reg);

  current = b->mem;
  if (current == NULL)
    current = empty = vhu_mem_table_new();
  if (add)
    next = vhu_mem_table_add(current, &reg.region, msg->fds[0], VHU_MAX_MEM_SLOTS, error);
  else
    next = vhu_mem_table_remove(current, &reg.region, error);
  if (next == NULL)
    return H_MALFORMED;
  return install_mem(b, next, error);
}

/* SET_VRING_NUM, SET_VRING_BASE: only a stopped ring may change. */
static HResult
set_stopped_vring(VhuBackend *b, const VhuVringState *st,
                  gboolean (*set)(VhuVring *vring, guint num, GError **error), GError **error)
{
  VhuVring *vring = b->queues[st->index].vring;
  gboolean ok = FALSE;

  /* Rings start and stop on this thread only: the check stays true. */
  if (vhu_vring_is_started(vring))
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY, "queue %u is started", st->index);
  else
    ok = set(vring, st->num, error);
  return ok ? H_OK : H_MALFORMED;
}

static HResult
handle_vring_num(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  if (st.num > b->max_queue_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "ring size %" G_GUINT32_FORMAT " above the maximum %u", st.num, b->max_queue_size);
    return H_MALFORMED;
  }
  return set_stopped_vring(b, &st, vhu_vring_set_num, error);
}

static HResult
handle_vring_base(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  return set_stopped_vring(b, &st, vhu_vring_set_base, error);
}

static HResult
handle_vring_addr(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringAddr addr;
  VhuVring *vring;
  gboolean ok;

  if (!check_plain(msg, sizeof addr, error))
    return H_MALFORMED;
  memcpy(&addr, msg->payload, sizeof addr);
  if (!check_queue(b, addr.index, error))
    return H_MALFORMED;
  vring = b->queues[addr.index].vring;
  ok = vhu_vring_set_addr(vring, &addr, error);
  /* Without a table yet the addresses are checked at start. */
  if (ok && b->mem != NULL && !vhu_vring_set_mem(vring, b->mem, error)) {
    g_prefix_error(error, "ring address not mapped: ");
    ok = FALSE;
  }
  return ok ? H_OK : H_MALFORMED;
}

static HResult
handle_get_vring_base(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  vhu_backend_stop_queue(b, st.index);
  st.num = vhu_vring_get_base(b->queues[st.index].vring);
  return send_reply(b, msg->hdr.request, &st, sizeof st, NULL, 0) ? H_REPLIED : H_CLOSE;
}

/* SET_VRING_KICK/CALL/ERR: u64 with the index in bits 0-7 and bit 8 = no fd. */
static gboolean
read_vring_fd(VhuBackend *b, VhuMsg *msg, guint *qidx, int *fd, GError **error)
{
  guint64 v;
  gboolean nofd;

  if (!check_size(msg, 8, error))
    return FALSE;
  v = payload_u64(msg);
  nofd = (v & VHU_VRING_NOFD) != 0;
  if (v & ~(guint64)(VHU_VRING_IDX_MASK | VHU_VRING_NOFD)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "unknown bits in 0x%" G_GINT64_MODIFIER "x", v);
    return FALSE;
  }
  if (!check_fds(msg, nofd ? 0 : 1, error))
    return FALSE;
  *qidx = (guint)(v & VHU_VRING_IDX_MASK);
  if (!check_queue(b, *qidx, error))
    return FALSE;
  *fd = nofd ? -1 : vhu_msg_steal_fd(msg, 0);
  return TRUE;
}

/* Kick, call and error fds must be eventfds: a pipe or a socket as call fd
 * fills up (and raises SIGPIPE once its reader goes), a kick fd that is a
 * regular file or /dev/zero is readable for ever and would spin the queue
 * thread.  Refused when handed over; the fd is made non-blocking, so even an
 * eventfd whose counter saturates never blocks a write. */
static gboolean
check_eventfd(int fd, GError **error)
{
  char path[64], target[64];
  struct stat st;
  ssize_t n;

  g_snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  n = readlink(path, target, sizeof target - 1);
  if (n >= 0) {
    target[n] = '\0';
    if (strcmp(target, "anon_inode:[eventfd]") == 0)
      return g_unix_set_fd_nonblocking(fd, TRUE, error);
  } else if (fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == 0) {
    /* No /proc: an anonymous inode is the best that can be told. */
    return g_unix_set_fd_nonblocking(fd, TRUE, error);
  }
  g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "fd is not an eventfd (%s)",
              n >= 0 ? target : "unknown kind");
  return FALSE;
}

static gboolean
read_vring_eventfd(VhuBackend *b, VhuMsg *msg, guint *qidx, int *fd, GError **error)
{
  if (!read_vring_fd(b, msg, qidx, fd, error))
    return FALSE;
  if (*fd >= 0 && !check_eventfd(*fd, error)) {
    close(*fd);
    return FALSE;
  }
  return TRUE;
}

static HResult
handle_vring_kick(VhuBackend *b, VhuMsg *msg, GError **error)
{
  VhuQueue *q;
  guint qidx;
  int fd;

  if (!read_vring_eventfd(b, msg, &qidx, &fd, error))
    return H_MALFORMED;
  q = &b->queues[qidx];
  vhu_backend_drop_kick_watch(b, q);
  if (!vhu_vring_is_started(q->vring) && !vhu_backend_start_queue(b, qidx, error)) {
    if (fd >= 0)
      close(fd);
    return H_MALFORMED;
  }
  vhu_backend_add_kick_watch(b, qidx, fd);
  /* Requests may be pending already (or resubmitted from inflight). */
  vhu_backend_schedule_kick(b, qidx);
  return H_OK;
}

static HResult
handle_vring_call_err(VhuBackend *b, VhuMsg *msg, gboolean call, GError **error)
{
  guint qidx;
  int fd;

  if (!read_vring_eventfd(b, msg, &qidx, &fd, error))
    return H_MALFORMED;
  if (call)
    vhu_vring_set_call_fd(b->queues[qidx].vring, fd);
  else
    vhu_vring_set_err_fd(b->queues[qidx].vring, fd);
  return H_OK;
}

static HResult
handle_vring_enable(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuVringState st;
  VhuVring *vring;

  if (!read_vring_state(b, msg, &st, error))
    return H_MALFORMED;
  if (st.num > 1) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "enable value %" G_GUINT32_FORMAT,
                st.num);
    return H_MALFORMED;
  }
  vring = b->queues[st.index].vring;
  vhu_vring_set_enabled(vring, st.num != 0);
  if (st.num != 0 && vhu_vring_is_started(vring))
    vhu_backend_schedule_kick(b, st.index);
  return H_OK;
}

static HResult
handle_backend_req_fd(VhuBackend *b, VhuMsg *msg, GError **error)
{
  int type = 0;
  socklen_t len = sizeof type;

  if (!check_size(msg, 0, error) || !check_fds(msg, 1, error))
    return H_MALFORMED;
  if (getsockopt(msg->fds[0], SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "backend channel fd is not a stream socket");
    return H_MALFORMED;
  }
  g_mutex_lock(&b->req_lock);
  if (b->backend_req_fd >= 0)
    close(b->backend_req_fd);
  b->backend_req_fd = vhu_msg_steal_fd(msg, 0);
  g_mutex_unlock(&b->req_lock);
  return H_OK;
}

/* Parses a config payload and checks it against the device's config space. */
static gboolean
read_config(VhuBackend *b, const VhuMsg *msg, VhuConfigMsg *cfg, GError **error)
{
  guint32 end;

  if (msg->hdr.size < VHU_CONFIG_HDR_SIZE) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload of %" G_GUINT32_FORMAT " bytes is shorter than the %u-byte header",
                msg->hdr.size, (guint)VHU_CONFIG_HDR_SIZE);
    return FALSE;
  }
  memcpy(cfg, msg->payload, MIN(msg->hdr.size, sizeof *cfg));
  if (cfg->size == 0 || cfg->size > VHU_MAX_CONFIG_SIZE
      || msg->hdr.size != VHU_CONFIG_HDR_SIZE + cfg->size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "config size %" G_GUINT32_FORMAT " in a payload of %" G_GUINT32_FORMAT " bytes",
                cfg->size, msg->hdr.size);
    return FALSE;
  }
  if (!check_fds(msg, 0, error))
    return FALSE;
  if (!g_uint_checked_add(&end, cfg->offset, cfg->size) || end > b->iface.config_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "config range %" G_GUINT32_FORMAT "+%" G_GUINT32_FORMAT
                " outside the %" G_GSIZE_FORMAT "-byte config space",
                cfg->offset, cfg->size, b->iface.config_size);
    return FALSE;
  }
  return TRUE;
}

static HResult
handle_get_config(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuConfigMsg cfg;
  guint8 space[VHU_MAX_CONFIG_SIZE] = { 0 };

  if (!read_config(b, msg, &cfg, error)) {
    /* An empty reply is an error QEMU understands; the session survives. */
    g_warning("%s: GET_CONFIG (%u) rejected: %s; answered with an empty reply", b->iface.name,
              VHU_GET_CONFIG, (*error)->message);
    g_clear_error(error);
    return send_reply(b, msg->hdr.request, NULL, 0, NULL, 0) ? H_REPLIED : H_CLOSE;
  }
  if (b->iface.get_config != NULL)
    b->iface.get_config(b->dev, space, b->iface.config_size);
  memcpy(cfg.region, space + cfg.offset, cfg.size);
  return send_reply(b, msg->hdr.request, &cfg, VHU_CONFIG_HDR_SIZE + cfg.size, NULL, 0) ? H_REPLIED
                                                                                        : H_CLOSE;
}

static HResult
handle_set_config(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuConfigMsg cfg;
  gboolean ok = TRUE;

  if (!read_config(b, msg, &cfg, error))
    return H_MALFORMED;
  if (b->iface.set_config != NULL)
    ok = b->iface.set_config(b->dev, cfg.offset, cfg.region, cfg.size, cfg.flags, error);
  if (!ok && error != NULL && *error == NULL)
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED, "refused by the device");
  return ok ? H_OK : H_REFUSED;
}

static gboolean
is_pow2(guint v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

static gboolean
read_inflight(VhuBackend *b, const VhuMsg *msg, guint nfds, VhuInflightMsg *inf, gsize *stride,
              gsize *total, GError **error)
{
  if (!check_size(msg, sizeof *inf, error) || !check_fds(msg, nfds, error))
    return FALSE;
  memcpy(inf, msg->payload, sizeof *inf);
  if (inf->num_queues == 0 || inf->num_queues > b->num_queues || !is_pow2(inf->queue_size)
      || inf->queue_size > b->max_queue_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "%u queues of %u entries (device: %u queues of at most %u)", inf->num_queues,
                inf->queue_size, b->num_queues, b->max_queue_size);
    return FALSE;
  }
  *stride = vhu_vring_inflight_region_size(inf->queue_size);
  /* Small by the checks above, but keep the arithmetic honest. */
  if (!g_size_checked_mul(total, *stride, inf->num_queues)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "size overflow");
    return FALSE;
  }
  return TRUE;
}

static HResult
handle_get_inflight_fd(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuInflightMsg inf;
  gsize stride, total;
  int fd = -1;
  gboolean ok;

  if (!read_inflight(b, msg, 0, &inf, &stride, &total, error))
    goto fail;
  fd = memfd_create("vhu-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ftruncate(fd, (off_t)total) < 0
      || fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
    int errsv = errno;

    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "inflight buffer: %s",
                g_strerror(errsv));
    goto fail;
  }
  inf.mmap_size = total;
  inf.mmap_offset = 0;
  ok = send_reply(b, msg->hdr.request, &inf, sizeof inf, &fd, 1);
  close(fd);
  return ok ? H_REPLIED : H_CLOSE;

fail:
  /* mmap_size 0 and no fd: QEMU reads it as "no inflight buffer". */
  g_warning("%s: GET_INFLIGHT_FD (%u) rejected: %s; answered without a buffer", b->iface.name,
            VHU_GET_INFLIGHT_FD, (*error)->message);
  g_clear_error(error);
  if (fd >= 0)
    close(fd);
  memset(&inf, 0, sizeof inf);
  return send_reply(b, msg->hdr.request, &inf, sizeof inf, NULL, 0) ? H_REPLIED : H_CLOSE;
}

static HResult
handle_set_inflight_fd(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  VhuInflightMsg inf;
  gsize stride, total;
  guint64 end;
  struct stat st;
  int fd, seals;
  void *base;
  HResult res = H_OK;

  if (!read_inflight(b, msg, 1, &inf, &stride, &total, error))
    return H_MALFORMED;
  fd = msg->fds[0];
  if (inf.mmap_size < total || inf.mmap_size > G_MAXSIZE
      || !g_uint64_checked_add(&end, inf.mmap_offset, inf.mmap_size) || fstat(fd, &st) < 0
      || end > (guint64)st.st_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "buffer %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                " does not fit the fd or the %" G_GSIZE_FORMAT " bytes needed",
                inf.mmap_offset, inf.mmap_size, total);
    return H_MALFORMED;
  }
  /* A frontend that could shrink the file would make us fault on access. */
  seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "inflight fd is not sealed against shrinking");
    return H_MALFORMED;
  }
  base = mmap(NULL, inf.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)inf.mmap_offset);
  if (base == MAP_FAILED) {
    int errsv = errno;

    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "mmap: %s", g_strerror(errsv));
    return H_MALFORMED;
  }

  for (guint i = 0; i < b->num_queues; i++) {
    if (vhu_vring_is_started(b->queues[i].vring)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY, "queue %u is started", i);
      munmap(base, inf.mmap_size);
      return H_MALFORMED;
    }
  }
  vhu_backend_drop_inflight(b);
  b->inflight_base = base;
  b->inflight_size = inf.mmap_size;
  for (guint i = 0; i < inf.num_queues && res == H_OK; i++) {
    if (!vhu_vring_set_inflight(b->queues[i].vring, (guint8 *)base + i * stride, stride, error)) {
      g_prefix_error(error, "queue %u: ", i);
      res = H_MALFORMED;
    }
  }
  if (res != H_OK)
    vhu_backend_drop_inflight(b);
  return res;
}

static HResult
handle_set_status(VhuBackend *b, const VhuMsg *msg, GError **error)
{
  guint64 v;

  if (!check_plain(msg, 8, error))
    return H_MALFORMED;
  v = payload_u64(msg);
  if (v > 0xff) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "status 0x%" G_GINT64_MODIFIER "x is not a byte", v);
    return H_MALFORMED;
  }
  /* NEEDS_RESET is ours and sticks until the driver resets (writes 0). */
  if (v == 0) {
    g_atomic_int_set(&b->status, 0);
    return H_OK;
  }
  /* A ring may break on another thread meanwhile: keep its bit. */
  for (;;) {
    gint old = g_atomic_int_get(&b->status);

    if (g_atomic_int_compare_and_exchange(&b->status, old,
                                          (gint)v | (old & VHU_STATUS_NEEDS_RESET)))
      break;
  }
  return H_OK;
}

static HResult
handle_device_request(VhuBackend *b, VhuMsg *msg, GError **error)
{
  if (b->iface.device_request == NULL
      || !b->iface.device_request(b->dev, msg->hdr.request, msg->payload, msg->hdr.size, msg->fds,
                                  msg->n_fds, error)) {
    if (error != NULL && *error == NULL)
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "unknown request");
    return H_MALFORMED;
  }
  return H_OK;
}

static gboolean
has_own_reply(guint32 request)
{
  switch (request) {
    case VHU_GET_FEATURES:
    case VHU_GET_PROTOCOL_FEATURES:
    case VHU_GET_VRING_BASE:
    case VHU_GET_QUEUE_NUM:
    case VHU_GET_CONFIG:
    case VHU_GET_INFLIGHT_FD:
    case VHU_GET_MAX_MEM_SLOTS:
    case VHU_GET_STATUS:
      return TRUE;
    default:
      return FALSE;
  }
}

static HResult
dispatch(VhuBackend *b, VhuMsg *msg, GError **error)
{
  switch (msg->hdr.request) {
    case VHU_GET_FEATURES:
      return reply_plain_u64(b, msg, b->offered_features, error);
    case VHU_SET_FEATURES:
      return handle_set_features(b, msg, error);
    case VHU_GET_PROTOCOL_FEATURES:
      return reply_plain_u64(b, msg, b->offered_protocol, error);
    case VHU_SET_PROTOCOL_FEATURES:
      return handle_set_protocol_features(b, msg, error);
    case VHU_SET_OWNER:
      return check_plain(msg, 0, error) ? H_OK : H_MALFORMED;
    case VHU_RESET_OWNER:
    case VHU_RESET_DEVICE:
      if (!check_plain(msg, 0, error))
        return H_MALFORMED;
      vhu_backend_reset_device(b);
      return H_OK;
    case VHU_SET_MEM_TABLE:
      return handle_set_mem_table(b, msg, error);
    case VHU_GET_MAX_MEM_SLOTS:
      return reply_plain_u64(b, msg, VHU_MAX_MEM_SLOTS, error);
    case VHU_ADD_MEM_REG:
      return handle_mem_reg(b, msg, TRUE, error);
    case VHU_REM_MEM_REG:
      return handle_mem_reg(b, msg, FALSE, error);
    case VHU_SET_LOG_BASE:
    case VHU_SET_LOG_FD:
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                          "dirty logging was not offered");
      return H_REFUSED;
    case VHU_SET_VRING_NUM:
      return handle_vring_num(b, msg, error);
    case VHU_SET_VRING_ADDR:
      return handle_vring_addr(b, msg, error);
    case VHU_SET_VRING_BASE:
      return handle_vring_base(b, msg, error);
    case VHU_GET_VRING_BASE:
      return handle_get_vring_base(b, msg, error);
    case VHU_SET_VRING_KICK:
      return handle_vring_kick(b, msg, error);
    case VHU_SET_VRING_CALL:
      return handle_vring_call_err(b, msg, TRUE, error);
    case VHU_SET_VRING_ERR:
      return handle_vring_call_err(b, msg, FALSE, error);
    case VHU_SET_VRING_ENABLE:
      return handle_vring_enable(b, msg, error);
    case VHU_GET_QUEUE_NUM:
      return reply_plain_u64(b, msg, b->num_queues, error);
    case VHU_SET_BACKEND_REQ_FD:
      return handle_backend_req_fd(b, msg, error);
    case VHU_GET_CONFIG:
      return handle_get_config(b, msg, error);
    case VHU_SET_CONFIG:
      return handle_set_config(b, msg, error);
    case VHU_GET_INFLIGHT_FD:
      return handle_get_inflight_fd(b, msg, error);
    case VHU_SET_INFLIGHT_FD:
      return handle_set_inflight_fd(b, msg, error);
    case VHU_SET_STATUS:
      return handle_set_status(b, msg, error);
    case VHU_GET_STATUS:
      return reply_plain_u64(b, msg, (guint8)g_atomic_int_get(&b->status), error);
    default:
      return handle_device_request(b, msg, error);
  }
}

gboolean
vhu_backend_handle_message(VhuBackend *b, VhuMsg *msg)
{
  g_autoptr(GError) error = NULL;
  guint32 request = msg->hdr.request;
  gboolean need_reply = (msg->hdr.flags & VHU_FLAG_NEED_REPLY) != 0;
  gboolean keep = TRUE;
  HResult res;

  if ((msg->hdr.flags & VHU_FLAG_VERSION) != VHU_VERSION) {
    g_set_error(&error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "flags 0x%" G_GINT32_MODIFIER "x: unsupported version", msg->hdr.flags);
    res = H_CLOSE;
  } else
    res = dispatch(b, msg, &error);
  vhu_msg_close_fds(msg);

  /* Messages with their own reply never get an ack: a malformed one cannot
   * be answered meaningfully, so the connection goes. */
  if (has_own_reply(request) && res == H_MALFORMED)
    res = H_CLOSE;
  /* Evaluated after the handler: SET_PROTOCOL_FEATURES may enable it. */
  need_reply = need_reply && (b->protocol_features & (G_GUINT64_CONSTANT(1) << VHU_PF_REPLY_ACK));

  switch (res) {
    case H_OK:
      if (need_reply && !has_own_reply(request))
        keep = reply_u64(b, request, 0) == H_REPLIED;
      break;
    case H_REPLIED:
      break;
    case H_REFUSED:
    case H_MALFORMED:
      g_warning("%s: %s (%" G_GUINT32_FORMAT ") rejected: %s%s", b->iface.name,
                vhu_request_name(request), request, error != NULL ? error->message : "?",
                need_reply || res == H_REFUSED ? "" : "; dropping the connection");
      if (need_reply)
        keep = reply_u64(b, request, 1) == H_REPLIED;
      else
        keep = res == H_REFUSED;
      break;
    case H_CLOSE:
      if (error != NULL)
        g_warning("%s: %s (%" G_GUINT32_FORMAT ") rejected: %s; dropping the connection",
                  b->iface.name, vhu_request_name(request), request, error->message);
      keep = FALSE;
      break;
  }
  return keep;
}
