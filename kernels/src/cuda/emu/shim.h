// CUDA on the host, for noisegrad's CUDA emulator (kernels/src/cuda/emu).
//
// A module's `.cu` text is compiled by g++ after this header, so every CUDA
// builtin a kernel uses must exist here. A launch runs the grid's blocks one
// after another on the calling OS thread. Within a block each CUDA thread is
// a fiber (its own small stack): it runs until it finishes or reaches a
// barrier (`__syncthreads`, or a warp-synchronous op such as a shuffle,
// which waits for the lanes of its warp), then the next fiber runs. So the
// threads of a block interleave exactly at their barriers, as on a GPU, and
// the run is deterministic. A barrier that can never complete (some threads
// exited or wait elsewhere) is reported as an error naming the kernel
// instead of hanging.
//
// Fibers switch with a few instructions of assembly on x86-64 (glibc's
// swapcontext makes a sigprocmask system call per switch); elsewhere they
// use ucontext. A suspended fiber hands control straight to the next
// runnable one.
//
// Each OS thread has its own scheduler, and `__shared__` is `thread_local`,
// so launches from several host threads run side by side without locks.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <sys/mman.h>
#if !defined(__x86_64__) || defined(EMU_UCONTEXT)
#define EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

// ---------------------------------------------------------------- keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one at a time on one OS thread, so a per-thread static is the
// block's shared memory; each block finds it full of NaN bytes, like the
// garbage a GPU block finds (EMU_POISON_SHARED).
#define __shared__ static thread_local
#define __constant__ static
// Added after each __shared__ declaration inside a function (source.rs).
#define EMU_POISON_SHARED(name)                                  \
    static thread_local unsigned long long emu_epoch_##name = 0; \
    ::emu::poison_shared(&(name), sizeof(name), &emu_epoch_##name)

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

// ------------------------------------------------------------- scheduler

namespace emu {

constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kWarp = 32;
// Each fiber owns a kRegion-aligned region: a header page, a guard page,
// then its stack. Code on the stack finds the header by masking its stack
// pointer, so `threadIdx` & co. need no thread-local lookup (which cost
// more than the kernels' arithmetic).
constexpr size_t kRegion = 64 * 1024;
constexpr size_t kPage = 4096;

enum class Wait : unsigned char { None, Block, Warp };

struct Sched;
struct Thread;
struct Fiber;

// At the start of each fiber's region.
struct Header {
    Sched* sched;
    Fiber* fiber;
    Thread* thread;  // the CUDA thread the fiber runs
};

struct Fiber {
    void* sp = nullptr;      // saved stack pointer while switched out
    char* region = nullptr;  // kRegion bytes, kRegion-aligned
#ifdef EMU_USE_UCONTEXT
    ucontext_t uc;
#endif
};

struct Thread {
    uint3 idx;
    unsigned id;         // linear index in the block
    unsigned exchanges;  // warp exchanges done (picks the slot buffer)
    Wait wait;
    bool done;
    Fiber* fiber;        // the fiber running it, while it runs or waits
};

struct Sched {
    // The launch.
    const char* kernel = nullptr;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    dim3 grid, block;
    uint3 block_idx;
    unsigned nthreads = 0;
    // The block in flight.
    Thread threads[kMaxThreads];
    unsigned next_unstarted = 0, finished = 0;
    unsigned ready[kMaxThreads];
    unsigned ready_head = 0, ready_len = 0;
    unsigned block_arrived = 0;
    unsigned warp_arrived[kMaxThreads / kWarp];
    // Two buffers of per-thread slots for warp exchanges: consecutive
    // exchanges alternate, so a lane may write its next value while a slower
    // lane still reads the previous one (one barrier per exchange).
    uint64_t slots[2][kMaxThreads];
    // Fibers: created on demand, reused across blocks and launches.
    Fiber fibers[kMaxThreads];
    unsigned nfibers = 0;
    Fiber* idle[kMaxThreads];
    unsigned nidle = 0;
    void* sched_sp = nullptr;  // the launching OS thread's own stack
#ifdef EMU_USE_UCONTEXT
    ucontext_t sched_uc;
#endif
    unsigned char* dyn_smem = nullptr;
    size_t dyn_smem_cap = 0, dyn_smem_len = 0;
    // Counts blocks run by this scheduler (never 0 while one runs): shared
    // arrays remember the block that last poisoned them.
    unsigned long long epoch = 0;
    bool failed = false;
    char error[2048];

    ~Sched() {
        for (unsigned i = 0; i < nfibers; ++i) munmap(fibers[i].region, kRegion);
        std::free(dyn_smem);
    }
};

// The launching thread's scheduler (one per OS thread, so host threads
// launch side by side); freed when the thread exits.
struct SchedHolder {
    Sched* s = nullptr;
    ~SchedHolder() { delete s; }
};
inline thread_local SchedHolder g_holder;

// NOISEGRAD_EMU_ORDER=reverse runs blocks, and the threads of each block,
// in reverse order. Correct kernels give the same results (up to the order
// of atomic additions); a kernel whose result depends on an order CUDA does
// not guarantee (a race between warps or between blocks) does not.
inline bool reverse_order() {
    static const bool reverse = [] {
        const char* v = std::getenv("NOISEGRAD_EMU_ORDER");
        return v && !std::strcmp(v, "reverse");
    }();
    return reverse;
}

// The thread that runs k-th (k-th released, k-th started).
inline unsigned nth(unsigned k, unsigned n) { return reverse_order() ? n - 1 - k : k; }

inline Sched& launch_sched() {
    if (!g_holder.s) g_holder.s = new Sched();
    return *g_holder.s;
}

// The header of the fiber whose stack the caller runs on.
__forceinline__ Header* here() {
    uintptr_t sp;
#ifdef __x86_64__
    asm("mov %%rsp, %0" : "=r"(sp));
#else
    sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
#endif
    return reinterpret_cast<Header*>(sp & ~uintptr_t(kRegion - 1));
}

[[noreturn]] inline void fiber_main();

// The top of a fiber's stack: 64 bytes lower per fiber (mod 61), so that
// the stacks of fibers parked at the same call depth do not share their
// low 12 address bits (4K aliasing made switches ~25% slower).
inline uintptr_t stack_top(const Fiber& f) {
    uintptr_t color = (reinterpret_cast<uintptr_t>(&f) / sizeof(Fiber)) % 61 * 64;
    return reinterpret_cast<uintptr_t>(f.region + kRegion) - color;
}

#ifndef EMU_USE_UCONTEXT
// Saves the callee-saved registers on the current stack, stores the stack
// pointer in *save, and resumes the context whose stack pointer is `load`
// (saved the same way, or made by init_fiber). The SSE/x87 control words
// are not switched: nothing here changes rounding modes.
extern "C" __attribute__((visibility("hidden"))) void emu_switch_context(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .globl emu_switch_context
    .hidden emu_switch_context
    .type emu_switch_context, @function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context
)");

// A fresh frame at the top of the fiber's stack that emu_switch_context
// "returns" from into fiber_main, with the stack aligned as after a call.
inline void init_fiber(Fiber& f) {
    uintptr_t top = stack_top(f);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top - 64);
    std::memset(frame, 0, 64);
    frame[6] = reinterpret_cast<uint64_t>(&fiber_main);  // popped by `ret`
    frame[7] = 0;                                         // fiber_main never returns
    f.sp = frame;
}

inline void switch_fibers(Fiber& from, Fiber& to) { emu_switch_context(&from.sp, to.sp); }
inline void switch_to_sched(Fiber& from, Sched& s) { emu_switch_context(&from.sp, s.sched_sp); }
inline void enter_fiber(Sched& s, Fiber& f) { emu_switch_context(&s.sched_sp, f.sp); }
#else
inline void init_fiber(Fiber& f) {
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.region + 2 * kPage;
    f.uc.uc_stack.ss_size = stack_top(f) - reinterpret_cast<uintptr_t>(f.region) - 2 * kPage;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, reinterpret_cast<void (*)()>(&fiber_main), 0);
}

