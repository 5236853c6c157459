/*
 * smp.c - pvdemo: 2-level event channels, virtual time and timers, and SMP.
 *
 *   step_events  moves vCPU 0's vcpu_info into a page of ours
 *                (VCPUOP_register_vcpu_info), binds VIRQ_TIMER and an IPI port,
 *                checks EVTCHNOP_status, a few errors, and an interdomain
 *                loopback pair (alloc_unbound + bind_interdomain with ourselves).
 *   step_time    wallclock and the vcpu_time_info record (pvclock), then the
 *                timer hypercalls: set_timer_op, VCPUOP_set_singleshot_timer
 *                (also with a deadline in the past), SCHEDOP_poll with a
 *                timeout, SCHEDOP_poll on a masked port + EVTCHNOP_unmask, and
 *                a critical section with events masked (the tick that arrives
 *                meanwhile is delivered when they are unmasked).
 *   step_smp     counts the vCPUs (VCPUOP_is_up answers -ENOENT past the last),
 *                brings each secondary up with VCPUOP_initialise (its own stack,
 *                GDT, trap table, callbacks, kernel stack, our CR3) + VCPUOP_up,
 *                exchanges IPIs both ways, checks that a TLB flush for all vCPUs
 *                reaches the others, lets every vCPU count timer ticks, prints
 *                the counts and takes the secondaries offline (VCPUOP_down).
 *
 * The event callback (head.S hypervisor_callback -> kernel.c
 * do_hypervisor_callback -> evtchn_do_upcall) scans like Linux's 2-level
 * handler: clear evtchn_upcall_pending, xchg evtchn_pending_sel with 0, and for
 * each set bit take evtchn_pending & ~evtchn_mask & the ports of this vCPU,
 * clear each pending bit and dispatch the port.  Blocking always goes through
 * SCHEDOP_block with events masked before the test (it unmasks atomically),
 * so no wake-up is lost.  Only vCPU 0 prints; the secondaries leave their
 * results in struct vcpu_state.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "xen.h"
#include "hypercall.h"
#include "lib.h"
#include "pvdemo.h"

#define NSEC_PER_USEC       1000ULL
#define NSEC_PER_MSEC       1000000ULL
#define WAIT_LIMIT_NS       (2000 * NSEC_PER_MSEC)  /* give up a wait after 2 s */
#define TICK_PERIOD_NS      (10 * NSEC_PER_MSEC)    /* Xen's default periodic timer */
#define TIMER_SLACK_NS      (100 * NSEC_PER_USEC)   /* how late a timer event may be */
#define SMP_TICKS           5                       /* ticks each vCPU counts */
#define SPIN_LIMIT          50000000u

/* IPI commands, in struct vcpu_state.ipi_cmd of the target */
enum { IPI_NONE, IPI_HELLO, IPI_PING, IPI_PONG, IPI_READ, IPI_STOP };
/* What a port is for (the dispatch table) */
enum { PK_NONE, PK_TIMER, PK_IPI, PK_LOOPBACK, PK_BACKEND };

uint8_t ap_stacks[NR_VCPUS][AP_STACK_SIZE] __attribute__((aligned(AP_STACK_SIZE)));
static struct vcpu_info vcpu_info_page[PAGE_SIZE / sizeof(struct vcpu_info)] PAGE_ALIGNED;
static struct vcpu_runstate_info runstate_area[NR_VCPUS];
static struct vcpu_guest_context ap_ctxt;
static uint8_t port_kind[NR_EVENT_CHANNELS];
static uint8_t tlb_page_a[PAGE_SIZE] PAGE_ALIGNED, tlb_page_b[PAGE_SIZE] PAGE_ALIGNED;
static unsigned int nr_vcpus_up = 1;

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */
static inline uint64_t rdtsc(void)
{
    uint64_t v;

    asm volatile ("rdtsc" : "=A" (v));
    return v;
}

static inline void sync_set_bit(unsigned int nr, volatile uint32_t *words)
{
    __atomic_fetch_or(&words[nr / 32], 1u << (nr % 32), __ATOMIC_SEQ_CST);
}

static inline void sync_clear_bit(unsigned int nr, volatile uint32_t *words)
{
    __atomic_fetch_and(&words[nr / 32], ~(1u << (nr % 32)), __ATOMIC_SEQ_CST);
}

static inline int test_bit(unsigned int nr, const volatile uint32_t *words)
{
    return (words[nr / 32] >> (nr % 32)) & 1;
}

static int evtchn_op(int cmd, void *arg)
{
    return HYPERVISOR_event_channel_op(cmd, arg);
}

