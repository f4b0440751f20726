/* gpu-test-frontend.h: virtio-gpu requests through a VhuFrontend, for the
 * tests that drive a GPU backend process (ours or QEMU's). */
#pragma once

#include "gpu-test-util.h"
#include "vhu-frontend.h"

/* One request on the control queue; the answer lands in @resp (at most
 * @resp_size bytes), or in a header of our own when @resp is NULL.  Returns
 * the answer's type; fails the test if no whole header came back. */
static inline guint32
gpu_cmd(VhuFrontend *fe, const void *req, gsize req_size, void *resp, gsize resp_size)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_ctrl_hdr hdr = { 0 };
  gssize n;

  if (resp == NULL) {
    resp = &hdr;
    resp_size = sizeof hdr;
  }
  n = vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), req, req_size, resp, resp_size,
                                &error);
  g_assert_no_error(error);
  g_assert_cmpint(n, >=, (gssize)sizeof hdr);
  return ((struct virtio_gpu_ctrl_hdr *)resp)->type;
}
