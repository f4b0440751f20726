/* test-mem.c: memory table over real memfds. */
#include "vhu-mem.h"

#include <errno.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u

/* A memfd of @size bytes where byte i holds (i * 7 + seed) & 0xff. */
static int
make_memfd(gsize size, guint8 seed)
{
  int fd = memfd_create("test-mem", MFD_CLOEXEC);
  g_autofree guint8 *data = g_malloc(size);

  g_assert_cmpint(fd, >=, 0);
  for (gsize i = 0; i < size; i++)
    data[i] = (i * 7 + seed) & 0xff;
  g_assert_cmpint(pwrite(fd, data, size, 0), ==, (gssize)size);
  return fd;
}

static guint8
pattern(gsize file_offset, guint8 seed)
{
  return (file_offset * 7 + seed) & 0xff;
}

static VhuMemTable *
add_ok(VhuMemTable *table, guint64 gpa, guint64 size, guint64 uva, guint64 offset, int fd)
{
  VhuMemRegionDesc r = { gpa, size, uva, offset };
  g_autoptr(GError) error = NULL;
  VhuMemTable *next = vhu_mem_table_add(table, &r, fd, 8, &error);

  g_assert_no_error(error);
  g_assert_nonnull(next);
  vhu_mem_table_unref(table);
  return next;
}

static void
add_fails(const VhuMemTable *table, guint64 gpa, guint64 size, guint64 uva, guint64 offset, int fd,
          guint max, const char *what, const char *expect)
{
  VhuMemRegionDesc r = { gpa, size, uva, offset };
  g_autoptr(GError) error = NULL;

  g_test_message("expect failure: %s", what);
  g_assert_null(vhu_mem_table_add(table, &r, fd, max, &error));
  g_assert_nonnull(error);
  g_test_message("  %s", error->message);
  g_assert_nonnull(strstr(error->message, expect));
}

static void
test_translate_edges(void)
{
  /* QEMU's layout: gpa 0x100000 at file offset 0x100000. */
  const guint64 gpa = 0x100000, size = 0x10000, uva = 0x7f0000100000, off = 0x100000;
  int fd = make_memfd(off + size, 3);
  VhuMemTable *t = add_ok(vhu_mem_table_new(), gpa, size, uva, off, fd);
  guint64 len;
  guint8 *p;

  g_assert_cmpuint(vhu_mem_table_n_regions(t), ==, 1);

  len = 16;
  p = vhu_mem_gpa_to_host(t, gpa, &len);
  g_assert_nonnull(p);
  g_assert_cmpuint(len, ==, 16);
  g_assert_cmpuint(p[0], ==, pattern(off, 3));
  g_assert_cmpuint(p[15], ==, pattern(off + 15, 3));

  /* Last byte: the length is clamped to what is left. */
  len = 100;
  p = vhu_mem_gpa_to_host(t, gpa + size - 1, &len);
  g_assert_nonnull(p);
  g_assert_cmpuint(len, ==, 1);
  g_assert_cmpuint(*p, ==, pattern(off + size - 1, 3));

  len = 1;
  g_assert_null(vhu_mem_gpa_to_host(t, gpa + size, &len));
  g_assert_cmpuint(len, ==, 0);
  len = 1;
  g_assert_null(vhu_mem_gpa_to_host(t, gpa - 1, &len));
  len = 1;
  g_assert_null(vhu_mem_gpa_to_host(t, G_MAXUINT64, &len));

  /* uva: the whole range must be inside. */
  p = vhu_mem_uva_to_host(t, uva, size);
  g_assert_nonnull(p);
  g_assert_cmpuint(p[0], ==, pattern(off, 3));
  g_assert_nonnull(vhu_mem_uva_to_host(t, uva + size - 4, 4));
  g_assert_null(vhu_mem_uva_to_host(t, uva + size - 4, 5));
  g_assert_null(vhu_mem_uva_to_host(t, uva - 1, 2));
  g_assert_null(vhu_mem_uva_to_host(t, uva + size, 0));
  g_assert_null(vhu_mem_uva_to_host(t, uva + 8, G_MAXUINT64));

  /* Writes land in the file. */
  len = 1;
  p = vhu_mem_gpa_to_host(t, gpa + 0x20, &len);
  p[0] = 0xa5;
  {
    guint8 b = 0;

    g_assert_cmpint(pread(fd, &b, 1, off + 0x20), ==, 1);
    g_assert_cmpuint(b, ==, 0xa5);
  }

  vhu_mem_table_unref(t);
  close(fd);
}

static void
test_unaligned_offset(void)
{
  const guint64 off = 0x123;
  int fd = make_memfd(off + 3 * PAGE, 9);
  VhuMemTable *t = add_ok(vhu_mem_table_new(), 0x5000, 3 * PAGE, 0x9000, off, fd);
  guint64 len = 8;
  guint8 *p = vhu_mem_gpa_to_host(t, 0x5001, &len);

  g_assert_nonnull(p);
  g_assert_cmpuint(*p, ==, pattern(off + 1, 9));
  vhu_mem_table_unref(t);
  close(fd);
}