static int evtchn_port(int cmd, evtchn_port_t port)
{
    struct evtchn_port_op op = { .port = port };

    return evtchn_op(cmd, &op);
}

static int evtchn_status(evtchn_port_t port, struct evtchn_status *st)
{
    memset(st, 0, sizeof(*st));
    st->dom = DOMID_SELF;
    st->port = port;
    return evtchn_op(EVTCHNOP_status, st);
}

/* The port is dispatched by vCPU v (Linux: bind_evtchn_to_cpu). */
static void own_port(struct vcpu_state *v, evtchn_port_t port, unsigned int kind)
{
    port_kind[port] = kind;
    v->port_mask[port / 32] |= 1u << (port % 32);
}

/* ------------------------------------------------------------------------
 * Virtual time: vcpu_time_info (public/xen.h) read with the version
 * protocol, scaled like Linux's pvclock: ns = system_time +
 * ((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul >> 32.
 * ------------------------------------------------------------------------ */
static uint64_t xen_clock_ns(void)
{
    volatile struct vcpu_time_info *t = &this_vcpu()->vi->time;
    uint64_t stamp, sys, delta;
    uint32_t ver, mul;
    int8_t shift;

    do {
        ver = t->version;
        barrier();
        stamp = t->tsc_timestamp;
        sys = t->system_time;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        delta = rdtsc() - stamp;
        barrier();
    } while ((ver & 1) || ver != t->version);
    if (shift >= 0)
        delta <<= shift;
    else
        delta >>= -shift;
    return sys + (((delta & 0xffffffffULL) * mul) >> 32) + (delta >> 32) * mul;
}

/* Block until *p >= target (SCHEDOP_block with events masked before the
 * test, so an event between the test and the block still wakes us). */
static int wait_until(volatile unsigned int *p, unsigned int target)
{
    uint64_t end = xen_clock_ns() + WAIT_LIMIT_NS;

    for (;;) {
        events_disable();
        if (*p >= target)
            break;
        if (xen_clock_ns() >= end) {
            events_enable();
            return 0;
        }
        (void)HYPERVISOR_sched_op(SCHEDOP_block, NULL);    /* returns with events unmasked */
    }
    events_enable();
    return 1;
}

/* ------------------------------------------------------------------------
 * The event upcall: Linux's 2-level scan (drivers/xen/events/events_2l.c)
 * ------------------------------------------------------------------------ */
static void send_ipi(unsigned int target, uint32_t cmd, uint32_t arg)
{
    struct vcpu_state *t = &vcpus[target];

    t->ipi_arg = arg;
    t->ipi_cmd = cmd;
    barrier();
    (void)evtchn_port(EVTCHNOP_send, t->ipi_port);
}

static void handle_ipi(struct vcpu_state *v)
{
    uint32_t cmd = v->ipi_cmd;

    v->ipi_cmd = IPI_NONE;
    switch (cmd) {
    case IPI_PING:
        send_ipi(0, IPI_PONG, v->id);
        break;
    case IPI_READ:
        v->ipi_result = *(volatile uint32_t *)v->ipi_arg;
        send_ipi(0, IPI_PONG, v->id);
        break;
    case IPI_STOP:
        v->stop = 1;
        break;
    default:                    /* HELLO, PONG: counting them is all */
        break;
    }
}

static void handle_port(struct vcpu_state *v, evtchn_port_t port)
{
    switch (port_kind[port]) {
    case PK_TIMER:
        v->ticks++;
        v->last_tick_ns = xen_clock_ns();
        break;
    case PK_IPI:
        v->ipis++;
        handle_ipi(v);
        break;
    default:
        v->other_events++;
        break;
    }
}

void evtchn_do_upcall(void)
{
    struct vcpu_state *v = this_vcpu();
    volatile struct vcpu_info *vi = v->vi;
    volatile struct shared_info *s = HYPERVISOR_shared_info;
    uint32_t sel, pend;
    unsigned int w, b, found;

    do {
        vi->evtchn_upcall_pending = 0;
        sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        found = 0;
        while (sel) {
            w = __builtin_ctz(sel);
            sel &= sel - 1;
            pend = s->evtchn_pending[w] & ~s->evtchn_mask[w] & v->port_mask[w];
            while (pend) {
                b = __builtin_ctz(pend);
                pend &= pend - 1;
                sync_clear_bit(w * 32 + b, s->evtchn_pending);
                handle_port(v, w * 32 + b);
                found++;
            }
        }
        if (!found)
            v->spurious++;
    } while (vi->evtchn_upcall_pending);
}

/* ------------------------------------------------------------------------
 * Per-vCPU set-up, done by each vCPU for itself (events masked)
 * ------------------------------------------------------------------------ */
