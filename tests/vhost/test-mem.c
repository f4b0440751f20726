/* test-mem.c: memory table over real memfds. */
#include "vhu-mem.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vhu-guard.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

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

/* --- memory that disappears ------------------------------------------------ */

static guint8
peek(const guint8 *p)
{
  return *(volatile const guint8 *)p;
}

static VhuMemRegionInfo
region_info(const VhuMemTable *t, guint i)
{
  VhuMemRegionInfo info;

  g_assert_true(vhu_mem_table_get_region(t, i, &info));
  return info;
}

/* The frontend truncates a region's file under the mapping: the first access
 * to a lost page reads zeros instead of raising SIGBUS, the whole region is
 * retired (its intact pages read zeros too), translations refuse it, every
 * table sharing the mapping is damaged, the other region is untouched. */
static void
test_truncated_region(void)
{
  int a = make_memfd(4 * PAGE, 1), b = make_memfd(4 * PAGE, 2);
  VhuMemTable *t = vhu_mem_table_new(), *shared, *only_a;
  VhuMemRegionDesc rb = { 0x100000, 4 * PAGE, 0x900000, 0 };
  g_autoptr(GError) error = NULL;
  guint faults = vhu_guard_get_faults();
  guint64 len = 4 * PAGE;
  struct iovec iov[2], held;
  guint8 *pb, buf[16];

  t = add_ok(t, 0, 4 * PAGE, 0x800000, 0, a);
  t = add_ok(t, 0x100000, 4 * PAGE, 0x900000, 0, b);
  shared = vhu_mem_table_ref(t);
  only_a = vhu_mem_table_remove(t, &rb, &error);
  g_assert_no_error(error);
  g_assert_false(vhu_mem_table_is_damaged(t));
  g_assert_false(region_info(t, 1).sealed);
  g_assert_false(region_info(t, 1).retired);
  pb = vhu_mem_gpa_to_host(t, 0x100000, &len);
  g_assert_nonnull(pb);
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, 0x100000 + PAGE, 2 * PAGE, &held, 1), ==, 1);
  g_assert_cmpuint(peek(pb + 2 * PAGE), ==, pattern(2 * PAGE, 2));

  g_assert_cmpint(ftruncate(b, PAGE), ==, 0);
  g_assert_cmpuint(peek(pb), ==, pattern(0, 2)); /* the page the file kept */
  g_assert_cmpuint(peek(pb + 2 * PAGE), ==, 0);  /* lost: zeros, not SIGBUS */
  g_assert_cmpuint(vhu_guard_get_faults(), ==, faults + 1);
  g_assert_cmpuint(peek(pb), ==, 0); /* the whole region was replaced */
  pb[3 * PAGE] = 0xaa;               /* stores complete too, seen by nobody */
  g_assert_cmpuint(vhu_iov_to_buf(&held, 1, PAGE - 8, buf, sizeof buf), ==, sizeof buf);
  for (guint i = 0; i < sizeof buf; i++)
    g_assert_cmpuint(buf[i], ==, 0);

  g_assert_true(vhu_mem_table_is_damaged(t));
  g_assert_true(vhu_mem_table_is_damaged(shared));
  g_assert_false(vhu_mem_table_is_damaged(only_a));
  g_assert_true(region_info(t, 1).retired);
  g_assert_false(region_info(t, 0).retired);
  g_assert_false(vhu_mem_table_get_region(t, 2, &(VhuMemRegionInfo){ 0 }));
  len = 1;
  g_assert_null(vhu_mem_gpa_to_host(t, 0x100000, &len));
  g_assert_cmpuint(len, ==, 0);
  g_assert_null(vhu_mem_uva_to_host(t, 0x900000, 1));
  g_assert_cmpint(vhu_mem_gpa_to_iov(t, 0x100000, 16, iov, 2), ==, -1);
  /* The other region still works. */
  len = 1;
  g_assert_cmpuint(peek(vhu_mem_gpa_to_host(t, 3 * PAGE, &len)), ==, pattern(3 * PAGE, 1));
  g_assert_nonnull(vhu_mem_uva_to_host(t, 0x800000, 4 * PAGE));
  /* A new region over the shrunk file is refused; pointers stay valid for
   * as long as a table holds the mapping, then it goes. */
  add_fails(only_a, 0x100000, 4 * PAGE, 0x900000, 0, b, 8, "file too short", "0x1000");
  vhu_mem_table_unref(t);
  g_assert_true(is_mapped(pb));
  vhu_mem_table_unref(shared);
  g_assert_false(is_mapped(pb));
  vhu_mem_table_unref(only_a);
  close(a);
  close(b);
}

