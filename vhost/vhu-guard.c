/* vhu-guard.c: surviving SIGBUS on shared mappings whose file shrank.
 *
 * The registry is a linked list of fixed arrays of slots that only grows
 * (chunks are never freed, so the handler can walk it at any time).  A
 * slot's state is the only thing written concurrently:
 *
 *   FREE --add (CAS)--> CLAIMED --add--> ACTIVE --handler (CAS)--> RETIRING
 *     ^                                    |                          |
 *     +------------remove (CAS)------------+<------ RETIRED <---------+
 *
 * start/len are written only while a slot is CLAIMED and are stable while
 * it is ACTIVE, RETIRING or RETIRED.  The handler reads them without
 * owning the slot, takes it (ACTIVE -> RETIRING) and then checks them again:
 * a slot freed and reused for another mapping in between is put back.
 * remove() never frees a RETIRING slot, so a mapping is never unmapped (and
 * its address range reused) while the handler maps zero pages over it.
 *
 * The handler uses only atomics and plain system calls (mmap, sched_yield
 * while another thread's handler finishes the same mapping, sigaction,
 * raise); it allocates nothing and logs nothing (the owners of the memory
 * log, outside signal context). */
#include "vhu-guard.h"

#include <errno.h>
#include <signal.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { FREE, CLAIMED, ACTIVE, RETIRING, RETIRED };

#define CHUNK_SLOTS 64

struct _VhuGuard {
  int state;
  guintptr start;
  gsize len;
};

typedef struct Chunk Chunk;
struct Chunk {
  VhuGuard slots[CHUNK_SLOTS];
  Chunk *next;
};

static Chunk first_chunk;
static GMutex grow_lock;
static guint faults;
static struct sigaction previous;

#define LOAD(p)         __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static gboolean
cas(int *state, int from, int to)
{
  return __atomic_compare_exchange_n(state, &from, to, FALSE, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static gboolean
slot_contains(const VhuGuard *g, guintptr addr)
{
  guintptr start = LOAD_RELAXED(&g->start);

  return addr >= start && addr - start < LOAD_RELAXED(&g->len);
}

/* Takes @g for retiring if @addr lies in it.  TRUE with *@done set when
 * another thread retired it already (the faulting access is retried). */
static gboolean
take_slot(VhuGuard *g, guintptr addr, gboolean *done)
{
  for (;;) {
    int s = LOAD(&g->state);

    if (s == FREE || s == CLAIMED || !slot_contains(g, addr))
      return FALSE;
    if (s == RETIRED) {
      *done = TRUE;
      return TRUE;
    }
    if (s == RETIRING) {
      sched_yield(); /* another thread's handler, one mmap away */
      continue;
    }
    if (!cas(&g->state, ACTIVE, RETIRING))
      continue;
    if (slot_contains(g, addr)) {
      *done = FALSE;
      return TRUE;
    }
    STORE(&g->state, ACTIVE); /* reused for another mapping meanwhile */
    return FALSE;
  }
}

/* Retires the guarded mapping holding @addr; FALSE when there is none. */
static gboolean
retire_at(guintptr addr)
{
  for (Chunk *c = &first_chunk; c != NULL; c = LOAD(&c->next)) {
    for (guint i = 0; i < CHUNK_SLOTS; i++) {
      VhuGuard *g = &c->slots[i];
      gboolean done = FALSE;
      void *p;

      if (!take_slot(g, addr, &done))
        continue;
      if (done)
        return TRUE;
      /* Zero pages over the whole mapping, so that no other page of the
       * shrunk file faults again. */
      p = mmap((void *)LOAD_RELAXED(&g->start), LOAD_RELAXED(&g->len), PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        STORE(&g->state, ACTIVE);
        return FALSE;
      }
      __atomic_add_fetch(&faults, 1, __ATOMIC_RELEASE);
      STORE(&g->state, RETIRED);
      return TRUE;
    }
  }
  return FALSE;
}

/* What would have happened without us. */
static void
chain(int sig, siginfo_t *info, void *uctx)
{
  struct sigaction dfl;

  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, info, uctx);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    return;
  }
  if (previous.sa_handler == SIG_IGN && info->si_code <= 0)
    return; /* a SIGBUS sent by someone, ignored as before */
  /* The default action.  A fault re-executes on return and now ends the
   * process; a sent signal is raised again (delivered once we return). */
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGBUS, &dfl, NULL);
  if (info->si_code <= 0)
    raise(SIGBUS);
}

