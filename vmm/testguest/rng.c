/* Reads entropy from virtio-rng twice and checks it is not constant. */
#include "rt.h"

static u8 rings[3 * 4096] __attribute__((aligned(4096)));
static u8 a[256], b[256];
static struct vq q;

void guest_main(u64 cpu, const u8 *bp) {
    (void)cpu; (void)bp;
    u64 base = virtio_find(4);
    if (!base) fail("no virtio-rng device");
    if (virtio_init(base, 4, 0, 1, &q, rings)) fail("init");
    struct vdesc c = {(u64)a, sizeof a, VDESC_WRITE, 0};
    u32 id;
    vq_submit(base, 0, &q, &c, 1);
    if (vq_wait(&q, &id) != sizeof a) fail("short read a");
    c.addr = (u64)b;
    vq_submit(base, 0, &q, &c, 1);
    if (vq_wait(&q, &id) != sizeof b) fail("short read b");
    if (!memcmp(a, b, sizeof a)) fail("two reads are equal");
    u32 zeros = 0;
    for (u32 i = 0; i < sizeof a; i++) zeros += a[i] == 0;
    if (zeros > 32) fail("too many zero bytes");
    puts("RNG OK\n");
    reset();
}
