/*
 * fake_nccl.c - a stand-in libnccl for tests/fuzz/fuzz_c_api.c: the entry points csrc/nccl.c binds, acting on host
 * memory with no GPU. A communicator of nranks ranks "reduces" by copying this rank's data (a sum over one
 * contributor) and "gathers" by writing this rank's data into every rank's slot, so every byte that NCCL would write
 * is written: a count that does not match the caller's buffers shows up under AddressSanitizer. ncclCommCuDevice
 * answers -1 (the CPU device code of ssmtp), so CPU tensor descriptors pass csrc/nccl.c's device check.
 */
#include <stdlib.h>
#include <string.h>

typedef struct {
    int nranks, rank;
} fake_comm_t;
typedef struct {
    char internal[128];
} fake_unique_id_t;

static size_t elem_size(int dt) {
    switch (dt) {
    case 0: case 1: case 10: return 1;        /* int8, uint8, fp8 e4m3 */
    case 6: case 9: return 2;                 /* float16, bfloat16 */
    case 2: case 3: case 7: return 4;         /* int32, uint32, float32 */
    case 4: case 5: case 8: return 8;         /* int64, uint64, float64 */
    default: return 0;
    }
}

int ncclGetVersion(int *v) { *v = 22809; return 0; }
int ncclGetUniqueId(fake_unique_id_t *id) { memset(id->internal, 0x5a, sizeof id->internal); return 0; }
int ncclCommInitRank(fake_comm_t **comm, int nranks, fake_unique_id_t id, int rank) {
    (void)id;
    if (nranks < 1 || rank < 0 || rank >= nranks) return 4; /* ncclInvalidArgument */
    *comm = malloc(sizeof **comm);
    if (!*comm) return 1;
    (*comm)->nranks = nranks;
    (*comm)->rank = rank;
    return 0;
}
int ncclCommDestroy(fake_comm_t *comm) { free(comm); return 0; }
int ncclCommCount(const fake_comm_t *comm, int *n) { *n = comm->nranks; return 0; }
int ncclCommCuDevice(const fake_comm_t *comm, int *d) { (void)comm; *d = -1; return 0; }
int ncclCommUserRank(const fake_comm_t *comm, int *r) { *r = comm->rank; return 0; }
int ncclAllReduce(const void *x, void *out, size_t count, int dt, int op, fake_comm_t *comm, void *stream) {
    (void)op; (void)comm; (void)stream;
    size_t es = elem_size(dt);
    if (!es) return 4;
    memmove(out, x, count * es);
    return 0;
}
int ncclAllGather(const void *x, void *out, size_t count, int dt, fake_comm_t *comm, void *stream) {
    (void)stream;
    size_t bytes = count * elem_size(dt);
    if (!bytes) return 4;
    for (int r = 0; r < comm->nranks; r++) memmove((char *)out + (size_t)r * bytes, x, bytes);
    return 0;
}
const char *ncclGetErrorString(int r) { return r ? "fake nccl error" : "no error"; }
const char *ncclGetLastError(fake_comm_t *comm) { (void)comm; return ""; }