static int register_vcpu_info(struct vcpu_state *v)
{
    struct vcpu_register_vcpu_info info = { 0 };
    volatile struct vcpu_info *nvi = &vcpu_info_page[v->id];
    int rc;

    info.mfn = virt_to_mfn(nvi);
    info.offset = (uint32_t)nvi & (PAGE_SIZE - 1);
    rc = HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, v->id, &info);
    if (rc == 0)
        v->vi = nvi;            /* from now on Xen only updates the new copy */
    return rc;
}

static int register_runstate(struct vcpu_state *v)
{
    struct vcpu_register_runstate_memory_area area = { .addr.p = 0 };

    area.addr.v = &runstate_area[v->id];
    return HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, v->id, &area);
}

static int bind_timer(struct vcpu_state *v)
{
    struct evtchn_bind_virq bv = { .virq = VIRQ_TIMER, .vcpu = v->id };
    int rc = evtchn_op(EVTCHNOP_bind_virq, &bv);

    if (rc == 0) {
        v->timer_port = bv.port;
        own_port(v, bv.port, PK_TIMER);
    }
    return rc;
}

static int bind_ipi(struct vcpu_state *v)
{
    struct evtchn_bind_ipi bi = { .vcpu = v->id };
    int rc = evtchn_op(EVTCHNOP_bind_ipi, &bi);

    if (rc == 0) {
        v->ipi_port = bi.port;
        own_port(v, bi.port, PK_IPI);
    }
    return rc;
}

/* Mask events, spin until an event is pending (the next timer tick), check
 * it was not delivered, unmask: it must be delivered then. */
static void critical_section(struct vcpu_state *v)
{
    unsigned int before, n = SPIN_LIMIT;
    int pending;

    events_disable();
    before = v->ticks;
    while (!v->vi->evtchn_upcall_pending && --n)
        cpu_relax();
    pending = v->vi->evtchn_upcall_pending;
    v->crit_during = v->ticks - before;
    events_enable();            /* upcall_pending set: force the callback */
    v->crit_after = v->ticks - before;
    v->crit_ok = pending && v->crit_during == 0 && v->crit_after >= 1;
}

/* ------------------------------------------------------------------------
 * Step 13: event channels on vCPU 0
 * ------------------------------------------------------------------------ */