static void
on_sigbus(int sig, siginfo_t *info, void *uctx)
{
  int saved_errno = errno;

  /* si_code > 0: raised by the kernel for an access at si_addr. */
  if (info->si_code <= 0 || !retire_at((guintptr)info->si_addr))
    chain(sig, info, uctx);
  errno = saved_errno;
}

static void
install_handler(void)
{
  static gsize installed;
  struct sigaction sa;

  if (!g_once_init_enter(&installed))
    return;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  /* The previous handler is known before ours can run. */
  if (sigaction(SIGBUS, NULL, &previous) < 0 || sigaction(SIGBUS, &sa, NULL) < 0)
    g_error("cannot install the SIGBUS handler: %s", g_strerror(errno));
  g_once_init_leave(&installed, 1);
}

/* A FREE slot, now CLAIMED by the caller; grows the registry when full. */
static VhuGuard *
claim_slot(void)
{
  Chunk *c = &first_chunk;

  for (;;) {
    Chunk *next;

    for (guint i = 0; i < CHUNK_SLOTS; i++) {
      if (cas(&c->slots[i].state, FREE, CLAIMED))
        return &c->slots[i];
    }
    next = LOAD(&c->next);
    if (next == NULL) {
      g_mutex_lock(&grow_lock);
      next = LOAD(&c->next);
      if (next == NULL) {
        next = g_new0(Chunk, 1);
        STORE(&c->next, next);
      }
      g_mutex_unlock(&grow_lock);
    }
    c = next;
  }
}

VhuGuard *
vhu_guard_add(void *addr, gsize len)
{
  gsize page = (gsize)sysconf(_SC_PAGESIZE);
  guintptr start = (guintptr)addr & ~(guintptr)(page - 1);
  VhuGuard *g;

  g_return_val_if_fail(addr != NULL && len > 0, NULL);
  install_handler();
  g = claim_slot();
  __atomic_store_n(&g->start, start, __ATOMIC_RELAXED);
  /* Whole pages: a fault in the tail of the last one is ours too. */
  __atomic_store_n(&g->len, ((guintptr)addr - start + len + page - 1) & ~(gsize)(page - 1),
                   __ATOMIC_RELAXED);
  STORE(&g->state, ACTIVE);
  return g;
}

void
vhu_guard_remove(VhuGuard *g)
{
  if (g == NULL)
    return;
  for (;;) {
    int s = LOAD(&g->state);

    g_return_if_fail(s != FREE && s != CLAIMED);
    if (s == RETIRING)
      sched_yield();
    else if (cas(&g->state, s, FREE))
      return;
  }
}

gboolean
vhu_guard_is_retired(const VhuGuard *g)
{
  return LOAD(&g->state) == RETIRED;
}

guint
vhu_guard_get_faults(void)
{
  return LOAD_RELAXED(&faults);
}

gboolean
vhu_guard_probe_iov(const struct iovec *iov, guint n)
{
  gsize page = (gsize)sysconf(_SC_PAGESIZE);
  guint before = LOAD(&faults);

  for (guint i = 0; i < n; i++) {
    gsize p = (gsize)(guintptr)iov[i].iov_base, end;

    if (iov[i].iov_len == 0 || !g_size_checked_add(&end, p, iov[i].iov_len))
      continue;
    for (p &= ~(page - 1); p < end; p += page)
      (void)*(volatile const guint8 *)(guintptr)MAX(p, (gsize)(guintptr)iov[i].iov_base);
  }
  return LOAD(&faults) != before;
}