static void
test_span_regions(void)
{
  int a = make_memfd(PAGE, 1), b = make_memfd(2 * PAGE, 2);
  VhuMemTable *t = vhu_mem_table_new();
  struct iovec iov[4];
  guint8 buf[32];

  /* Adjacent in gpa, far apart in uva, added out of order. */
  t = add_ok(t, PAGE, 2 * PAGE, 0x50000, 0, b);
  t = add_ok(t, 0, PAGE, 0x10000, 0, a);
  /* A gap after them. */
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, PAGE - 16, 32, iov, 4), ==, 2);
  g_assert_cmpuint(iov[0].iov_len, ==, 16);
  g_assert_cmpuint(iov[1].iov_len, ==, 16);
  g_assert_cmpuint(((guint8 *)iov[0].iov_base)[0], ==, pattern(PAGE - 16, 1));
  g_assert_cmpuint(((guint8 *)iov[1].iov_base)[0], ==, pattern(0, 2));
  g_assert_cmpuint(vhu_iov_size(iov, 2), ==, 32);
  g_assert_cmpuint(vhu_iov_to_buf(iov, 2, 0, buf, sizeof buf), ==, 32);
  for (guint i = 0; i < 32; i++)
    g_assert_cmpuint(buf[i], ==, i < 16 ? pattern(PAGE - 16 + i, 1) : pattern(i - 16, 2));

  /* Too few iovecs, a byte beyond the end, overflow, zero length. */
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, PAGE - 16, 32, iov, 1), ==, -1);
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, 0, 3 * PAGE, iov, 4), ==, 2);
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, 0, 3 * PAGE + 1, iov, 4), ==, -1);
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, G_MAXUINT64 - 1, 4, iov, 4), ==, -1);
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, 3 * PAGE, 0, iov, 4), ==, 0);
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, 3 * PAGE, 1, iov, 4), ==, -1);

  /* uva ranges never join regions. */
  g_assert_null(vhu_mem_uva_to_host(t, 0x10000 + PAGE - 1, 2));

  vhu_mem_table_unref(t);
  close(a);
  close(b);
}

static void
test_gaps_and_many_regions(void)
{
  static const guint order[] = { 5, 2, 7, 0, 3, 6, 1, 4 };
  int fd = make_memfd(PAGE, 4);
  VhuMemTable *t = vhu_mem_table_new();

  /* Eight one-page regions with one-page gaps, inserted shuffled. */
  for (guint k = 0; k < G_N_ELEMENTS(order); k++) {
    guint i = order[k];

    t = add_ok(t, 2 * i * PAGE, PAGE, 0x100000 + 2 * i * PAGE, 0, fd);
  }
  add_fails(t, 100 * PAGE, PAGE, 0x900000, 0, fd, 8, "ninth region", "more than");
  for (guint i = 0; i < 8; i++) {
    guint64 len = PAGE;

    g_assert_nonnull(vhu_mem_gpa_to_host(t, 2 * i * PAGE, &len));
    g_assert_cmpuint(len, ==, PAGE);
    len = PAGE;
    g_assert_null(vhu_mem_gpa_to_host(t, (2 * i + 1) * PAGE, &len));
  }
  vhu_mem_table_unref(t);
  close(fd);
}

static void
test_rejects(void)
{
  int fd = make_memfd(4 * PAGE, 5);
  int pipefd[2];
  VhuMemTable *t = add_ok(vhu_mem_table_new(), 0x10000, 2 * PAGE, 0x80000, 0, fd);

  g_assert_cmpint(pipe(pipefd), ==, 0);
  add_fails(t, 0x40000, 0, 0x90000, 0, fd, 8, "zero size", "size 0");
  add_fails(t, G_MAXUINT64 - PAGE + 1, 2 * PAGE, 0x90000, 0, fd, 8, "gpa overflow", "overflows");
  add_fails(t, 0x40000, 2 * PAGE, G_MAXUINT64 - PAGE + 1, 0, fd, 8, "uva overflow", "overflows");
  add_fails(t, 0x40000, 2 * PAGE, 0x90000, G_MAXUINT64 - PAGE + 1, fd, 8, "offset overflow",
            "overflows");
  add_fails(t, 0x10000 + PAGE, 2 * PAGE, 0x90000, 0, fd, 8, "gpa overlaps (inside)", "overlaps");
  add_fails(t, 0xf000, 2 * PAGE, 0x90000, 0, fd, 8, "gpa overlaps (start)", "overlaps");
  add_fails(t, 0x40000, 2 * PAGE, 0x80000 + PAGE, 0, fd, 8, "uva overlaps", "overlaps");
  add_fails(t, 0x40000, 2 * PAGE, 0x7f000, 0, fd, 8, "uva overlaps (start)", "overlaps");
  add_fails(t, 0x40000, 2 * PAGE, 0x90000, 0, fd, 1, "max regions", "more than");
  add_fails(t, 0x40000, 4 * PAGE, 0x90000, PAGE, fd, 8, "file too small", "its file has");
  add_fails(t, 0x40000, 2 * PAGE, 0x90000, 0, -1, 8, "no fd", "not a regular file");
  add_fails(t, 0x40000, 2 * PAGE, 0x90000, 0, pipefd[0], 8, "not a file", "not a regular file");
  /* Touching ranges are fine. */
  {
    VhuMemRegionDesc r = { 0x10000 + 2 * PAGE, PAGE, 0x80000 + 2 * PAGE, 0 };
    g_autoptr(GError) error = NULL;
    g_autoptr(VhuMemTable) next = vhu_mem_table_add(t, &r, fd, 8, &error);

    g_assert_no_error(error);
    g_assert_cmpuint(vhu_mem_table_n_regions(next), ==, 2);
  }
  g_assert_cmpuint(vhu_mem_table_n_regions(t), ==, 1);
  vhu_mem_table_unref(t);
  close(pipefd[0]);
  close(pipefd[1]);
  close(fd);
}