void step_events(void)
{
    struct vcpu_state *v = this_vcpu();
    volatile struct vcpu_info *vi;
    struct evtchn_alloc_unbound au;
    struct evtchn_bind_interdomain bi;
    struct evtchn_bind_virq bv;
    struct evtchn_bind_vcpu bvc;
    struct evtchn_status st, st2;
    unsigned int before, i;
    evtchn_port_t pa, pb;
    uint16_t domid;
    int rc, rc2;

    events_disable();
    v->id = 0;

    rc = register_vcpu_info(v);
    vi = v->vi;
    check(rc == 0 && vi == &vcpu_info_page[0] && vi->evtchn_upcall_mask == 1 &&
          vi->evtchn_upcall_pending == 1 && vi->evtchn_pending_sel == 0xffffffff &&
          vi->time.version && !(vi->time.version & 1),
          "VCPUOP_register_vcpu_info: vcpu_info moved to %p (rc %d): mask %u copied, "
          "pending %u and pending_sel %#x set by Xen, time version %u",
          vi, rc, vi->evtchn_upcall_mask, vi->evtchn_upcall_pending, vi->evtchn_pending_sel,
          vi->time.version);
    /* Xen 4.17's map_vcpu_info (common/domain.c): -EINVAL once registered; from 4.18 on
     * (map_guest_area) -EBUSY. */
    rc = register_vcpu_info(v);
    check(rc == -XEN_EINVAL || rc == -XEN_EBUSY,
          "VCPUOP_register_vcpu_info again: rc %d (%s)", rc,
          rc == -XEN_EINVAL ? "-EINVAL, as Xen 4.17" : rc == -XEN_EBUSY ? "-EBUSY, as Xen >= 4.18" : "?");
    rc = register_runstate(v);
    check(rc == 0 && runstate_area[0].state == RUNSTATE_running,
          "VCPUOP_register_runstate_memory_area: rc %d, state %d (running)", rc, runstate_area[0].state);

    rc = bind_timer(v);
    rc2 = bind_ipi(v);
    check(rc == 0 && rc2 == 0 && v->timer_port && v->ipi_port && v->timer_port != v->ipi_port,
          "EVTCHNOP_bind_virq(VIRQ_TIMER, vcpu 0) -> port %u (rc %d), EVTCHNOP_bind_ipi(vcpu 0) -> port %u (rc %d)",
          v->timer_port, rc, v->ipi_port, rc2);
    rc = evtchn_status(v->timer_port, &st);
    rc2 = evtchn_status(v->ipi_port, &st2);
    check(rc == 0 && st.status == EVTCHNSTAT_virq && st.vcpu == 0 && st.u.virq == VIRQ_TIMER &&
          rc2 == 0 && st2.status == EVTCHNSTAT_ipi && st2.vcpu == 0,
          "EVTCHNOP_status: port %u virq %u on vcpu %u, port %u ipi on vcpu %u",
          v->timer_port, st.u.virq, st.vcpu, v->ipi_port, st2.vcpu);

    bv.virq = VIRQ_TIMER;
    bv.vcpu = 0;
    rc = evtchn_op(EVTCHNOP_bind_virq, &bv);
    bv.virq = VIRQ_CONSOLE;
    bv.vcpu = 1;
    rc2 = evtchn_op(EVTCHNOP_bind_virq, &bv);
    bvc.port = v->ipi_port;
    bvc.vcpu = 0;
    i = evtchn_op(EVTCHNOP_bind_vcpu, &bvc);
    check(rc == -XEN_EEXIST && rc2 == -XEN_EINVAL && (int)i == -XEN_EINVAL,
          "errors: VIRQ_TIMER bound twice %d (-EEXIST), global VIRQ_CONSOLE on vcpu 1 %d (-EINVAL), "
          "EVTCHNOP_bind_vcpu of an IPI port %d (-EINVAL)", rc, rc2, (int)i);
    rc = evtchn_port(EVTCHNOP_send, 0);
    rc2 = evtchn_port(EVTCHNOP_close, 0);
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL,
          "port 0 is reserved: EVTCHNOP_send %d, EVTCHNOP_close %d (-EINVAL)", rc, rc2);

    /* The toolstack's ports: bound by the backends in domain 0. */
    rc = evtchn_status(xen_start_info->store_evtchn, &st);
    rc2 = evtchn_status(xen_start_info->console.domU.evtchn, &st2);
    check(rc == 0 && rc2 == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == 0 &&
          st2.status == EVTCHNSTAT_interdomain && st2.u.interdomain.dom == 0,
          "xenstore port %u -> dom%u port %u, console port %u -> dom%u port %u (interdomain)",
          xen_start_info->store_evtchn, st.u.interdomain.dom, st.u.interdomain.port,
          xen_start_info->console.domU.evtchn, st2.u.interdomain.dom, st2.u.interdomain.port);
    own_port(v, xen_start_info->store_evtchn, PK_BACKEND);
    own_port(v, xen_start_info->console.domU.evtchn, PK_BACKEND);

    /* Unmasking takes the spurious upcall register_vcpu_info asked for. */
    before = v->upcalls;
    events_enable();
    check(v->upcalls == before + 1,
          "events unmasked: the upcall forced by register_vcpu_info was taken (%u)", v->upcalls - before);

    /* A loopback channel: alloc_unbound, then bind_interdomain with ourselves. */
    events_disable();
    au.dom = DOMID_SELF;
    au.remote_dom = DOMID_SELF;
    rc = evtchn_op(EVTCHNOP_alloc_unbound, &au);
    pa = au.port;
    rc2 = evtchn_status(pa, &st);
    domid = st.u.unbound.dom;
    check(rc == 0 && rc2 == 0 && st.status == EVTCHNSTAT_unbound && domid != DOMID_SELF,
          "EVTCHNOP_alloc_unbound -> port %u, unbound for dom%u (our domain id)", pa, domid);
    bi.remote_dom = DOMID_SELF;
    bi.remote_port = pa;
    rc = evtchn_op(EVTCHNOP_bind_interdomain, &bi);
    pb = bi.local_port;
    own_port(v, pa, PK_LOOPBACK);
    own_port(v, pb, PK_LOOPBACK);
    rc2 = evtchn_status(pb, &st);
    evtchn_status(pa, &st2);
    check(rc == 0 && rc2 == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == domid &&
          st.u.interdomain.port == pa && st2.status == EVTCHNSTAT_interdomain && st2.u.interdomain.port == pb &&
          test_bit(pb, HYPERVISOR_shared_info->evtchn_pending),
          "EVTCHNOP_bind_interdomain(dom%u, port %u) -> port %u, connected both ways, and pending at once",
          domid, pa, pb);
    before = v->other_events;
    events_enable();
    i = v->other_events - before;
    rc = evtchn_port(EVTCHNOP_send, pa);
    rc2 = evtchn_port(EVTCHNOP_send, pb);
    check(i == 1 && rc == 0 && rc2 == 0 && v->other_events - before == 3,
          "loopback events: 1 on unmask, then EVTCHNOP_send on each end -> %u delivered on the way out",
          v->other_events - before - i);
    rc = evtchn_port(EVTCHNOP_close, pa);
    evtchn_status(pb, &st);
    before = v->other_events;
    rc2 = evtchn_port(EVTCHNOP_send, pb);
    check(rc == 0 && st.status == EVTCHNSTAT_unbound && st.u.unbound.dom == domid && rc2 == 0 &&
          v->other_events == before,
          "EVTCHNOP_close(%u): port %u is unbound again (for dom%u); a send on it is dropped (rc %d)",
          pa, pb, st.u.unbound.dom, rc2);
    rc = evtchn_port(EVTCHNOP_close, pb);
    rc2 = evtchn_port(EVTCHNOP_close, pb);
    check(rc == 0 && rc2 == -XEN_EINVAL, "EVTCHNOP_close(%u) %d, again %d (-EINVAL)", pb, rc, rc2);
    port_kind[pa] = port_kind[pb] = PK_NONE;
    v->port_mask[pa / 32] &= ~(1u << (pa % 32));
    v->port_mask[pb / 32] &= ~(1u << (pb % 32));
}

