/* Ring-3 runtime shared by the test guests: port I/O, serial, reset, MMIO. */
#ifndef RT_H
#define RT_H

/* vCPUs a test guest runs on: each has a 64 KiB stack in start.S. */
#define GUEST_MAX_CPUS 8

/* CPUID as the VMM set it up, read in ring 0 at entry by start.S. Ring-3
 * `cpuid` is not a reliable view: on a PVM host without CPUID faulting
 * (most AMD hosts) it runs on the host CPU and returns the host's leaves.
 * A guest that needs leaves defines ring0_cpuid_leaves ({leaf, subleaf}
 * pairs ended by {0xffffffff, 0}, at most RING0_CPUID_MAX) and
 * ring0_cpuid[GUEST_MAX_CPUS]; start.S fills ring0_cpuid[cpu][i]. */
#define RING0_CPUID_ROW_SHIFT 8
#define RING0_CPUID_MAX 16
#ifndef __ASSEMBLER__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

struct cpuid_regs { u32 a, b, c, d; };
_Static_assert(sizeof(struct cpuid_regs) * RING0_CPUID_MAX == 1 << RING0_CPUID_ROW_SHIFT,
               "start.S steps rows by RING0_CPUID_ROW_SHIFT");
extern const u32 ring0_cpuid_leaves[][2] __attribute__((weak));
extern struct cpuid_regs ring0_cpuid[GUEST_MAX_CPUS][RING0_CPUID_MAX] __attribute__((weak));

#define BOOT_PARAMS_E820_ENTRIES 0x1e8
#define BOOT_PARAMS_E820_TABLE 0x2d0
#define BOOT_PARAMS_CMDLINE_PTR 0x228

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause"); }

void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
int memcmp(const void *a, const void *b, u64 n);
u64 strlen(const char *s);
void putc(char c);
void puts(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
void reset(void) __attribute__((noreturn));
void fail(const char *why) __attribute__((noreturn));
/* The n-th e820 RAM range: returns 0 past the last. */
int e820_ram(const u8 *boot_params, int n, u64 *start, u64 *end);
/* Total RAM in bytes as the e820 map in boot_params reports it. */
u64 ram_top(const u8 *boot_params);
/* Finds "key=" in the kernel command line and returns its number, or dflt. */
u64 cmdline_u64(const u8 *boot_params, const char *key, u64 dflt);
extern char _image_end[];

/* Minimal polling virtio-mmio (version 2) driver. */
struct vq {
    u16 size;
    u16 last_used;
    u16 next_avail;
    struct vdesc *desc;
    u16 *avail; /* flags, idx, ring[size] */
    u8 *used;   /* flags, idx, ring[size] of {u32 id, u32 len} */
};
struct vdesc { u64 addr; u32 len; u16 flags; u16 next; };
#define VDESC_NEXT 1
#define VDESC_WRITE 2
/* Brings up the device at base: returns 0 or a negative step number. */
int virtio_init(u64 base, u32 device_id, u64 features, int nqueues, struct vq *qs, u8 *ring_mem);
/* Puts a chain of n descriptors (head first) on queue q and notifies. */
void vq_submit(u64 base, int q, struct vq *vq, struct vdesc *chain, int n);
/* Waits for the next used element; returns its length, id in *id. */
u32 vq_wait(struct vq *vq, u32 *id);
int vq_poll(struct vq *vq, u32 *id, u32 *len);
/* Base of the first window holding device_id, or 0. */
u64 virtio_find(u32 device_id);
#define VIRTIO_MMIO_BASE 0xd0000000UL
#define VIRTIO_MMIO_SIZE 0x1000UL
#endif /* __ASSEMBLER__ */
#endif