/* A file sealed against shrinking is recorded as sealed (no guard needed:
 * it cannot be truncated); other seals do not count. */
static void
test_sealed_region(void)
{
  int sealed = memfd_create("test-mem-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  int seal_only = memfd_create("test-mem-seal", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  int plain = make_memfd(PAGE, 3);
  VhuMemTable *t = vhu_mem_table_new();
  VhuMemRegionInfo info;

  g_assert_cmpint(sealed, >=, 0);
  g_assert_cmpint(seal_only, >=, 0);
  g_assert_cmpint(ftruncate(sealed, 2 * PAGE), ==, 0);
  g_assert_cmpint(ftruncate(seal_only, PAGE), ==, 0);
  g_assert_cmpint(fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), ==, 0);
  g_assert_cmpint(fcntl(seal_only, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SEAL), ==, 0);
  t = add_ok(t, 0, 2 * PAGE, 0x10000, 0, sealed);
  t = add_ok(t, 4 * PAGE, PAGE, 0x20000, 0, seal_only);
  t = add_ok(t, 8 * PAGE, PAGE, 0x30000, 0, plain);
  info = region_info(t, 0);
  g_assert_cmphex(info.gpa, ==, 0);
  g_assert_cmphex(info.size, ==, 2 * PAGE);
  g_assert_cmphex(info.uva, ==, 0x10000);
  g_assert_true(info.sealed);
  g_assert_false(region_info(t, 1).sealed);
  g_assert_false(region_info(t, 2).sealed);
  g_assert_cmpint(ftruncate(sealed, 0), ==, -1);
  g_assert_cmpint(errno, ==, EPERM);
  vhu_mem_table_unref(t);
  close(sealed);
  close(seal_only);
  close(plain);
}

static int
open_fds(void)
{
  GDir *dir = g_dir_open("/proc/self/fd", 0, NULL);
  int n = 0;

  g_assert_nonnull(dir);
  while (g_dir_read_name(dir))
    n++;
  g_dir_close(dir);
  return n;
}

static int
sealed_memfd(gsize size, guint8 seed)
{
  int fd = memfd_create("test-mem-export", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  g_autofree guint8 *data = g_malloc(size);

  g_assert_cmpint(fd, >=, 0);
  for (gsize i = 0; i < size; i++)
    data[i] = pattern(i, seed);
  g_assert_cmpint(pwrite(fd, data, size, 0), ==, (gssize)size);
  g_assert_cmpint(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), ==, 0);
  return fd;
}

/* Export: a sealed region's file pieces (a duplicate fd that reads the same
 * bytes, file offsets with mmap_offset applied), a range across two regions
 * in two pieces, none for an unsealed region or outside the table; the
 * duplicates live with the mapping: while any table holds it, closed with
 * the last one. */