/* ------------------------------------------------------------------------
 * Step 14: virtual time and the timer hypercalls (vCPU 0, events unmasked)
 * ------------------------------------------------------------------------ */
static int timer_event_after(const char *what, uint64_t deadline, unsigned int before, int rc)
{
    int got = wait_until(&this_vcpu()->ticks, before + 1);
    uint64_t at = this_vcpu()->last_tick_ns;

    return check(rc == 0 && got && at >= deadline && at - deadline < TIMER_SLACK_NS,
                 "%s: VIRQ_TIMER %llu ns after the deadline (blocked in SCHEDOP_block meanwhile; rc %d)",
                 what, (unsigned long long)(at - deadline), rc);
}

void step_time(void)
{
    struct vcpu_state *v = this_vcpu();
    volatile struct shared_info *s = HYPERVISOR_shared_info;
    volatile struct vcpu_time_info *t = &v->vi->time;
    struct vcpu_set_singleshot_timer ss = { 0 };
    struct vcpu_set_periodic_timer per;
    struct sched_poll poll;
    evtchn_port_t ports[1];
    uint64_t a, b, tsc, deadline, timeout, woke;
    unsigned int before, ver;
    int rc, pending;

    events_enable();
    ver = s->wc_version;
    check(!(ver & 1) && s->wc_sec != 0,
          "wallclock: %u.%09u s since 1970 at system time 0 (wc_version %u)", s->wc_sec, s->wc_nsec, ver);
    tsc = rdtsc();
    a = xen_clock_ns();
    b = xen_clock_ns();
    check(!(t->version & 1) && t->tsc_to_system_mul != 0 && b >= a && a >= t->system_time,
          "vcpu_time_info: version %u, tsc_to_system_mul %#x, tsc_shift %d, flags %#x; "
          "TSC %llu, system time %llu ns, then %llu ns",
          t->version, t->tsc_to_system_mul, t->tsc_shift, t->flags, (unsigned long long)tsc,
          (unsigned long long)a, (unsigned long long)b);

    rc = HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, NULL);
    check(rc == 0, "VCPUOP_stop_periodic_timer rc %d", rc);

    before = v->ticks;
    deadline = xen_clock_ns() + 2 * NSEC_PER_MSEC;
    rc = HYPERVISOR_set_timer_op(deadline);
    timer_event_after("set_timer_op(now + 2 ms)", deadline, before, rc);

    before = v->ticks;
    ss.timeout_abs_ns = deadline = xen_clock_ns() + 3 * NSEC_PER_MSEC;
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    timer_event_after("VCPUOP_set_singleshot_timer(now + 3 ms)", deadline, before, rc);

    before = v->ticks;
    ss.timeout_abs_ns = xen_clock_ns() - NSEC_PER_USEC;
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    check(rc == 0 && v->ticks == before + 1,
          "VCPUOP_set_singleshot_timer in the past: the event comes at once (rc %d, %u tick)",
          rc, v->ticks - before);

    /* A poll that times out: the single-shot timer is stopped first. */
    ss.timeout_abs_ns = xen_clock_ns() + NSEC_PER_MSEC;
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    rc |= HYPERVISOR_vcpu_op(VCPUOP_stop_singleshot_timer, 0, NULL);
    before = v->ticks;
    ports[0] = v->timer_port;
    poll.ports = ports;
    poll.nr_ports = 1;
    poll.timeout = timeout = xen_clock_ns() + 3 * NSEC_PER_MSEC;
    rc |= HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
    woke = xen_clock_ns();
    check(rc == 0 && v->ticks == before && woke >= timeout && woke - timeout < TIMER_SLACK_NS,
          "VCPUOP_stop_singleshot_timer, then SCHEDOP_poll(port %u, timeout now + 3 ms) returned %llu ns "
          "after the timeout, no event", ports[0], (unsigned long long)(woke - timeout));

    /* A masked port loses the edge; SCHEDOP_poll still sees it; unmask re-raises. */
    sync_set_bit(v->timer_port, s->evtchn_mask);
    before = v->ticks;
    deadline = xen_clock_ns() + NSEC_PER_MSEC;
    rc = HYPERVISOR_set_timer_op(deadline);
    poll.timeout = timeout = xen_clock_ns() + 20 * NSEC_PER_MSEC;
    rc |= HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
    woke = xen_clock_ns();
    pending = test_bit(v->timer_port, s->evtchn_pending);
    check(rc == 0 && pending && v->ticks == before && !v->vi->evtchn_upcall_pending &&
          woke >= deadline && woke < timeout,
          "SCHEDOP_poll on masked port %u woke %llu ns after the timer's deadline: port pending, "
          "no upcall", v->timer_port, (unsigned long long)(woke - deadline));
    rc = evtchn_port(EVTCHNOP_unmask, v->timer_port);
    check(rc == 0 && v->ticks == before + 1 && !test_bit(v->timer_port, s->evtchn_mask),
          "EVTCHNOP_unmask(%u) re-raised the event: delivered on the way out (rc %d, %u tick)",
          v->timer_port, rc, v->ticks - before);

    per.period_ns = NSEC_PER_MSEC / 2;
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &per);
    per.period_ns = TICK_PERIOD_NS;
    b = HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &per);
    check(rc == -XEN_EINVAL && (int)b == 0,
          "VCPUOP_set_periodic_timer: 0.5 ms -> %d (-EINVAL, below 1 ms), 10 ms -> %d", rc, (int)b);

    critical_section(v);
    check(v->crit_ok,
          "critical section with events masked: a tick arrived (%u delivered meanwhile), "
          "delivered when unmasked (%u)", v->crit_during, v->crit_after);
    before = v->ticks;
    a = xen_clock_ns();
    wait_until(&v->ticks, before + 2);
    b = v->last_tick_ns;
    check(v->ticks >= before + 2 && b - a >= TICK_PERIOD_NS && b - a < 2 * TICK_PERIOD_NS + TIMER_SLACK_NS,
          "periodic VIRQ_TIMER every 10 ms: 2 ticks in %llu ns", (unsigned long long)(b - a));
}

