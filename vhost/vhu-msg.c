/* vhu-msg.c: one vhost-user message over a Unix stream socket.
 *
 * Reading never trusts the peer: the header's size is bounded, descriptors
 * beyond VHU_MAX_FDS (or a truncated control message) are an error, and a
 * peer that stops half-way through a message cannot block the reader for
 * longer than the caller's timeout.  All reads use MSG_DONTWAIT and poll(),
 * so the socket may be blocking or not. */
#include "vhu-msg.h"

#include <errno.h>
#include <gio/gio.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Room for far more descriptors than we accept, so that an abusive sender is
 * detected (and its fds closed) instead of silently truncated. */
#define RECV_FD_ROOM 64u
/* Writes go to a peer that should be reading; do not wait forever if not. */
#define WRITE_TIMEOUT_MS 10000

void
vhu_msg_init(VhuMsg *msg)
{
  memset(&msg->hdr, 0, sizeof msg->hdr);
  for (guint i = 0; i < VHU_MAX_FDS; i++)
    msg->fds[i] = -1;
  msg->n_fds = 0;
}

void
vhu_msg_close_fds(VhuMsg *msg)
{
  for (guint i = 0; i < VHU_MAX_FDS; i++) {
    if (msg->fds[i] >= 0)
      close(msg->fds[i]);
    msg->fds[i] = -1;
  }
  msg->n_fds = 0;
}

int
vhu_msg_steal_fd(VhuMsg *msg, guint i)
{
  int fd;

  if (i >= msg->n_fds || i >= VHU_MAX_FDS)
    return -1;
  fd = msg->fds[i];
  msg->fds[i] = -1;
  return fd;
}

/* Remaining milliseconds until @deadline (monotonic µs), -1 for none. */
static int
remaining_ms(gint64 deadline)
{
  gint64 left;

  if (deadline < 0)
    return -1;
  left = deadline - g_get_monotonic_time();
  if (left <= 0)
    return 0;
  return (int)MIN((left + 999) / 1000, G_MAXINT);
}

/* Waits for @events on @sock.  FALSE with @error on timeout or poll failure. */
static gboolean
wait_fd(int sock, short events, gint64 deadline, GError **error)
{
  for (;;) {
    struct pollfd pfd = { .fd = sock, .events = events };
    int ms = remaining_ms(deadline);
    int r;

    if (ms == 0) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                          "timed out in the middle of a message");
      return FALSE;
    }
    r = poll(&pfd, 1, ms);
    if (r > 0)
      return TRUE;
    if (r < 0 && errno != EINTR) {
      int errsv = errno;
      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "poll: %s", g_strerror(errsv));
      return FALSE;
    }
    /* r == 0: loop and report the timeout through remaining_ms. */
  }
}

/* Collects the SCM_RIGHTS descriptors of @mh into @msg.  Returns FALSE (all
 * received fds closed or stored for vhu_msg_close_fds) when there are too
 * many or the control data was truncated. */
static gboolean
take_fds(struct msghdr *mh, VhuMsg *msg, GError **error)
{
  gboolean ok = TRUE;

  for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
    gsize n;
    int *fds;

    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    fds = (int *)CMSG_DATA(c);
    for (gsize i = 0; i < n; i++) {
      int fd;

      memcpy(&fd, &fds[i], sizeof fd);
      if (msg->n_fds < VHU_MAX_FDS)
        msg->fds[msg->n_fds++] = fd;
      else {
        close(fd);
        ok = FALSE;
      }
    }
  }
  if (!ok)
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "more than %u file descriptors",
                VHU_MAX_FDS);
  else if (mh->msg_flags & MSG_CTRUNC) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                        "ancillary data truncated (too many descriptors)");
    ok = FALSE;
  }
  return ok;
}

typedef enum {
  RECV_OK,
  RECV_EOF,
  RECV_ERROR,
} RecvResult;

/* Reads exactly @len bytes into @buf, collecting fds.  The first byte is
 * awaited without limit when @deadline_after_first is set (the deadline then
 * starts with it); EOF before the first byte is RECV_EOF. */