inline void switch_fibers(Fiber& from, Fiber& to) { swapcontext(&from.uc, &to.uc); }
inline void switch_to_sched(Fiber& from, Sched& s) { swapcontext(&from.uc, &s.sched_uc); }
inline void enter_fiber(Sched& s, Fiber& f) { swapcontext(&s.sched_uc, &f.uc); }
#endif

// A new fiber: a kRegion-aligned region (mapped at twice the size, the
// slack unmapped) with the header page, a guard page (an overflowing stack
// faults instead of overwriting the header), and the stack.
inline Fiber* new_fiber(Sched& s) {
    if (s.nfibers == kMaxThreads) return nullptr;
    void* m = mmap(nullptr, 2 * kRegion, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    uintptr_t base = reinterpret_cast<uintptr_t>(m);
    uintptr_t region = (base + kRegion - 1) & ~uintptr_t(kRegion - 1);
    if (region > base) munmap(m, region - base);
    if (base + 2 * kRegion > region + kRegion)
        munmap(reinterpret_cast<void*>(region + kRegion), base + 2 * kRegion - region - kRegion);
    Fiber& f = s.fibers[s.nfibers++];
    f.region = reinterpret_cast<char*>(region);
    mprotect(f.region + kPage, kPage, PROT_NONE);
    *reinterpret_cast<Header*>(f.region) = Header{&s, &f, nullptr};
    init_fiber(f);
    return &f;
}

// After a failed block, fibers still hold the frames of abandoned threads:
// give every fiber a fresh frame.
inline void reset_fibers(Sched& s) {
    s.nidle = 0;
    for (unsigned i = 0; i < s.nfibers; ++i) {
        init_fiber(s.fibers[i]);
        s.idle[s.nidle++] = &s.fibers[i];
    }
}

// What runs next: a thread a barrier released, else a fiber to start the
// next unstarted thread on. Null when the block is done, failed or stuck:
// then control goes back to the scheduler loop, which tells which.
inline Fiber* next_fiber(Sched& s) {
    if (s.failed) return nullptr;
    if (s.ready_len) {
        Thread& t = s.threads[s.ready[s.ready_head]];
        s.ready_head = (s.ready_head + 1) % kMaxThreads;
        --s.ready_len;
        return t.fiber;
    }
    if (s.next_unstarted < s.nthreads) {
        if (s.nidle) return s.idle[--s.nidle];
        Fiber* f = new_fiber(s);
        if (!f) {
            s.failed = true;
            std::snprintf(s.error, sizeof s.error, "kernel `%s`: could not map a fiber stack", s.kernel);
        }
        return f;
    }
    return nullptr;
}

// Parks the calling fiber and runs the next one (straight from fiber to
// fiber); returns when the scheduler resumes this one.
__attribute__((noinline)) inline void suspend(Sched& s, Fiber& me) {
    Fiber* next = next_fiber(s);
    if (next)
        switch_fibers(me, *next);
    else
        switch_to_sched(me, s);
}

// Records the first error of the launch and parks the thread for good.
__attribute__((noinline, format(printf, 1, 2))) inline void fail(const char* fmt, ...) {
    Header& h = *here();
    Sched& s = *h.sched;
    if (!s.failed) {
        s.failed = true;
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(s.error, sizeof s.error, fmt, ap);
        va_end(ap);
    }
    for (;;) suspend(s, *h.fiber);
}

// Each fiber runs not-yet-started threads one after another until one of
// them waits at a barrier; so a kernel without barriers runs a whole block
// on one fiber with two switches.
[[noreturn]] inline void fiber_main() {
    Header& h = *here();
    Sched& s = *h.sched;
    Fiber& me = *h.fiber;
    for (;;) {
        while (s.next_unstarted < s.nthreads) {
            Thread& t = s.threads[nth(s.next_unstarted++, s.nthreads)];
            t.fiber = &me;
            h.thread = &t;
            s.body(s.ctx);
            t.done = true;
            t.fiber = nullptr;
            ++s.finished;
        }
        h.thread = nullptr;
        s.idle[s.nidle++] = &me;
        suspend(s, me);
    }
}

inline void make_ready(Sched& s, Thread& t) {
    t.wait = Wait::None;
    s.ready[(s.ready_head + s.ready_len++) % kMaxThreads] = t.id;
}

// __syncthreads(): every thread of the block must arrive.
__attribute__((noinline)) inline void sync_block() {
    Header& h = *here();
    Sched& s = *h.sched;
    if (++s.block_arrived == s.nthreads) {
        s.block_arrived = 0;
        for (unsigned k = 0; k < s.nthreads; ++k) {
            Thread& t = s.threads[nth(k, s.nthreads)];
            if (t.wait == Wait::Block) make_ready(s, t);
        }
        return;
    }
    h.thread->wait = Wait::Block;
    suspend(s, *h.fiber);
}

// The lanes that exist in warp `w` (the last warp of a block whose size is
// not a multiple of 32 is partial).
inline unsigned warp_lanes(const Sched& s, unsigned w) {
    unsigned n = s.nthreads - w * kWarp;
    return n >= kWarp ? 0xffffffffu : (1u << n) - 1;
}

// A barrier of the lanes in `mask` of the caller's warp (__syncwarp and
// every *_sync op). On a GPU naming a lane that does not exist, or calling
// from a lane outside the mask, is undefined; here it is an error.
__attribute__((noinline)) inline void sync_warp(Sched& s, Thread& me, unsigned mask, const char* op) {
    unsigned w = me.id / kWarp, lane = me.id % kWarp;
    unsigned lanes = warp_lanes(s, w);
    if (!(mask >> lane & 1u))
        fail("kernel `%s`: %s called by lane %u, which is not in its mask 0x%08x", s.kernel, op, lane, mask);
    if (mask & ~lanes)
        fail("kernel `%s`: %s with mask 0x%08x names lanes that do not exist in warp %u "
             "(blockDim = (%u, %u, %u), %u threads)",
             s.kernel, op, mask, w, s.block.x, s.block.y, s.block.z, s.nthreads);
    unsigned expected = mask == 0xffffffffu ? kWarp : unsigned(__builtin_popcount(mask));
    if (++s.warp_arrived[w] == expected) {
        s.warp_arrived[w] = 0;
        unsigned end = w * kWarp + kWarp < s.nthreads ? w * kWarp + kWarp : s.nthreads;
        for (unsigned k = 0; k < end - w * kWarp; ++k) {
            Thread& t = s.threads[w * kWarp + nth(k, end - w * kWarp)];
            if (t.wait == Wait::Warp) make_ready(s, t);
        }
        return;
    }
    me.wait = Wait::Warp;
    suspend(s, *me.fiber);
}

// Publishes `v` to the caller's warp, waits for the lanes of `mask`, and
// returns the value lane `src` published. Returns the caller's slot
// buffer index through `parity` for ops that read several lanes.
inline uint64_t exchange(unsigned mask, uint64_t v, unsigned src, const char* op, unsigned* parity = nullptr) {
    Header& h = *here();
    Sched& s = *h.sched;
    Thread& me = *h.thread;
    unsigned p = me.exchanges++ & 1u;
    s.slots[p][me.id] = v;
    sync_warp(s, me, mask, op);
    if (parity) *parity = p;
    if (!(mask >> src & 1u))
        fail("kernel `%s`: %s on lane %u reads lane %u, which is not in the mask 0x%08x", s.kernel, op,
             me.id % kWarp, src, mask);
    return s.slots[p][me.id / kWarp * kWarp + src];
}

inline void* dynamic_shared() { return here()->sched->dyn_smem; }

// Fills a `__shared__` array with 0xff bytes (NaN as float or double) the
// first time the running block reaches its declaration, as the garbage a
// GPU's shared memory starts a block with. See rewrite_shared in source.rs.
inline void poison_shared(void* p, size_t bytes, unsigned long long* epoch) {
    unsigned long long now = here()->sched->epoch;
    if (*epoch != now) {
        std::memset(p, 0xff, bytes);
        *epoch = now;
    }
}

inline void report_deadlock(Sched& s) {
    unsigned at_block = 0, at_warp = 0, exited = 0;
    for (unsigned i = 0; i < s.nthreads; ++i) {
        at_block += s.threads[i].wait == Wait::Block;
        at_warp += s.threads[i].wait == Wait::Warp;
        exited += s.threads[i].done;
    }
    s.failed = true;
    std::snprintf(s.error, sizeof s.error,
                  "kernel `%s` deadlocks in block (%u, %u, %u) of grid (%u, %u, %u), blockDim (%u, %u, %u): "
                  "%u thread(s) wait at __syncthreads(), %u at a warp-synchronous op (__shfl*_sync, "
                  "__syncwarp, __ballot_sync, ...), %u have exited. Every thread of the block must reach "
                  "each __syncthreads() (every lane of the mask each warp op): is one in divergent code "
                  "or after an early return?",
                  s.kernel, s.block_idx.x, s.block_idx.y, s.block_idx.z, s.grid.x, s.grid.y, s.grid.z,
                  s.block.x, s.block.y, s.block.z, at_block, at_warp, exited);
}

// Runs one block; false on an error (message in s.error). Fibers hand
// control to each other; it comes back here when none can run.
inline bool run_block(Sched& s) {
    for (unsigned i = 0; i < s.nthreads; ++i) {
        Thread& t = s.threads[i];
        t.idx = {i % s.block.x, i / s.block.x % s.block.y, i / (s.block.x * s.block.y)};
        t.id = i;
        t.exchanges = 0;
        t.wait = Wait::None;
        t.done = false;
        t.fiber = nullptr;
    }
    ++s.epoch;
    if (s.dyn_smem_len) std::memset(s.dyn_smem, 0xff, s.dyn_smem_len);
    s.next_unstarted = s.finished = 0;
    s.ready_head = s.ready_len = 0;
    s.block_arrived = 0;
    std::memset(s.warp_arrived, 0, sizeof s.warp_arrived);
    while (Fiber* f = next_fiber(s)) enter_fiber(s, *f);
    if (!s.failed && s.finished < s.nthreads) report_deadlock(s);
    if (s.failed) reset_fibers(s);
    return !s.failed;
}

enum Status : int { kOk = 0, kUnknownKernel = 1, kFailed = 2 };

// Checks the launch as the driver would, then runs every block in order.
inline int run(const char* kernel, dim3 grid, dim3 block, unsigned smem, void (*body)(void*), void* ctx) {
    Sched& s = launch_sched();
    s.failed = false;
    s.kernel = kernel;
    unsigned long long n = 1ull * block.x * block.y * block.z;
    if (n == 0 || n > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        std::snprintf(s.error, sizeof s.error,
                      "kernel `%s`: invalid launch: grid (%u, %u, %u), block (%u, %u, %u) "
                      "(at most 1024 threads per block, grid y and z at most 65535)",
                      kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return kFailed;
    }
    if (smem > 48 * 1024) {
        std::snprintf(s.error, sizeof s.error,
                      "kernel `%s`: %u bytes of dynamic shared memory requested; more than 48 KiB needs "
                      "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES), which launches do not set",
                      kernel, smem);
        return kFailed;
    }
    if (smem > s.dyn_smem_cap) {
        std::free(s.dyn_smem);
        s.dyn_smem = static_cast<unsigned char*>(std::aligned_alloc(256, (smem + 255) / 256 * 256));
        s.dyn_smem_cap = smem;
    }
    s.dyn_smem_len = smem;
    s.grid = grid;
    s.block = block;
    s.nthreads = unsigned(n);
    s.body = body;
    s.ctx = ctx;
    unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
    for (unsigned long long k = 0; k < blocks; ++k) {
        unsigned long long b = reverse_order() ? blocks - 1 - k : k;
        s.block_idx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y)};
        if (!run_block(s)) return kFailed;
    }
    return kOk;
}