/* ------------------------------------------------------------------------
 * Step 15: secondary vCPUs
 * ------------------------------------------------------------------------ */
void secondary_start(unsigned int id)
{
    struct vcpu_state *v = &vcpus[id];

    v->id = id;
    v->vi = &HYPERVISOR_shared_info->vcpu_info[id];
    v->rc_vcpu_info = register_vcpu_info(v);
    v->rc_runstate = register_runstate(v);
    v->rc_timer = bind_timer(v);
    v->rc_ipi = bind_ipi(v);
    barrier();
    v->online = 1;
    events_enable();            /* takes the upcall register_vcpu_info forces */
    critical_section(v);
    send_ipi(0, IPI_HELLO, id);
    for (;;) {                  /* idle: block until an event, until told to stop */
        events_disable();
        if (v->stop)
            break;
        (void)HYPERVISOR_sched_op(SCHEDOP_block, NULL);
    }
    for (;;)
        (void)HYPERVISOR_vcpu_op(VCPUOP_down, id, NULL);    /* offline (Linux: play_dead) */
}

/* VCPUOP_initialise with a context like Linux's cpu_initialize_context. */
static int bring_up(unsigned int id)
{
    struct vcpu_guest_context *c = &ap_ctxt;
    struct vcpu_state *v0 = &vcpus[0], *v = &vcpus[id];
    const struct trap_info *t;
    uint32_t cr3 = probe_read_cr3();
    unsigned int ntraps = 0, ipis = v0->ipis;
    int rc, rc2, up0, up1;

    memset(c, 0, sizeof(*c));
    c->flags = VGCF_in_kernel;
    c->user_regs.cs = FLAT_KERNEL_CS;
    c->user_regs.ds = c->user_regs.es = c->user_regs.ss = FLAT_KERNEL_DS;
    c->user_regs.eip = (uint32_t)secondary_startup;
    c->user_regs.esp = (uint32_t)&ap_stacks[id][AP_STACK_SIZE];
    c->user_regs.ebx = id;                      /* secondary_startup passes it on */
    c->user_regs.eflags = X86_EFLAGS_IF | 2;
    for (t = trap_table; t->address; t++, ntraps++)
        c->trap_ctxt[t->vector] = *t;
    c->gdt_frames[0] = virt_to_mfn(gdt);
    c->gdt_ents = GDT_ENTRIES;
    c->kernel_ss = FLAT_KERNEL_SS;
    c->kernel_sp = c->user_regs.esp;
    c->ctrlreg[3] = cr3;                        /* xen_pfn_to_cr3(our top table) */
    c->event_callback_cs = FLAT_KERNEL_CS;
    c->event_callback_eip = (uint32_t)hypervisor_callback;
    c->failsafe_callback_cs = FLAT_KERNEL_CS;
    c->failsafe_callback_eip = (uint32_t)failsafe_callback;

    rc = HYPERVISOR_vcpu_op(VCPUOP_initialise, id, c);
    rc2 = HYPERVISOR_vcpu_op(VCPUOP_initialise, id, c);
    up0 = HYPERVISOR_vcpu_op(VCPUOP_is_up, id, NULL);
    check(rc == 0 && rc2 == -XEN_EEXIST && up0 == 0,
          "VCPUOP_initialise(vcpu %u): eip %p, stack %p, cr3 %#x (mfn %#x), GDT mfn %#x, %u traps, "
          "event callback %p: rc %d; again %d (-EEXIST); is_up %d",
          id, (void *)c->user_regs.eip, (void *)c->user_regs.esp, cr3, xen_cr3_to_pfn(cr3),
          c->gdt_frames[0], ntraps, hypervisor_callback, rc, rc2, up0);
    if (rc)
        return 0;
    rc = HYPERVISOR_vcpu_op(VCPUOP_up, id, NULL);
    up1 = HYPERVISOR_vcpu_op(VCPUOP_is_up, id, NULL);
    rc2 = wait_until(&v0->ipis, ipis + 1);
    check(rc == 0 && up1 == 1 && rc2 && v->online && v->rc_vcpu_info == 0 && v->rc_runstate == 0 &&
          v->rc_timer == 0 && v->rc_ipi == 0,
          "VCPUOP_up(vcpu %u) rc %d, is_up %d: it registered its vcpu_info (%d) and runstate area (%d), "
          "bound VIRQ_TIMER -> port %u and an IPI -> port %u, and said hello by IPI",
          id, rc, up1, v->rc_vcpu_info, v->rc_runstate, v->timer_port, v->ipi_port);
    return rc == 0 && rc2;
}

