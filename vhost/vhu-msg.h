/* vhu-msg.h: reading and writing one vhost-user message with its fds
 * (private to vhost/, shared by the backend and frontend sides). */
#pragma once

#include <glib.h>

#include "vhu-proto.h"

G_BEGIN_DECLS

typedef struct {
  VhuMsgHeader hdr;
  guint8 payload[VHU_MAX_PAYLOAD];
  int fds[VHU_MAX_FDS];
  guint n_fds;
} VhuMsg;

void vhu_msg_init(VhuMsg *msg); /* zero header, fds = -1 */
void vhu_msg_close_fds(VhuMsg *msg);
/* Takes fd @i out of @msg (the message no longer closes it); -1 if absent. */
int vhu_msg_steal_fd(VhuMsg *msg, guint i);

typedef enum {
  VHU_MSG_OK,
  VHU_MSG_EOF,   /* orderly close at a message boundary */
  VHU_MSG_ERROR, /* truncated, oversized, too many fds, timeout, I/O error */
} VhuMsgStatus;

/* Reads one message from a stream socket (header with recvmsg to collect fds,
 * then the payload).  Once the first byte has arrived, the rest must come
 * within @timeout_ms (-1: no limit), so a stalled peer cannot hang the
 * reader.  Payloads over VHU_MAX_PAYLOAD are an error.  On error every fd
 * received is closed, and msg->hdr holds the header if it arrived whole
 * (request 0, which no message uses, if not). */
VhuMsgStatus vhu_msg_read(int sock, VhuMsg *msg, int timeout_ms, GError **error);
/* Writes header + payload in one sendmsg (fds attached), retrying on EINTR
 * and completing short writes.  MSG_NOSIGNAL: a closed peer is an error,
 * never SIGPIPE. */
gboolean vhu_msg_write(int sock, guint32 request, guint32 flags, const void *payload, gsize size,
                       const int *fds, guint n_fds, GError **error);

G_END_DECLS