template <class F>
void invoke(void* f) {
    (*static_cast<F*>(f))();
}

// The trampolines' entry: runs `f` (a call of the kernel with its
// arguments) as every thread of the grid.
template <class F>
int launch(const char* kernel, dim3 grid, dim3 block, unsigned smem, F&& f) {
    return run(kernel, grid, block, smem, &invoke<std::remove_reference_t<F>>, &f);
}

inline const char* last_error() { return launch_sched().error; }

template <class T>
uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type over 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof v);
    return b;
}

template <class T>
T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}

inline unsigned lane() { return here()->thread->id % kWarp; }

}  // namespace emu

// ------------------------------------------------------ thread coordinates

#define threadIdx (::emu::here()->thread->idx)
#define blockIdx (::emu::here()->sched->block_idx)
#define blockDim (::emu::here()->sched->block)
#define gridDim (::emu::here()->sched->grid)

// ------------------------------------------------------ synchronisation

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::Header& h = *emu::here();
    emu::sync_warp(*h.sched, *h.thread, mask, "__syncwarp");
}
inline void __threadfence() {}
inline void __threadfence_block() {}

// Shuffles: as CUDA, a source lane outside the caller's `width` segment
// gives the caller's own value.
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    unsigned l = emu::lane(), base = l & ~unsigned(width - 1);
    unsigned from = base + (unsigned(src) & unsigned(width - 1));
    return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(v), from, "__shfl_sync"));
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    unsigned l = emu::lane(), from = l ^ unsigned(lane_mask);
    if ((from & ~unsigned(width - 1)) > (l & ~unsigned(width - 1))) from = l;
    return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(v), from, "__shfl_xor_sync"));
}

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    unsigned l = emu::lane(), from = l + delta;
    if ((from & ~unsigned(width - 1)) != (l & ~unsigned(width - 1))) from = l;
    return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(v), from, "__shfl_down_sync"));
}