static int ipi_call(unsigned int id, uint32_t cmd, uint32_t arg)
{
    unsigned int ipis = vcpus[0].ipis;

    send_ipi(id, cmd, arg);
    return wait_until(&vcpus[0].ipis, ipis + 1);
}

/* Remap a page under another vCPU's feet: with a flush for all vCPUs, the
 * other one sees the new mapping. */
static void tlb_flush_check(unsigned int id)
{
    volatile uint32_t *pa = (volatile uint32_t *)tlb_page_a, *pb = (volatile uint32_t *)tlb_page_b;
    uint64_t prot = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
    uint32_t mfn_a = virt_to_mfn(tlb_page_a), mfn_b = virt_to_mfn(tlb_page_b);
    static uint32_t vcpumask;
    struct mmuext_op op;
    uint32_t seen_a, seen_b, seen_c;
    int rc1, rc2, rc3, rc4;

    *pa = 0xaaaa0001;
    *pb = 0xbbbb0002;
    ipi_call(id, IPI_READ, (uint32_t)tlb_page_a);
    seen_a = vcpus[id].ipi_result;
    rc1 = HYPERVISOR_update_va_mapping((unsigned long)tlb_page_a, ((uint64_t)mfn_b << PAGE_SHIFT) | prot,
                                       UVMF_INVLPG | UVMF_ALL);
    ipi_call(id, IPI_READ, (uint32_t)tlb_page_a);
    seen_b = vcpus[id].ipi_result;
    check(rc1 == 0 && seen_a == 0xaaaa0001 && seen_b == 0xbbbb0002,
          "vcpu %u reads %#x at %p, then %#x after update_va_mapping(-> mfn %#x, UVMF_INVLPG|UVMF_ALL)",
          id, seen_a, tlb_page_a, seen_b, mfn_b);

    vcpumask = (1u << nr_vcpus_up) - 1;
    rc1 = HYPERVISOR_update_va_mapping((unsigned long)tlb_page_a, ((uint64_t)mfn_a << PAGE_SHIFT) | prot,
                                       UVMF_NONE);
    op.cmd = MMUEXT_INVLPG_MULTI;
    op.arg1.linear_addr = (uint32_t)tlb_page_a;
    op.arg2.vcpumask = (uint32_t)&vcpumask;
    rc2 = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
    ipi_call(id, IPI_READ, (uint32_t)tlb_page_a);
    seen_c = vcpus[id].ipi_result;
    op.cmd = MMUEXT_TLB_FLUSH_MULTI;
    rc3 = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
    op.cmd = MMUEXT_TLB_FLUSH_ALL;
    rc4 = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
    check(rc1 == 0 && rc2 == 0 && seen_c == 0xaaaa0001 && *pa == 0xaaaa0001 && rc3 == 0 && rc4 == 0,
          "mapping restored + MMUEXT_INVLPG_MULTI(vcpus %#x): vcpu %u reads %#x again; "
          "MMUEXT_TLB_FLUSH_MULTI %d, MMUEXT_TLB_FLUSH_ALL %d", vcpumask, id, seen_c, rc3, rc4);
}