static gboolean
is_mapped(const void *p)
{
  void *page = (void *)((guintptr)p & ~(guintptr)(PAGE - 1));

  return msync(page, PAGE, MS_ASYNC) == 0;
}

static void
test_remove_and_lifetime(void)
{
  int a = make_memfd(PAGE, 6), b = make_memfd(PAGE, 7);
  VhuMemTable *t = vhu_mem_table_new();
  VhuMemRegionDesc ra = { 0, PAGE, 0x10000, 0 };
  VhuMemRegionDesc wrong = { 0, PAGE, 0x20000, 0 };
  g_autoptr(GError) error = NULL;
  VhuMemTable *held, *removed;
  guint64 len = 1;
  guint8 *pa, *pb;

  t = add_ok(t, 0, PAGE, 0x10000, 0, a);
  t = add_ok(t, PAGE, PAGE, 0x20000, 0, b);
  pa = vhu_mem_gpa_to_host(t, 0, &len);
  len = 1;
  pb = vhu_mem_gpa_to_host(t, PAGE, &len);

  /* A popped request holds the table it was translated with. */
  held = vhu_mem_table_ref(t);

  g_assert_null(vhu_mem_table_remove(t, &wrong, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_clear_error(&error);

  removed = vhu_mem_table_remove(t, &ra, &error);
  g_assert_no_error(error);
  vhu_mem_table_unref(t);
  t = removed;
  g_assert_cmpuint(vhu_mem_table_n_regions(t), ==, 1);
  len = 1;
  g_assert_null(vhu_mem_gpa_to_host(t, 0, &len));
  len = 1;
  g_assert_true(vhu_mem_gpa_to_host(t, PAGE, &len) == pb);

  /* The old table still translates and its mapping is alive. */
  len = 1;
  g_assert_true(vhu_mem_gpa_to_host(held, 0, &len) == pa);
  g_assert_true(is_mapped(pa));
  g_assert_cmpuint(*pa, ==, pattern(0, 6));
  vhu_mem_table_unref(held);
  /* Last holder gone: region a unmapped, b still mapped by the new table. */
  g_assert_false(is_mapped(pa));
  g_assert_true(is_mapped(pb));
  g_assert_cmpuint(*pb, ==, pattern(0, 7));
  vhu_mem_table_unref(t);
  g_assert_false(is_mapped(pb));
  close(a);
  close(b);
}

static void
test_iov_copy(void)
{
  guint8 a[3] = { 0 }, b[1] = { 0 }, c[4] = { 0 };
  struct iovec iov[] = { { a, 3 }, { b, 1 }, { NULL, 0 }, { c, 4 } };
  const guint8 src[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
  guint8 dst[8];

  g_assert_cmpuint(vhu_iov_size(iov, 4), ==, 8);
  g_assert_cmpuint(vhu_iov_from_buf(iov, 4, 2, src, 8), ==, 6);
  g_assert_cmpuint(a[2], ==, 1);
  g_assert_cmpuint(b[0], ==, 2);
  g_assert_cmpuint(c[3], ==, 6);
  memset(dst, 0, sizeof dst);
  g_assert_cmpuint(vhu_iov_to_buf(iov, 4, 3, dst, 3), ==, 3);
  g_assert_cmpuint(dst[0], ==, 2);
  g_assert_cmpuint(dst[1], ==, 3);
  g_assert_cmpuint(dst[2], ==, 4);
  g_assert_cmpuint(vhu_iov_to_buf(iov, 4, 8, dst, 3), ==, 0);
  g_assert_cmpuint(vhu_iov_to_buf(iov, 4, 100, dst, 3), ==, 0);
  g_assert_cmpuint(vhu_iov_to_buf(iov, 4, 0, dst, 0), ==, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/mem/translate-edges", test_translate_edges);
  g_test_add_func("/mem/unaligned-offset", test_unaligned_offset);
  g_test_add_func("/mem/span-regions", test_span_regions);
  g_test_add_func("/mem/gaps-and-many-regions", test_gaps_and_many_regions);
  g_test_add_func("/mem/rejects", test_rejects);
  g_test_add_func("/mem/remove-and-lifetime", test_remove_and_lifetime);
  g_test_add_func("/mem/iov-copy", test_iov_copy);
  return g_test_run();
}