template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    unsigned l = emu::lane();
    unsigned from = (l & unsigned(width - 1)) >= delta ? l - delta : l;
    return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(v), from, "__shfl_up_sync"));
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned parity, l = emu::lane();
    emu::exchange(mask, pred != 0, l, "__ballot_sync", &parity);
    const uint64_t* warp_slots = emu::here()->sched->slots[parity] + (emu::here()->thread->id - l);
    unsigned bits = 0;
    for (unsigned i = 0; i < emu::kWarp; ++i)
        if ((mask >> i & 1u) && warp_slots[i]) bits |= 1u << i;
    return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// Threads of a block never run at the same time, so plain read-modify-write
// is atomic.
template <class T>
T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
T atomicMax(T* p, T v) {
    T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <class T>
T atomicMin(T* p, T v) {
    T old = *p;
    *p = old < v ? old : v;
    return old;
}
template <class T>
T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <class T>
T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}

// ------------------------------------------------------------------ math

using std::isfinite;
using std::isinf;
using std::isnan;

template <class A, class B>
__forceinline__ std::common_type_t<A, B> min(A a, B b) {
    return b < a ? b : a;
}
template <class A, class B>
__forceinline__ std::common_type_t<A, B> max(A a, B b) {
    return a < b ? b : a;
}

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// Correctly rounded single operations, never fused into an FMA (as on a
// GPU): the result passes through an empty asm, which contraction cannot
// see through even when NOISEGRAD_EMU_FMA=1 turns it on.
template <class T>
__forceinline__ T emu_rounded(T v) {
#ifdef __x86_64__
    asm("" : "+x"(v));
#else
    volatile T t = v;
    v = t;
#endif
    return v;
}
inline float __fadd_rn(float a, float b) { return emu_rounded(a + b); }
inline float __fsub_rn(float a, float b) { return emu_rounded(a - b); }
inline float __fmul_rn(float a, float b) { return emu_rounded(a * b); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return emu_rounded(a + b); }
inline double __dmul_rn(double a, double b) { return emu_rounded(a * b); }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

template <class To, class From>
__forceinline__ To emu_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}
inline float __int_as_float(int x) { return emu_bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return emu_bit_cast<float>(x); }
inline int __float_as_int(float x) { return emu_bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return emu_bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return emu_bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return emu_bit_cast<long long>(x); }

inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((unsigned long long)a * b >> 32); }
inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)((unsigned __int128)a * b >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return int(x); }

template <class T>
__forceinline__ T __ldg(const T* p) {
    return *p;
}