static RecvResult
recv_full(int sock, guint8 *buf, gsize len, VhuMsg *msg, gint64 *deadline, int timeout_ms,
          gboolean at_boundary, GError **error)
{
  gsize got = 0;

  while (got < len) {
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(RECV_FD_ROOM * sizeof(int))];
    } control;
    struct iovec iov = { .iov_base = buf + got, .iov_len = len - got };
    struct msghdr mh = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = control.buf,
      .msg_controllen = sizeof control.buf,
    };
    ssize_t r;

    r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0) {
      int errsv = errno;

      if (errsv == EINTR)
        continue;
      if (errsv == EAGAIN || errsv == EWOULDBLOCK) {
        if (!wait_fd(sock, POLLIN, *deadline, error))
          return RECV_ERROR;
        continue;
      }
      if (at_boundary && got == 0 && (errsv == ECONNRESET || errsv == EPIPE))
        return RECV_EOF;
      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "recvmsg: %s",
                  g_strerror(errsv));
      return RECV_ERROR;
    }
    if (!take_fds(&mh, msg, error))
      return RECV_ERROR;
    if (r == 0) {
      if (at_boundary && got == 0)
        return RECV_EOF;
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT,
                  "connection closed in the middle of a message");
      return RECV_ERROR;
    }
    if (*deadline < 0 && timeout_ms >= 0)
      *deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    at_boundary = FALSE;
    got += (gsize)r;
  }
  return RECV_OK;
}

VhuMsgStatus
vhu_msg_read(int sock, VhuMsg *msg, int timeout_ms, GError **error)
{
  gint64 deadline = -1;
  RecvResult r;

  vhu_msg_init(msg);
  r = recv_full(sock, (guint8 *)&msg->hdr, sizeof msg->hdr, msg, &deadline, timeout_ms, TRUE,
                error);
  if (r == RECV_EOF) {
    vhu_msg_close_fds(msg);
    return VHU_MSG_EOF;
  }
  if (r != RECV_OK) {
    /* No half header: the caller names the request only if it arrived. */
    memset(&msg->hdr, 0, sizeof msg->hdr);
    goto fail;
  }
  if (msg->hdr.size > VHU_MAX_PAYLOAD) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "payload of %" G_GUINT32_FORMAT " bytes is larger than %u", msg->hdr.size,
                VHU_MAX_PAYLOAD);
    goto fail;
  }
  if (msg->hdr.size > 0
      && recv_full(sock, msg->payload, msg->hdr.size, msg, &deadline, timeout_ms, FALSE, error)
             != RECV_OK)
    goto fail;
  return VHU_MSG_OK;

fail:
  vhu_msg_close_fds(msg);
  return VHU_MSG_ERROR;
}

/* Sends the rest of a message after a short write (no fds). */
static gboolean
send_rest(int sock, struct iovec *iov, int n_iov, gsize skip, gint64 deadline, GError **error)
{
  for (int i = 0; i < n_iov; i++) {
    const guint8 *p = iov[i].iov_base;
    gsize len = iov[i].iov_len;

    if (skip >= len) {
      skip -= len;
      continue;
    }
    p += skip;
    len -= skip;
    skip = 0;
    while (len > 0) {
      ssize_t w = send(sock, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);

      if (w < 0) {
        int errsv = errno;

        if (errsv == EINTR)
          continue;
        if ((errsv == EAGAIN || errsv == EWOULDBLOCK) && wait_fd(sock, POLLOUT, deadline, error))
          continue;
        if (errsv != EAGAIN && errsv != EWOULDBLOCK)
          g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "send: %s",
                      g_strerror(errsv));
        return FALSE;
      }
      p += w;
      len -= (gsize)w;
    }
  }
  return TRUE;
}

gboolean
vhu_msg_write(int sock, guint32 request, guint32 flags, const void *payload, gsize size,
              const int *fds, guint n_fds, GError **error)
{
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(VHU_MAX_FDS * sizeof(int))];
  } control;
  VhuMsgHeader hdr = { .request = request, .flags = flags, .size = (guint32)size };
  struct iovec iov[2] = {
    { .iov_base = &hdr, .iov_len = sizeof hdr },
    { .iov_base = (void *)payload, .iov_len = size },
  };
  struct msghdr mh = { .msg_iov = iov, .msg_iovlen = size > 0 ? 2 : 1 };
  gint64 deadline = g_get_monotonic_time() + (gint64)WRITE_TIMEOUT_MS * 1000;
  gsize total = sizeof hdr + size;
  ssize_t w;

  if (size > G_MAXUINT32 || n_fds > VHU_MAX_FDS || (size > 0 && payload == NULL)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "message too large or too many descriptors");
    return FALSE;
  }
  if (n_fds > 0) {
    struct cmsghdr *c;

    memset(&control, 0, sizeof control);
    mh.msg_control = control.buf;
    mh.msg_controllen = CMSG_SPACE(n_fds * sizeof(int));
    c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(n_fds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, n_fds * sizeof(int));
  }

  for (;;) {
    w = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w >= 0)
      break;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_fd(sock, POLLOUT, deadline, error))
        return FALSE;
      continue;
    }
    {
      int errsv = errno;
      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "sendmsg: %s",
                  g_strerror(errsv));
      return FALSE;
    }
  }
  /* The fds went with the first byte; finish a short write plainly. */
  if ((gsize)w < total)
    return send_rest(sock, iov, (int)mh.msg_iovlen, (gsize)w, deadline, error);
  return TRUE;
}
