/* vhu-backend-private.h: white-box entry points of VhuBackend for the message
 * fuzzer and tests (not for devices). */
#pragma once

#include "vhu-backend.h"
#include "vhu-msg.h"

G_BEGIN_DECLS

/* Like vhu_backend_new, but without a queue thread: kicks and deferred fd
 * closes are sources on vhu_backend_get_queue_context() that the caller
 * dispatches itself (g_main_context_iteration), which keeps a fuzz run
 * deterministic. */
VhuBackend *vhu_backend_new_manual(const VhuDeviceIface *iface, gpointer dev, GMainContext *context,
                                   const VhuBackendOptions *options);

/* Handles one message as if it had been read from the current connection
 * (set up with vhu_backend_serve_fd); replies go to that socket.  Fds still
 * in @msg afterwards are closed.  Returns FALSE when the backend would drop
 * the connection; the caller then stops feeding it (the connection is not
 * torn down here; vhu_backend_free does that). */
gboolean vhu_backend_handle_message(VhuBackend *backend, VhuMsg *msg);

G_END_DECLS