static void
test_export_fd(void)
{
  int base = open_fds();
  int a = sealed_memfd(PAGE + 4 * PAGE, 1), b = sealed_memfd(2 * PAGE, 2);
  int plain = make_memfd(PAGE, 3);
  VhuMemTable *t = vhu_mem_table_new(), *without_a;
  VhuMemRegionDesc rb = { 4 * PAGE, 2 * PAGE, 0x50000, 0 };
  g_autoptr(GArray) pieces = g_array_new(FALSE, FALSE, sizeof(VhuMemFdPiece));
  VhuMemFdPiece *p;
  guint64 len = 4 * PAGE;
  guint8 *host, byte;

  /* Region a: gpa [0, 4 pages) is its file from page 1 on. */
  t = add_ok(t, 0, 4 * PAGE, 0x10000, PAGE, a);
  t = add_ok(t, 4 * PAGE, 2 * PAGE, 0x50000, 0, b);
  t = add_ok(t, 8 * PAGE, PAGE, 0x90000, 0, plain);
  g_assert_cmpint(open_fds(), ==, base + 3 + 2); /* ours, and a duplicate per sealed file */
  host = vhu_mem_gpa_to_host(t, 100, &len);
  g_assert_true(vhu_mem_host_to_fd(t, host, 300, pieces));
  g_assert_cmpuint(pieces->len, ==, 1);
  p = &g_array_index(pieces, VhuMemFdPiece, 0);
  g_assert_cmphex(p->offset, ==, PAGE + 100);
  g_assert_cmphex(p->len, ==, 300);
  g_assert_cmpint(p->fd, !=, a);
  g_assert_cmpint(pread(p->fd, &byte, 1, (off_t)p->offset), ==, 1);
  g_assert_cmpuint(byte, ==, pattern(PAGE + 100, 1));

  /* The two mappings are not adjacent in host memory: one range of a's
   * mapping, then b's from its start, each its own piece. */
  g_array_set_size(pieces, 0);
  g_assert_true(vhu_mem_host_to_fd(t, host - 100 + 3 * PAGE, PAGE, pieces));
  len = PAGE;
  g_assert_true(vhu_mem_host_to_fd(t, vhu_mem_gpa_to_host(t, 4 * PAGE, &len), PAGE, pieces));
  g_assert_cmpuint(pieces->len, ==, 2);
  g_assert_cmphex(g_array_index(pieces, VhuMemFdPiece, 0).offset, ==, 4 * PAGE);
  g_assert_cmphex(g_array_index(pieces, VhuMemFdPiece, 1).offset, ==, 0);
  g_assert_cmpint(g_array_index(pieces, VhuMemFdPiece, 0).fd, !=,
                  g_array_index(pieces, VhuMemFdPiece, 1).fd);

  /* Past the end of a's mapping (unless another sealed mapping happens to
   * follow it), the unsealed region, no mapping at all: refused, the list
   * unchanged. */
  {
    g_autoptr(GArray) probe = g_array_new(FALSE, FALSE, sizeof(VhuMemFdPiece));
    gboolean next_mapped = vhu_mem_host_to_fd(t, host - 100 + 4 * PAGE, 1, probe);

    g_assert_cmpint(vhu_mem_host_to_fd(t, host - 100 + 3 * PAGE, PAGE + 1, probe), ==, next_mapped);
  }
  len = PAGE;
  g_assert_false(vhu_mem_host_to_fd(t, vhu_mem_gpa_to_host(t, 8 * PAGE, &len), 1, pieces));
  g_assert_false(vhu_mem_host_to_fd(t, &byte, 1, pieces));
  g_assert_cmpuint(pieces->len, ==, 2);

  /* A table without region a keeps b's duplicate; a's closes with t, b's
   * with the last table. */
  without_a = vhu_mem_table_remove(t, &(VhuMemRegionDesc){ 0, 4 * PAGE, 0x10000, PAGE }, NULL);
  g_assert_nonnull(without_a);
  vhu_mem_table_unref(t);
  g_assert_cmpint(open_fds(), ==, base + 3 + 1);
  g_array_set_size(pieces, 0);
  len = PAGE;
  g_assert_true(vhu_mem_host_to_fd(
      without_a, vhu_mem_gpa_to_host(without_a, rb.guest_phys_addr, &len), PAGE, pieces));
  vhu_mem_table_unref(without_a);
  g_assert_cmpint(open_fds(), ==, base + 3);
  close(a);
  close(b);
  close(plain);
  g_assert_cmpint(open_fds(), ==, base);
}

/* The kernel reports lost pages a system call reads as EFAULT, no signal:
 * the probe touches them from user space, which retires the region; the
 * call then goes through with zeros.  Probing intact memory changes
 * nothing. */