static void print_counts(unsigned int n)
{
    unsigned int i;

    events_disable();           /* one consistent snapshot */
    for (i = 0; i < n; i++)
        printk("pvdemo: vcpu%u: %u timer ticks, %u IPIs received\n", i, vcpus[i].ticks, vcpus[i].ipis);
    events_enable();
}

void step_smp(void)
{
    struct vcpu_state *v0 = this_vcpu();
    struct vcpu_runstate_info rs;
    unsigned int n, i, before, round;
    int rc = 0, ok;

    events_enable();
    for (n = 1; n < NR_VCPUS; n++) {
        rc = HYPERVISOR_vcpu_op(VCPUOP_is_up, n, NULL);
        if (rc < 0)
            break;
    }
    if (n == 1) {
        check(rc == -XEN_ENOENT, "VCPUOP_is_up(1) = %d (-ENOENT): pvdemo runs on one vcpu", rc);
        before = v0->ipis;
        send_ipi(0, IPI_HELLO, 0);
        check(v0->ipis == before + 1,
              "an IPI to ourselves (EVTCHNOP_send on port %u) was delivered on the way out", v0->ipi_port);
        ok = wait_until(&v0->ticks, v0->ticks + SMP_TICKS);
        check(ok, "%u more timer ticks on vcpu 0, blocking in between", SMP_TICKS);
        print_counts(1);
        return;
    }
    printk("pvdemo: %u vcpus%s\n", n, rc == -XEN_ENOENT ? "" : " (pvdemo uses the first 8)");

    for (i = 1; i < n; i++) {
        if (!bring_up(i))
            return;
        nr_vcpus_up = i + 1;
        check(vcpus[i].crit_ok,
              "vcpu %u masked events around a critical section: the tick that came meanwhile "
              "(%u delivered then) was delivered after unmasking (%u)",
              i, vcpus[i].crit_during, vcpus[i].crit_after);
    }

    for (round = 0; round < 2; round++) {
        ok = 1;
        for (i = 1; i < n; i++) {
            before = vcpus[i].ipis;
            ok = ok && ipi_call(i, IPI_PING, 0) && vcpus[i].ipis == before + 1;
        }
        check(ok, "IPI round %u: vcpu 0 pinged vcpus 1-%u, each answered with an IPI", round + 1, n - 1);
    }

    tlb_flush_check(1);

    ok = 1;
    for (i = 0; i < n; i++)
        ok = ok && wait_until(&vcpus[i].ticks, SMP_TICKS);
    check(ok, "every vcpu counted %u timer ticks (VIRQ_TIMER bound on each, blocking when idle)", SMP_TICKS);
    print_counts(n);

    for (i = 1; i < n; i++) {
        send_ipi(i, IPI_STOP, 0);
        before = 0;
        while ((rc = HYPERVISOR_vcpu_op(VCPUOP_is_up, i, NULL)) == 1 && before < 200) {
            wait_until(&v0->ticks, v0->ticks + 1);      /* sleep a tick */
            before++;
        }
        rs.state = -1;
        ok = HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, i, &rs);
        check(rc == 0 && ok == 0 && rs.state == RUNSTATE_offline && runstate_area[i].state == RUNSTATE_offline &&
              rs.time[RUNSTATE_running] > 0 && rs.time[RUNSTATE_blocked] > 0,
              "vcpu %u went offline (VCPUOP_down): is_up %d, runstate %d, %llu ns running, %llu ns blocked",
              i, rc, rs.state, (unsigned long long)rs.time[RUNSTATE_running],
              (unsigned long long)rs.time[RUNSTATE_blocked]);
    }
}