static void
test_probe_after_efault(void)
{
  int fd = make_memfd(2 * PAGE, 4), p[2];
  VhuMemTable *t = add_ok(vhu_mem_table_new(), 0, 2 * PAGE, 0x10000, 0, fd);
  struct iovec iov;
  guint8 got[8];

  g_assert_cmpint(vhu_mem_gpa_to_iov(t, PAGE - 4, 8, &iov, 1), ==, 1);
  g_assert_cmpint(pipe(p), ==, 0);
  g_assert_false(vhu_guard_probe_iov(&iov, 1));
  g_assert_cmpint(write(p[1], iov.iov_base, iov.iov_len), ==, 8);
  g_assert_cmpint(read(p[0], got, sizeof got), ==, 8);
  g_assert_cmpuint(got[0], ==, pattern(PAGE - 4, 4));

  g_assert_cmpint(ftruncate(fd, 0), ==, 0);
  g_assert_cmpint(write(p[1], iov.iov_base, iov.iov_len), ==, -1);
  g_assert_cmpint(errno, ==, EFAULT);
  g_assert_false(vhu_mem_table_is_damaged(t)); /* no signal, nothing retired yet */
  g_assert_true(vhu_guard_probe_iov(&iov, 1));
  g_assert_true(vhu_mem_table_is_damaged(t));
  g_assert_cmpint(write(p[1], iov.iov_base, iov.iov_len), ==, 8);
  g_assert_cmpint(read(p[0], got, sizeof got), ==, 8);
  for (guint i = 0; i < sizeof got; i++)
    g_assert_cmpuint(got[i], ==, 0);
  vhu_mem_table_unref(t);
  close(p[0]);
  close(p[1]);
  close(fd);
}

/* Lets every thread start at once. */
typedef struct {
  GMutex lock;
  GCond cond;
  gboolean open;
} Gate;

typedef struct {
  guint8 *p;
  Gate *go;
  guint sum;
} Toucher;

static gpointer
touch_main(gpointer data)
{
  Toucher *w = data;

  g_mutex_lock(&w->go->lock);
  while (!w->go->open)
    g_cond_wait(&w->go->cond, &w->go->lock);
  g_mutex_unlock(&w->go->lock);
  for (guint i = 0; i < 8 * PAGE; i += 64)
    w->sum += peek(w->p + i);
  return NULL;
}

/* Many guarded mappings (the registry grows past its first block), two
 * truncated ones faulted by eight threads at once: each is retired exactly
 * once, every thread reads zeros, the others are untouched. */
static void
test_fault_race(void)
{
  enum { N_TABLES = 150, N_THREADS = 8 };
  VhuMemTable *tables[N_TABLES];
  int fds[N_TABLES];
  Toucher w[N_THREADS];
  GThread *threads[N_THREADS];
  Gate go_, *go = &go_;
  guint faults = vhu_guard_get_faults(), victims[2] = { 70, 140 };

  for (guint i = 0; i < N_TABLES; i++) {
    fds[i] = make_memfd(8 * PAGE, (guint8)i);
    tables[i] = add_ok(vhu_mem_table_new(), 0, 8 * PAGE, 0x10000, 0, fds[i]);
  }
  g_mutex_init(&go->lock);
  g_cond_init(&go->cond);
  go->open = FALSE;
  for (guint v = 0; v < 2; v++)
    g_assert_cmpint(ftruncate(fds[victims[v]], 0), ==, 0);
  for (guint i = 0; i < N_THREADS; i++) {
    guint64 len = 8 * PAGE;

    w[i] = (Toucher){ vhu_mem_gpa_to_host(tables[victims[i % 2]], 0, &len), go, 0 };
    threads[i] = g_thread_new("toucher", touch_main, &w[i]);
  }
  g_mutex_lock(&go->lock);
  go->open = TRUE;
  g_cond_broadcast(&go->cond);
  g_mutex_unlock(&go->lock);
  for (guint i = 0; i < N_THREADS; i++) {
    g_thread_join(threads[i]);
    g_assert_cmpuint(w[i].sum, ==, 0);
  }
  g_assert_cmpuint(vhu_guard_get_faults(), ==, faults + 2);
  for (guint i = 0; i < N_TABLES; i++) {
    guint64 len = 1;
    gboolean victim = i == victims[0] || i == victims[1];

    g_assert_cmpint(vhu_mem_table_is_damaged(tables[i]), ==, victim);
    if (!victim)
      g_assert_cmpuint(peek(vhu_mem_gpa_to_host(tables[i], 5, &len)), ==, pattern(5, (guint8)i));
    vhu_mem_table_unref(tables[i]);
    close(fds[i]);
  }
  g_mutex_clear(&go->lock);
  g_cond_clear(&go->cond);
}

/* Runs @func in a child process and returns its wait status. */
static int
in_child(void (*func)(void))
{
  int status = 0;
  pid_t pid = fork();

  g_assert_cmpint(pid, >=, 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);

    /* Quiet: a sanitizer reports the expected death at length. */
    if (null >= 0 && !g_test_verbose())
      dup2(null, 2);
    func();
    _exit(0);
  }
  g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
  return status;
}

/* A shared mapping of a file of our own, outside guest memory, truncated
 * and touched. */
static void
child_fault_outside(void)
{
  int fd = memfd_create("not-guest", MFD_CLOEXEC);
  volatile guint8 *p;

  if (fd < 0 || ftruncate(fd, 2 * PAGE) < 0)
    _exit(2);
  p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED || ftruncate(fd, 0) < 0)
    _exit(3);
  (void)p[PAGE];
}

static void
child_raise(void)
{
  raise(SIGBUS);
}

static void
assert_killed_by_sigbus(int status)
{
#ifdef UNDER_ASAN
  /* The sanitizer's handler came first: it reports and ends the process. */
  g_assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
#else
  g_assert_true(WIFSIGNALED(status));
  g_assert_cmpint(WTERMSIG(status), ==, SIGBUS);
#endif
}

/* With the handler installed (a guarded region exists), a SIGBUS outside
 * guest memory still ends the process as it did without us, whether the
 * kernel raised it for a fault or someone sent it. */
static void
test_fault_outside_guest_memory(void)
{
  int fd = make_memfd(PAGE, 5);
  VhuMemTable *t = add_ok(vhu_mem_table_new(), 0, PAGE, 0x10000, 0, fd);
  guint faults = vhu_guard_get_faults();
  struct sigaction sa;

  g_assert_cmpint(sigaction(SIGBUS, NULL, &sa), ==, 0);
  g_assert_true(sa.sa_flags & SA_SIGINFO);
  assert_killed_by_sigbus(in_child(child_fault_outside));
  assert_killed_by_sigbus(in_child(child_raise));
  g_assert_cmpuint(vhu_guard_get_faults(), ==, faults);
  g_assert_false(vhu_mem_table_is_damaged(t));
  vhu_mem_table_unref(t);
  close(fd);
}

static void
previous_handler(int sig, siginfo_t *info, void *uctx)
{
  static const char msg[] = "previous handler called\n";

  (void)!write(2, msg, sizeof msg - 1);
  _exit(42);
}

/* A SIGBUS handler installed before ours gets the faults that are not in
 * guest memory, and only those. */
static void
test_chains_to_previous_handler(void)
{
  if (g_test_subprocess()) {
    struct sigaction sa = { 0 };
    int guest = make_memfd(2 * PAGE, 6);
    VhuMemTable *t;
    guint64 len = 2 * PAGE;
    guint8 *p;

    sa.sa_sigaction = previous_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    g_assert_cmpint(sigaction(SIGBUS, &sa, NULL), ==, 0);
    t = add_ok(vhu_mem_table_new(), 0, 2 * PAGE, 0x10000, 0, guest);
    p = vhu_mem_gpa_to_host(t, 0, &len);
    g_assert_cmpint(ftruncate(guest, 0), ==, 0);
    g_assert_cmpuint(peek(p + PAGE), ==, 0); /* ours */
    g_assert_true(vhu_mem_table_is_damaged(t));
    g_printerr("guest fault survived\n");
    child_fault_outside(); /* the previous handler's */
    g_printerr("outside fault survived\n");
    return;
  }
  g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
  g_test_trap_assert_failed();
  g_test_trap_assert_stderr("*guest fault survived*previous handler called*");
  g_test_trap_assert_stderr_unmatched("*outside fault survived*");
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
  g_test_add_func("/mem/truncated-region", test_truncated_region);
  g_test_add_func("/mem/sealed-region", test_sealed_region);
  g_test_add_func("/mem/export-fd", test_export_fd);
  g_test_add_func("/mem/probe-after-efault", test_probe_after_efault);
  g_test_add_func("/mem/fault-race", test_fault_race);
  g_test_add_func("/mem/fault-outside-guest-memory", test_fault_outside_guest_memory);
  g_test_add_func("/mem/chains-to-previous-handler", test_chains_to_previous_handler);
  return g_test_run();
}
